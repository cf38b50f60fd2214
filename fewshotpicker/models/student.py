"""A small fully convolutional network that imitates the encoder's score map.

Scoring a micrograph with the encoder runs one transformer pass per window
(7400 windows for a 1024^2 micrograph at the default stride), and the score
peaks are too narrow for a much coarser grid. The student sees the whole
prepared micrograph at once and predicts the encoder's score at every position
in one pass of a few convolutions (its receptive field, 84 px, covers a 64 px
model window); it is trained after fine-tuning on the encoder's own score maps
of the training micrographs (:mod:`fewshotpicker.training.distil`). At picking
time its peaks are the candidates and the encoder re-scores the best of them
(:func:`fewshotpicker.picking.cascade.pick_with_student`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

STRIDE = 8   # prepared-image pixels per output cell


class ScoreStudent(nn.Module):
    """Prepared micrograph ``(b, 1, h, w)`` -> predicted score ``(b, 1, h / 8, w / 8)``.

    ``h`` and ``w`` must be multiples of 8 (:func:`pad_to_stride`). Output
    cell ``(u, v)`` covers prepared pixels ``[8u, 8u + 8) x [8v, 8v + 8)``.
    """

    def __init__(self, width: int = 64):
        super().__init__()
        self.width = width
        half = width // 2
        layers = [nn.Conv2d(1, half, 4, stride=4), nn.GELU(),
                  nn.Conv2d(half, width, 3, padding=1), nn.GELU(),
                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.GELU()]
        for _ in range(4):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolutions before the last run in whatever autocast is active; the last
        1 x 1 convolution always in fp32: its outputs, cosines near 0.97, differ between
        neighbouring positions by less than bf16's step there (0.004), and a student
        trained wholly in bf16 learned nothing (session 29)."""
        trunk = self.net[:-1](x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net[-1](trunk.float())


def pad_to_stride(prepared: torch.Tensor) -> torch.Tensor:
    """``(h, w)`` -> ``(1, 1, h', w')`` zero-padded at the bottom and right to multiples of 8."""
    h, w = prepared.shape
    return F.pad(prepared[None, None], (0, (-w) % STRIDE, 0, (-h) % STRIDE))


def sample_at(out: torch.Tensor, xy: torch.Tensor, padded_shape: tuple) -> torch.Tensor:
    """Bilinear read of a student output ``(1, 1, ho, wo)`` at prepared-image positions
    ``xy`` ``(n, 2)`` (x, y, px) of an image padded to ``padded_shape`` ``(h', w')``:
    returns ``(n,)``."""
    hp, wp = padded_shape
    grid = torch.stack([(xy[:, 0] + 0.5) / wp * 2 - 1, (xy[:, 1] + 0.5) / hp * 2 - 1], -1)
    return F.grid_sample(out, grid[None, None].to(out.dtype), align_corners=False)[0, 0, 0]


def student_payload(student: ScoreStudent, steps: int, loss: float) -> dict:
    """What ``model.pt`` keeps of a student: weights, width, training steps and final loss."""
    return {"state_dict": {k: v.detach().cpu() for k, v in student.state_dict().items()},
            "width": student.width, "steps": steps, "loss": loss}

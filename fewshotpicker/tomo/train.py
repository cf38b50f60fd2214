"""Teacher-student training of the 3D heatmap detector from a few labels (after SemiETPicker).

Each step the student sees crops around labelled particles and random crops
from anywhere, each under a random exact view (flips, quarter turns about z)
and with wedge-shaped blocks dropped (:func:`.targets.wedge_dropblock`).

- Targets: a Gaussian at every labelled centre. Background voxels are only
  *unlabeled* (most particles carry no label), so their loss is down-weighted
  (``unlabeled_weight``) instead of being a full negative.
- Teacher: an exponential moving average of the student (decay ``min(ema,
  1 - 1/(step + 1))``, so it is not stuck near its random start). After
  ``unsup_start`` of the steps it predicts every crop under ``views`` views;
  peaks that every view puts above ``pseudo_threshold`` become pseudo-labels
  (added to the targets of the labelled crops, and the only targets of the
  random crops), with a weight ramped up to ``unsup_weight``.
- ``semi = False`` trains the student on the labels alone: the baseline.

Student and teacher are saved together, so resuming is exact.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..config import Pick3dConfig, to_dict
from ..device import autocast
from ..training.loop import LoopSettings, train
from .data import Tomogram, crop_size
from .targets import (VIEWS, agreed_pseudo_labels, apply_view, ema_update, gaussian_heatmap,
                      invert_view, wedge_dropblock)
from .unet3d import UNET_SIZES, UNet3d, UNetConfig

log = logging.getLogger("fewshotpicker")
VIEW_ORDER = [VIEWS[i] for i in (0, 1, 3, 2, 4, 5)]  # identity, flip x, turn, flip y, ...


class StudentTeacher(nn.Module):
    """The trained student and its EMA teacher (no gradients), saved as one state."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.student = UNet3d(cfg)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, unlabeled_weight: float,
                       crop_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss with down-weighted background.

    logits, target: ``(b, C, d, h, w)``; target is 1 at centres, Gaussian around them.
    Voxels with target < 1 are pushed down by ``(1 - target)^4 p^2 log(1 - p)``, times
    ``unlabeled_weight`` (unlabeled, not known negatives). ``crop_weight`` ``(b,)``
    scales each crop's share. Normalised by the number of centres in the whole batch
    (at least 1), so a crop without any centre adds background loss at the same scale
    as one with centres instead of dominating the step.
    """
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target >= 0.999
    w = torch.ones(len(logits), device=logits.device) if crop_weight is None else crop_weight
    w = w.view(-1, *([1] * (logits.dim() - 1))).float()
    pos_loss = (w * (1 - p) ** 2 * torch.log(p))[pos].sum()
    neg = w * (~pos).float() * (1 - target) ** 4 * p ** 2 * torch.log(1 - p)
    return -(pos_loss + unlabeled_weight * neg.sum()) / max(1, int(pos.sum()))


def labelled_crop(tomo: Tomogram, centres: np.ndarray, size: np.ndarray,
                  rng: np.random.Generator) -> tuple:
    """A crop holding a random labelled centre at a random offset; returns
    ``(corner (z, y, x), volume (1, sd, sh, sw))``."""
    x, y, z = centres[rng.integers(len(centres))]
    jitter = rng.uniform(-0.3, 0.3, 3) * size
    lo = np.round(np.array([z, y, x]) + jitter - size / 2).astype(int)
    lo = np.clip(lo, 0, np.maximum(np.array(tomo.shape) - size, 0))
    return lo, tomo.read(lo, size)


def random_crop(tomo: Tomogram, size: np.ndarray, rng: np.random.Generator) -> tuple:
    lo = np.array([rng.integers(0, max(1, s - c + 1)) for s, c in zip(tomo.shape, size)])
    return lo, tomo.read(lo, size)


def crop_targets(lo: np.ndarray, size: np.ndarray, centres: np.ndarray, classes: np.ndarray,
                 n_classes: int, sigma: float) -> torch.Tensor:
    """Targets ``(C, sd, sh, sw)`` of the labels that fall in the crop at corner ``lo``."""
    local = centres - lo[::-1]
    inside = np.all((local >= -3 * sigma) & (local < size[::-1] + 3 * sigma), axis=1)
    return gaussian_heatmap(tuple(size), local[inside], classes[inside], n_classes, sigma)


@torch.no_grad()
def pseudo_targets(teacher: UNet3d, x: torch.Tensor, cfg: Pick3dConfig, radius: int,
                   sigma: float) -> torch.Tensor:
    """Targets ``(b, C, d, h, w)`` at the peaks every teacher view agrees on (all views of
    all crops in one batch)."""
    teacher.eval()
    views = VIEW_ORDER[:max(1, min(cfg.views, len(VIEW_ORDER)))]
    probs = torch.sigmoid(teacher(torch.cat([apply_view(x, v) for v in views])).float())
    probs = torch.stack([invert_view(part, v) for part, v in
                         zip(probs.split(len(x)), views)])  # (V, b, C, d, h, w)
    out = []
    for i in range(len(x)):
        peaks = agreed_pseudo_labels(probs[:, i], radius, cfg.pseudo_threshold).cpu().numpy()
        out.append(gaussian_heatmap(tuple(x.shape[-3:]), peaks[:, [3, 2, 1]],
                                    peaks[:, 0] + 1, probs.shape[2], sigma))
    return torch.stack(out).to(x.device)


class StepContext:
    """What every training step draws from: tomograms, labels, crop size and scales."""

    def __init__(self, tomos: List[Tomogram], labels: Dict[str, tuple], cfg: Pick3dConfig,
                 n_classes: int):
        self.tomos, self.labels, self.cfg, self.n_classes = tomos, labels, cfg, n_classes
        self.by_key = {t.key: t for t in tomos}
        self.keys = sorted(labels)
        self.size = crop_size(cfg.crop, tuple(np.min([t.shape for t in tomos], axis=0)))
        self.sigma = cfg.sigma or max(1.0, cfg.box / 8.0)
        self.radius = max(1, int(round(cfg.min_distance or cfg.box / 2.0)))
        self.semi_start = int(cfg.unsup_start * cfg.steps)

    def labelled(self, rng: np.random.Generator) -> tuple:
        key = self.keys[rng.integers(len(self.keys))]
        centres, classes = self.labels[key]
        lo, vol = labelled_crop(self.by_key[key], centres, self.size, rng)
        return vol, crop_targets(lo, self.size, centres, classes, self.n_classes, self.sigma)

    def anywhere(self, rng: np.random.Generator) -> tuple:
        tomo = self.tomos[rng.integers(len(self.tomos))]
        lo, vol = random_crop(tomo, self.size, rng)
        centres, classes = self.labels.get(tomo.key, (np.empty((0, 3)), np.empty(0, int)))
        return vol, crop_targets(lo, self.size, centres, classes, self.n_classes, self.sigma)


def detector_step_fn(pair: StudentTeacher, ctx: StepContext, device: torch.device) -> Callable:
    """``step -> (loss, metrics)``; crops, views and drops depend only on (seed, step)."""
    cfg = ctx.cfg

    def step_fn(step: int):
        rng = np.random.default_rng([cfg.seed, step, 3])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if cfg.semi and step > 0:  # the usual warm-up: a young teacher follows closely
            ema_update(pair.teacher, pair.student, min(cfg.ema, 1.0 - 1.0 / (step + 1)))
        semi_now = cfg.semi and step >= ctx.semi_start
        n_lab = cfg.batch_labeled + (0 if cfg.semi else cfg.batch_unlabeled)
        n_unl = cfg.batch_unlabeled if semi_now else 0
        crops = [ctx.labelled(rng) for _ in range(n_lab)] + [ctx.anywhere(rng)
                                                             for _ in range(n_unl)]
        x = torch.stack([c[0] for c in crops]).to(device)
        t = torch.stack([c[1] for c in crops]).to(device)
        n_pseudo = 0
        if semi_now:
            pseudo = pseudo_targets(pair.teacher, x, cfg, ctx.radius, ctx.sigma)
            n_pseudo = int((pseudo >= 0.999).sum())
            t = torch.maximum(t, pseudo)
        view = VIEWS[int(rng.integers(len(VIEWS)))]
        x, t = apply_view(x, view), apply_view(t, view)
        x = wedge_dropblock(x, cfg.dropblock, max(2, int(cfg.box / 3)), 2.0, gen)
        pair.student.train()
        with autocast(device):
            logits = pair.student(x)
        ramp = min(1.0, (step - ctx.semi_start + 1) / max(1.0, 0.2 * cfg.steps)) \
            if semi_now else 0.0
        weight = torch.tensor([1.0] * n_lab + [cfg.unsup_weight * ramp] * n_unl, device=device)
        loss = focal_heatmap_loss(logits, t, cfg.unlabeled_weight, weight)
        return loss, {"pseudo_labels": n_pseudo, "pseudo_weight": ramp * cfg.unsup_weight}

    return step_fn


def train_detector(cfg: Pick3dConfig, tomos: List[Tomogram], labels: Dict[str, tuple],
                   n_classes: int, out_dir: Path, device: torch.device,
                   progress: Optional[Callable] = None) -> tuple:
    """Train (or resume); returns ``(detector for picking, history)``: the teacher when
    semi-supervised (the averaged weights), else the student."""
    torch.manual_seed(cfg.seed)
    base = UNET_SIZES[cfg.size]
    pair = StudentTeacher(UNetConfig(width=base.width, n_classes=n_classes,
                                     groups=base.groups)).to(device)
    ctx = StepContext(tomos, labels, cfg, n_classes)
    log.info("training a %s 3D U-Net on %d labels in %d tomogram(s), crops %s voxels, %s, %s",
             cfg.size, sum(len(v[0]) for v in labels.values()), len(labels),
             "x".join(map(str, ctx.size)), "teacher-student" if cfg.semi else "supervised only",
             device)
    settings = LoopSettings(steps=cfg.steps, lr=cfg.lr, min_lr=cfg.min_lr,
                            warmup_steps=max(1, int(round(cfg.warmup * cfg.steps))),
                            weight_decay=cfg.weight_decay, checkpoint_every=cfg.checkpoint_every)
    history = train(pair, detector_step_fn(pair, ctx, device), settings, out_dir, to_dict(cfg),
                    "3D detector", (lambda it, total: progress(it, desc="train", total=total))
                    if progress else None)
    return (pair.teacher if cfg.semi else pair.student), history

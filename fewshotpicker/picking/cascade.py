"""The student cascade: a dense student proposes, the encoder re-scores the best proposals.

The student (:mod:`fewshotpicker.models.student`) predicts the score map of a
whole micrograph in one convolutional pass; its peaks (the same peak rules as
the encoder's map) are the candidates. The encoder then scores the windows of
the best ``share`` of them by the student's score, and those candidates take
the encoder's score; the others keep the student's, capped below the lowest
re-scored one, so that only re-scored candidates can pass the cutoff but the
automatic cutoff still sees the background. Picks are thus judged by the
encoder, as when every window is scored, at a fraction of the passes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.regions import Preprocess, crop_windows, window_contrast_grid
from ..errors import InputError
from ..models.student import ScoreStudent, pad_to_stride, sample_at
from .scoring import Bank, ScoreMap, extend_to_edges, grid_centres, score_windows


def load_student(payload: dict, device: torch.device, source: str) -> ScoreStudent:
    """The student stored in a ``train`` model; one sentence if there is none."""
    entry = payload.get("student")
    if not entry:
        raise InputError(f"{source}: this model holds no student (it was trained with "
                         f"--student-steps 0 or by an older version); pick without --student "
                         f"or train again.")
    student = ScoreStudent(entry["width"])
    student.load_state_dict(entry["state_dict"])
    return student.to(device).eval()


@torch.no_grad()
def student_map(student: ScoreStudent, prepared: torch.Tensor, size: int, step: int,
                scale: float, edges: bool = False) -> ScoreMap:
    """The student's scores on the window grid of ``prepared`` ``(h', w')``: the grid the
    encoder would score, windows of ``size`` every ``step`` prepared px, reaching the
    edges with ``edges`` (:func:`~.scoring.extend_to_edges`). The student reads the image
    itself, not the reflection, as it did when it was distilled."""
    h, w = prepared.shape
    if h < size or w < size:
        raise InputError(f"the micrograph ({h} x {w} px after rescaling) is smaller than one "
                         f"model window ({size} px).")
    extended, pad = extend_to_edges(prepared, size, step) if edges else (prepared, 0)
    gy, gx = (h + 2 * pad - size) // step + 1, (w + 2 * pad - size) // step + 1
    padded = pad_to_stride(prepared)
    xy = grid_centres((gy, gx), step, size / 2.0 - pad).to(prepared.device)
    scores = sample_at(student(padded), xy, padded.shape[-2:])
    return ScoreMap(scores.reshape(gy, gx).float().cpu().numpy(), step, size / 2.0 - pad,
                    scale, scored=0.0,
                    contrast=window_contrast_grid(extended, size, step).cpu().numpy())


# when the last re-scored tenth of the candidates still holds this share of picks, the
# encoder goes on to the next tenth (crowded micrographs have more particles than 40%)
EXTEND_STEP = 0.1
EXTEND_WHILE = 0.2


@torch.no_grad()
def encoder_scores(model, bank: Bank, prepared: torch.Tensor, xy: np.ndarray, scale: float,
                   size: int, batch: int, precision: str = "auto") -> np.ndarray:
    """The encoder's scores ``(n,)`` of windows centred on ``xy`` ``(n, 2)`` micrograph px."""
    if len(xy) == 0:
        return np.empty(0)
    centres = torch.as_tensor(xy * scale, dtype=torch.float32, device=prepared.device)
    windows = crop_windows(prepared, centres, size)[:, 0]
    return torch.cat([score_windows(model, windows[i:i + batch], bank, precision)
                      for i in range(0, len(windows), batch)]).cpu().numpy().astype(float)


def mixed_scores(student: np.ndarray, rescored: np.ndarray, encoder: np.ndarray) -> np.ndarray:
    """The encoder's scores at the ``rescored`` indices, the student's elsewhere capped below
    the lowest encoder score: ``(n,)``."""
    out = np.minimum(student, encoder.min()).astype(float)
    out[rescored] = encoder
    return out


def rescore_best(model, bank: Bank, prepared: torch.Tensor, xy: np.ndarray,
                 scores: np.ndarray, share: float, scale: float, size: int, batch: int,
                 precision: str = "auto", cutoff=None) -> tuple:
    """Encoder scores for the best ``share`` of candidates ``xy`` ``(n, 2)`` (micrograph px)
    by their student ``scores`` ``(n,)``, and for each further tenth while the last tenth
    re-scored still held ``EXTEND_WHILE`` picks by ``cutoff(scores) -> float``; the others
    keep theirs, capped below the lowest re-scored one (:func:`mixed_scores`).
    Returns ``(scores (n,), number re-scored)``."""
    n = len(scores)
    if n == 0:
        return scores, 0
    order = np.argsort(-scores, kind="stable")
    step = max(1, int(np.ceil(EXTEND_STEP * n)))
    done, target, encoder = 0, max(1, int(np.ceil(share * n))), np.empty(0)
    while True:
        encoder = np.concatenate([encoder, encoder_scores(
            model, bank, prepared, xy[order[done:target]], scale, size, batch, precision)])
        done = target
        mixed = mixed_scores(scores, order[:done], encoder)
        if done >= n or cutoff is None or \
                np.mean(encoder[-step:] > cutoff(mixed)) < EXTEND_WHILE:
            return mixed, done
        target = min(n, done + step)


def pick_with_student(model, student: ScoreStudent, bank: Bank, prepared: torch.Tensor,
                      pre: Preprocess, stride_px: float, share: float, batch: int,
                      find_candidates, precision: str = "auto", cutoff=None,
                      edges: bool = False):
    """Candidates of one prepared micrograph ``(h', w')`` by the cascade (see module
    docstring; ``prepared`` from :func:`~fewshotpicker.data.regions.prepare_micrograph`);
    ``find_candidates(score_map)`` applies the peak rules, ``cutoff(scores)`` the
    micrograph's cutoff rule (which decides whether more candidates are re-scored);
    ``edges``: the grid reaches the edges, as :func:`~.scoring.score_prepared`'s does.
    Returns the candidates with ``score_map.scored`` = re-scored windows / grid windows and
    ``rescored`` ``(n,)`` marking them."""
    step = max(1, int(round(stride_px * pre.scale)))
    smap = student_map(student, prepared, pre.img_size, step, pre.scale, edges)
    cands = find_candidates(smap)
    order = np.argsort(-cands.scores, kind="stable")   # rescore_best's order
    cands.scores, n = rescore_best(model, bank, prepared, cands.xy, cands.scores, share,
                                   pre.scale, pre.img_size, batch, precision, cutoff)
    cands.rescored = np.zeros(len(cands.scores), dtype=bool)
    cands.rescored[order[:n]] = True
    smap.scored = n / smap.scores.size
    return cands

"""Pick one micrograph: score map -> peaks at least a radius apart -> cutoff."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import PickConfig
from ..data.regions import Preprocess
from .cascade import pick_with_student
from .peaks import find_peaks, suppress_shoulders
from .scoring import ScoreMap, score_micrograph
from .threshold import choose_cutoff, resolved_rule


@dataclass
class Candidates:
    """All peaks of one micrograph: positions ``(n, 2)`` (x, y) px, scores ``(n,)``."""
    xy: np.ndarray
    scores: np.ndarray
    score_map: ScoreMap
    cutoff: float = -np.inf
    seconds: float = 0.0      # reading, scoring and peak finding of this micrograph
    box: float = 0.0          # particle box, px (for plots)
    rule: str = ""            # the cutoff rule applied (``auto`` resolved)
    anchor: float = float("nan")  # exemplars' median leave-one-out cosine (nan: unknown)
    contrast_limit: float = float("nan")  # window contrast above which peaks were dropped
    too_contrasty: int = 0    # peaks dropped by that limit (ice, carbon, aggregates)

    def kept(self) -> tuple:
        """Positions and scores above the cutoff."""
        keep = self.scores > self.cutoff
        return self.xy[keep], self.scores[keep]


def default_stride(box: float) -> float:
    """A fifth of the box: the paper's 28 px for a box of about 150 px."""
    return max(1.0, box / 5.0)


def contrast_at_peaks(score_map: ScoreMap, ij: np.ndarray) -> np.ndarray:
    """Window contrast ``(n,)`` at peaks ``ij`` ``(n, 2)`` (fractional grid x=j, y=i), read at
    the nearest grid window (``score_map.contrast`` must be set)."""
    gy, gx = score_map.contrast.shape
    i = np.clip(np.rint(ij[:, 1]).astype(int), 0, gy - 1)
    j = np.clip(np.rint(ij[:, 0]).astype(int), 0, gx - 1)
    return score_map.contrast[i, j]


def find_candidates(score_map: ScoreMap, shape: tuple, box: float, cfg: PickConfig,
                    contrast_limit: Optional[float] = None) -> Candidates:
    """Peaks of a score map in micrograph pixels, sub-stride refined.

    shape: ``(h, w)`` of the micrograph; peaks closer than ``exclude_border``
    to an edge are dropped, and so are shoulders of a higher peak within
    ``shoulder_reach`` boxes (see :func:`suppress_shoulders`) and, given a
    ``contrast_limit`` and a map with contrast, peaks whose window is more
    contrasted than that (ice crystals, carbon edges, aggregates: a particle's
    window is mostly noise, theirs is not).
    """
    min_dist = cfg.min_distance or box / 2.0
    stride = score_map.stride_px
    ij, scores = find_peaks(score_map.scores, min_distance=max(1.0, min_dist / stride),
                            refine=True)
    apart = suppress_shoulders(score_map.scores, ij, scores, cfg.shoulder_reach * box / stride,
                               cfg.shoulder_dip)
    ij, scores = ij[apart], scores[apart]
    xy = score_map.grid_to_micrograph(ij)
    h, w = shape
    margin = cfg.exclude_border
    inside = (xy[:, 0] >= margin) & (xy[:, 0] <= w - 1 - margin) & \
        (xy[:, 1] >= margin) & (xy[:, 1] <= h - 1 - margin)
    dropped = 0
    if contrast_limit is not None and score_map.contrast is not None and len(ij):
        calm = contrast_at_peaks(score_map, ij) <= contrast_limit
        dropped = int((inside & ~calm).sum())
        inside &= calm
    return Candidates(xy[inside], scores[inside], score_map, box=box,
                      contrast_limit=np.nan if contrast_limit is None else contrast_limit,
                      too_contrasty=dropped)


def pick_micrograph(model, bank, image: np.ndarray, pre: Preprocess, cfg: PickConfig,
                    device, batch: int, student=None) -> Candidates:
    """Score, find peaks and apply the per-micrograph cutoff (global rules come later).

    With a ``student`` (and ``cfg.student`` > 0) the student cascade replaces the
    encoder's full score map (:func:`~fewshotpicker.picking.cascade.pick_with_student`).
    """
    stride = cfg.stride or default_stride(pre.box)
    anchor = bank.anchor()
    limit = bank.contrast_limit(cfg.max_contrast)
    if student is not None and cfg.student > 0:
        rule = "auto" if cfg.threshold == "quantile" else cfg.threshold
        cands = pick_with_student(model, student, bank, image, pre, stride, cfg.student, device,
                                  batch, lambda m: find_candidates(m, image.shape, pre.box, cfg,
                                                                   limit),
                                  cfg.precision, lambda s: choose_cutoff(s, rule, cfg.k,
                                                                         anchor=anchor))
    else:
        score_map = score_micrograph(model, bank, image, pre, stride, device, batch,
                                     cfg.precision, cfg.coarse)
        cands = find_candidates(score_map, image.shape, pre.box, cfg, limit)
    if cfg.threshold != "quantile":
        cands.cutoff = choose_cutoff(cands.scores, cfg.threshold, cfg.k, anchor=anchor)
    cands.rule = resolved_rule(cfg.threshold, anchor, len(cands.scores))
    cands.anchor = float("nan") if anchor is None else anchor
    return cands

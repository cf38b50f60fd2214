"""Pick one micrograph: score map -> peaks at least a radius apart -> cutoff."""
from __future__ import annotations

from dataclasses import dataclass

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

    def kept(self) -> tuple:
        """Positions and scores above the cutoff."""
        keep = self.scores > self.cutoff
        return self.xy[keep], self.scores[keep]


def default_stride(box: float) -> float:
    """A fifth of the box: the paper's 28 px for a box of about 150 px."""
    return max(1.0, box / 5.0)


def find_candidates(score_map: ScoreMap, shape: tuple, box: float, cfg: PickConfig) -> Candidates:
    """Peaks of a score map in micrograph pixels, sub-stride refined.

    shape: ``(h, w)`` of the micrograph; peaks closer than ``exclude_border``
    to an edge are dropped, and so are shoulders of a higher peak within
    ``shoulder_reach`` boxes (see :func:`suppress_shoulders`).
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
    return Candidates(xy[inside], scores[inside], score_map, box=box)


def pick_micrograph(model, bank, image: np.ndarray, pre: Preprocess, cfg: PickConfig,
                    device, batch: int, student=None) -> Candidates:
    """Score, find peaks and apply the per-micrograph cutoff (global rules come later).

    With a ``student`` (and ``cfg.student`` > 0) the student cascade replaces the
    encoder's full score map (:func:`~fewshotpicker.picking.cascade.pick_with_student`).
    """
    stride = cfg.stride or default_stride(pre.box)
    anchor = bank.anchor()
    if student is not None and cfg.student > 0:
        rule = "auto" if cfg.threshold == "quantile" else cfg.threshold
        cands = pick_with_student(model, student, bank, image, pre, stride, cfg.student, device,
                                  batch, lambda m: find_candidates(m, image.shape, pre.box, cfg),
                                  cfg.precision, lambda s: choose_cutoff(s, rule, cfg.k,
                                                                         anchor=anchor))
    else:
        score_map = score_micrograph(model, bank, image, pre, stride, device, batch,
                                     cfg.precision, cfg.coarse)
        cands = find_candidates(score_map, image.shape, pre.box, cfg)
    if cfg.threshold != "quantile":
        cands.cutoff = choose_cutoff(cands.scores, cfg.threshold, cfg.k, anchor=anchor)
    cands.rule = resolved_rule(cfg.threshold, anchor, len(cands.scores))
    cands.anchor = float("nan") if anchor is None else anchor
    return cands

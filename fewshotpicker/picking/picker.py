"""Pick one micrograph: score map -> peaks at least a radius apart -> cutoff.

The automatic cutoff is fitted to the candidates of each micrograph
(:mod:`~fewshotpicker.picking.threshold`). Now and then that fit splits the
particles' own scores into two classes and cuts between them (2 of 17 benchmark
runs: recall 0.79-0.85 at precision 0.99). When the model holds a student, the
encoder's candidates are therefore checked against a second view of the same
micrograph: the student cascade's candidates (the student's peaks, the best 40%
re-scored by the encoder), whose mixture split no particle class on any run
measured. The lower of the two cutoffs is kept. Benchmark, every window, F1 at IoU
0.5, the encoder's fit alone -> checked (session 16): the two split runs 0.916 ->
0.989 (SNR 0.2) and 0.881 -> 0.942 (crowded); the default set 0.950 -> 0.955 (3
draws); EMPIAR-10028 0.846 -> 0.845; many lures 0.914 -> 0.917; the price is at SNR
0.02, 0.785 -> 0.769 (3 draws), where the lower cut lets in some near-particle
background. It costs one pass of the student and about 2% more encoder windows.

Within the cutoff's count, candidates are then ranked against their surround
(``--surround``, :func:`rank_by_surround`): a particle's score peak stands
out from the background around it, a background peak often sits in a region
that scores high all over. Each score, in Fisher z, loses ``weight`` times
how far the mean score on a circle 0.75 box around it lies above the
micrograph's typical such circle. The fitted cutoff still decides how many
picks a micrograph gets (the mixture and the exemplars' anchor are calibrated
on the encoder's own cosines); the corrected score decides which, and is the
figure of merit written out. In the student cascade the surround is read on the
student's map and only the candidates the encoder re-scored are corrected; the
others stay below them.

Last, an automatic cutoff is checked against overlapping picks (``--max-overlap``,
:func:`check_overlaps`): two picks closer than 0.75 box cannot both be particles,
and at low SNR a cut that reaches into the background just beside the particles
keeps many such pairs. When more than 1% of the picks (at least one) overlap a
higher candidate, the cutoff rises until no more than that do.

On crowded micrographs (``--crowded``, :func:`fill_to_valley`) the fitted cut can fall
inside the particles' own scores: particles that touch their neighbours score a little
lower, and the mixture takes them for a class of their own (crowded set, two of three
exemplar draws: recall 0.87 at precision 0.99). There the cutoff may come down to the
valley between the background's scores and the particle-like ones, when the picks that
adds overlap almost no higher candidate. Off by default: on EMPIAR-10028 some isolated
non-particles lie in that valley too (docs/design-notes.md, "Crowded micrographs, on
request").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import PickConfig
from ..data.regions import Preprocess, prepare_micrograph
from .cascade import pick_with_student
from .peaks import find_peaks, overlapping, ring_mean, suppress_shoulders
from .scoring import ScoreMap, score_prepared
from .threshold import (choose_cutoff, fisher_z, overlap_checked_cutoff, resolved_rule,
                        valley_cutoff)


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
    encoder_cutoff: float = float("nan")  # cutoff fitted to these candidates (nan: not checked)
    student_cutoff: float = float("nan")  # cutoff fitted to the student cascade's (nan: none)
    fitted_cutoff: float = float("nan")   # the rule's cutoff before ranking by surround (nan: not)
    unchecked_cutoff: float = float("nan")  # the cutoff before the overlap check (nan: not checked)
    overlapping: int = 0      # picks overlapping a higher candidate at that cutoff
    valley_picks: int = -1    # candidates above the valley cutoff (--crowded; -1: not asked)
    valley_overlap: float = float("nan")  # share of the picks it would add that overlap
    filled: int = 0           # picks added by coming down to the valley
    rescored: Optional[np.ndarray] = None  # (n,) bool: scored by the encoder (None: all were)

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


# radius of a peak's surround, in boxes: past the particle's own score peak (about half a
# box wide) and short of most neighbours' centres
SURROUND_RADIUS = 0.75


def surround_corrected(scores: np.ndarray, surround: np.ndarray, weight: float) -> np.ndarray:
    """Cosines ``(n,)`` less ``weight`` times how far each peak's surround ``(n,)`` (mean
    cosine around it) lies above the micrograph's median surround, in Fisher z; returned
    as cosines ``(n,)``."""
    ring = fisher_z(surround)
    return np.tanh(fisher_z(scores) - weight * (ring - np.median(ring)))


def cutoff_keeping(scores: np.ndarray, count: int) -> float:
    """A cutoff under which ``scores > cutoff`` keeps the ``count`` highest of ``scores``
    ``(n,)`` (fewer where scores tie at the boundary)."""
    ranked = np.sort(np.asarray(scores, dtype=float))[::-1]
    if count >= len(ranked):
        return -np.inf
    if count <= 0:
        return float(ranked[0])
    return float(0.5 * (ranked[count - 1] + ranked[count]))


def rank_by_surround(cands: Candidates, weight: float, threshold) -> None:
    """Score ``cands`` against their surround (module docstring), in place: the scores
    become :func:`surround_corrected`'s; a fitted cutoff keeps its number of picks, now
    the best by the corrected score; a fixed ``threshold`` cuts the corrected scores; the
    global quantile is applied later, to them. ``weight`` 0, or no candidate scored by the
    encoder, leaves ``cands`` as they are."""
    judged = np.ones(len(cands.scores), bool) if cands.rescored is None else cands.rescored
    if weight <= 0 or not judged.any():
        return
    smap = cands.score_map
    grid = (cands.xy * smap.scale - smap.offset) / smap.step   # (n, 2) map px
    radius = SURROUND_RADIUS * cands.box * smap.scale / smap.step
    surround = ring_mean(smap.scores, grid, radius)
    count = int(np.sum(cands.scores > cands.cutoff))
    cands.fitted_cutoff = cands.cutoff
    corrected = surround_corrected(cands.scores[judged], surround[judged], weight)
    # candidates the encoder did not score stay under those it did, as the cascade ranks them
    cands.scores = np.minimum(cands.scores, corrected.min())
    cands.scores[judged] = corrected
    rule = resolved_rule(threshold)
    if rule == "fixed":
        cands.cutoff = float(threshold)
    elif rule != "quantile":
        cands.cutoff = cutoff_keeping(cands.scores, count)


# centre distance, in boxes, under which two picks overlap: closer than any two particles of
# the simulated sets (1.05 box) and than all but about 1% of EMPIAR-10028's labelled pairs
OVERLAP_REACH = 0.75


def check_overlaps(cands: Candidates, share: float, threshold) -> None:
    """Raise an automatic cutoff of ``cands``, in place, until at most ``share`` of the picks
    overlap a higher candidate (centres closer than ``OVERLAP_REACH`` box; see
    :func:`~.threshold.overlap_checked_cutoff`). At low SNR the fitted cut can reach into
    the background just beside the particles, whose peaks sit a little under a box from a
    particle's: pairs of overlapping picks are the trace of that. A fixed threshold or the
    global quantile is left as given; ``share`` 0 turns the check off."""
    if share <= 0 or resolved_rule(threshold) in ("fixed", "quantile") or len(cands.scores) < 2:
        return
    over = overlapping(cands.xy, cands.scores, OVERLAP_REACH * cands.box)
    cands.unchecked_cutoff = cands.cutoff
    cands.overlapping = int(np.sum(over & (cands.scores > cands.cutoff)))
    cands.cutoff = overlap_checked_cutoff(cands.scores, over, cands.cutoff, share)


# largest share of the picks the valley would add that may overlap a higher candidate. Shares
# measured, with the share of particles among those picks: crowded set 0-0.02 (one micrograph
# 0.09), 57-96% particles; many lures 0.053-0.15, 15-53%; default set 0-0.15, 22-54%; SNR 0.02
# 0.28-0.47, 4-10%
VALLEY_OVERLAP = 0.05


def fill_to_valley(cands: Candidates, valley_picks: int, threshold) -> None:
    """For crowded micrographs: lower an automatic cutoff of ``cands``, in place, so that it
    keeps the ``valley_picks`` best candidates (as many as score above
    :func:`~.threshold.valley_cutoff`), when at most ``VALLEY_OVERLAP`` of the picks that
    adds lie closer than ``OVERLAP_REACH`` box to a higher candidate. Particles packed
    side by side overlap no higher candidate; the background beside them does. A fixed
    threshold or the global quantile is left as given; a lower cutoff is kept."""
    if resolved_rule(threshold) in ("fixed", "quantile") or len(cands.scores) < 2:
        return
    cands.valley_picks = valley_picks
    count = int(np.sum(cands.scores > cands.cutoff))
    if valley_picks <= count:
        return
    added = np.argsort(-cands.scores, kind="stable")[count:valley_picks]
    over = overlapping(cands.xy, cands.scores, OVERLAP_REACH * cands.box)
    cands.valley_overlap = float(over[added].mean())
    if cands.valley_overlap <= VALLEY_OVERLAP:
        cands.cutoff = cutoff_keeping(cands.scores, valley_picks)
        cands.filled = int(np.sum(cands.scores > cands.cutoff)) - count


# share of the student's peaks the encoder re-scores for the cutoff check (the cascade's 0.4)
CHECK_SHARE = 0.4


def checks_with_student(cfg: PickConfig, student) -> bool:
    """Whether every-window or coarse picking checks its cutoff against the student cascade:
    the automatic rule, a student in the model, and the check not turned off."""
    return student is not None and cfg.student == 0 and cfg.student_check and \
        cfg.threshold == "auto"


def checked_cutoff(cands: Candidates, view: Candidates, rule, anchor: Optional[float]) -> float:
    """The lower of the cutoffs fitted to ``cands`` and to the cascade's ``view``, when both
    are anchored mixture fits (else ``cands``' own); records both on ``cands``."""
    own = choose_cutoff(cands.scores, rule, anchor=anchor)
    cands.encoder_cutoff = own
    both = all(resolved_rule(rule, anchor, len(c.scores)) == "anchored" for c in (cands, view))
    if not both:
        return own
    cands.student_cutoff = choose_cutoff(view.scores, rule, anchor=anchor)
    return min(own, cands.student_cutoff)


def pick_micrograph(model, bank, image: np.ndarray, pre: Preprocess, cfg: PickConfig,
                    device, batch: int, student=None) -> Candidates:
    """Score, find peaks and apply the per-micrograph cutoff (global rules come later).

    With a ``student`` and ``cfg.student`` > 0 the student cascade replaces the
    encoder's full score map (:func:`~fewshotpicker.picking.cascade.pick_with_student`);
    with ``cfg.student`` 0 the cascade's candidates check the automatic cutoff
    (module docstring).
    """
    stride = cfg.stride or default_stride(pre.box)
    anchor = bank.anchor()
    limit = bank.contrast_limit(cfg.max_contrast)
    rule = "auto" if cfg.threshold == "quantile" else cfg.threshold
    prepared = prepare_micrograph(image, pre, device)

    def peaks(score_map: ScoreMap) -> Candidates:
        return find_candidates(score_map, image.shape, pre.box, cfg, limit)

    def cascade(share: float) -> Candidates:
        return pick_with_student(model, student, bank, prepared, pre, stride, share, batch,
                                 peaks, cfg.precision,
                                 lambda s: choose_cutoff(s, rule, cfg.k, anchor=anchor),
                                 cfg.edge_windows)

    if student is not None and cfg.student > 0:
        cands = cascade(cfg.student)
    else:
        cands = peaks(score_prepared(model, bank, prepared, pre, stride, batch, cfg.precision,
                                     cfg.coarse, cfg.edge_windows))
    if checks_with_student(cfg, student):
        view = cascade(CHECK_SHARE)
        cands.cutoff = checked_cutoff(cands, view, rule, anchor)
        cands.score_map.scored += view.score_map.scored
    elif cfg.threshold != "quantile":
        cands.cutoff = choose_cutoff(cands.scores, cfg.threshold, cfg.k, anchor=anchor)
    cands.rule = resolved_rule(cfg.threshold, anchor, len(cands.scores))
    if cfg.crowded:  # the valley of the cosines, before the surround ranking changes them
        valley = int(np.sum(cands.scores > valley_cutoff(cands.scores)))
    rank_by_surround(cands, cfg.surround, cfg.threshold)
    check_overlaps(cands, cfg.max_overlap, cfg.threshold)
    if cfg.crowded:
        fill_to_valley(cands, valley, cfg.threshold)
    cands.anchor = float("nan") if anchor is None else anchor
    return cands

"""Per-micrograph score cutoffs: exemplar-anchored mixture, mixture by BIC, two-level Otsu,
density-based (CryoMAE), fixed, or a quantile.

Anchored mixture (``auto``, ours, the default): the candidate scores of a
micrograph, in Fisher z-space, are fitted with Gaussian mixtures of 2, 3 and
4 components (each with at least 25 candidates; a micrograph with fewer than
75 gets the BIC rule below); the cutoff is where the top component
(well-centred particles) stops being the most likely explanation. Of the three fits the
one whose top component's mean lies closest to the exemplars' median
leave-one-out score is kept: the exemplars say where a particle the model
was not shown scores. That tells apart two cases a mixture alone cannot: at
low SNR a class of near-particle background sits just under the particles
and must be cut off (4 components), while on clean data the class just
under the top is the particles' own lower tail and must be kept (2-3).

Mixture by BIC (``gmm``, ours, the automatic cutoff before the anchor):
mixtures of 2 and 3 components, the one with the lower BIC kept. Measured F1
at IoU 0.5 against the other rules (tiny model, held-out micrographs):
EMPIAR-10028 0.813 (one-level Otsu 0.824, two-level 0.757, density 0.816),
simulated 1024^2 0.895 (0.891, 0.859, 0.862), simulated with many lures
0.874 (0.750, 0.873, 0.724): no single fixed rule is close on all three.

Two-level Otsu (``otsu2``, ours): scores are cosines, so they are compared in
Fisher z-space (``atanh``), where their spread no longer shrinks near 1. A
first Otsu split separates background windows from particle-like ones; a
second split inside the upper class separates well-centred particles from the
weaker tail of off-centre views, partial particles and lures.

Density-based cutoff (METHODS.md, CryoMAE stage 2): sort the candidate
scores; for each, the mean distance to its ``k`` nearest neighbours in score
space; the cutoff is the score where that mean distance changes fastest. High
scores of real particles are sparse and spread out, background scores are
dense, so the kNN distance drops sharply where the particles end. The curve is
smoothed over ``k`` scores so that single gaps in the tail do not decide.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np

from ..errors import InputError


def knn_mean_distance_1d(sorted_desc: np.ndarray, k: int) -> np.ndarray:
    """Mean distance of each value to its ``k`` nearest others, for a sorted 1D array."""
    n = len(sorted_desc)
    k = max(1, min(k, n - 1))
    out = np.empty(n)
    for i in range(n):
        lo, hi = max(0, i - k), min(n, i + k + 1)
        d = np.abs(np.delete(sorted_desc[lo:hi], i - lo) - sorted_desc[i])
        out[i] = np.sort(d)[:k].mean()
    return out


def density_cutoff(scores: np.ndarray, k: int = 10) -> float:
    """The CryoMAE density-based cutoff of a set of scores (see module docstring).

    Returns ``-inf`` (keep all) for fewer than ``2k + 2`` scores: too few to
    tell a sparse tail from a dense bulk.
    """
    s = np.sort(np.asarray(scores, dtype=float))[::-1]
    if len(s) < 2 * k + 2:
        return -np.inf
    dist = knn_mean_distance_1d(s, k)
    smooth = np.convolve(dist, np.ones(k) / k, mode="same")
    rate = np.abs(np.gradient(smooth))
    rate[:k] = rate[-k:] = 0.0  # the ends have one-sided neighbourhoods
    i = int(np.argmax(rate))
    return float(s[i])


def otsu_threshold(values: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of a 1D sample: the cut maximising the between-class variance."""
    values = np.asarray(values, dtype=float)
    if values.size < 2 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    return float(edges[np.argmax((w0 * w1 * (m0 - m1) ** 2)[:-1]) + 1])


def fisher_z(scores: np.ndarray) -> np.ndarray:
    """Fisher's z = atanh(cosine), clipped away from +-1."""
    return np.arctanh(np.clip(np.asarray(scores, dtype=float), -0.999, 0.999))


def valley_cutoff(scores: np.ndarray, min_candidates: int = 8) -> float:
    """One-level Otsu split of cosines ``(n,)`` in Fisher z-space: the valley between the
    background's scores and the particle-like ones; ``-inf`` for too few scores."""
    if len(scores) < min_candidates:
        return -np.inf
    return float(np.tanh(otsu_threshold(fisher_z(scores))))


def otsu2_cutoff(scores: np.ndarray, min_candidates: int = 8) -> float:
    """Two-level Otsu in Fisher z-space (see module docstring); ``-inf`` for too few scores."""
    z = fisher_z(scores)
    if len(z) < min_candidates:
        return -np.inf
    first = otsu_threshold(z)
    upper = z[z > first]
    second = otsu_threshold(upper) if len(upper) >= min_candidates else first
    return float(np.tanh(second))


def fit_mixtures(values: np.ndarray, components: tuple, seed: int = 0) -> list:
    """1D Gaussian mixtures of ``values`` ``(n,)``, one per number of ``components``."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(values, dtype=float)[:, None]
    return [GaussianMixture(k, random_state=seed, n_init=2).fit(x) for k in components]


def top_component_cutoff(mixture, values: np.ndarray) -> float:
    """Where the mixture's top component stops being the most probable, in ``values``' units."""
    x = np.asarray(values, dtype=float)
    top = int(np.argmax(mixture.means_[:, 0]))
    grid = np.linspace(x.min(), mixture.means_[top, 0], 1000)[:, None]
    not_top = grid[mixture.predict_proba(grid)[:, top] < 0.5, 0]
    return float(not_top.max()) if len(not_top) else float(x.min())


def top_separation(mixture) -> float:
    """Ashman's D between a 1D mixture's top component and the next one down:
    ``sqrt(2) |mu1 - mu2| / sqrt(s1^2 + s2^2)``; above 2 the two are cleanly separated
    (infinite for a single component)."""
    order = np.argsort(mixture.means_[:, 0])
    if len(order) < 2:
        return np.inf
    top, below = order[-1], order[-2]
    var = mixture.covariances_.reshape(len(order), -1)[:, 0]
    return float(np.sqrt(2) * (mixture.means_[top, 0] - mixture.means_[below, 0])
                 / np.sqrt(var[top] + var[below]))


def mixture_cutoff(values: np.ndarray, components: tuple = (2, 3), min_values: int = 12,
                   seed: int = 0, min_separation: float = 0.0) -> float:
    """Where the top component of a 1D Gaussian mixture stops being the most probable.

    values: ``(n,)`` any real scores. Mixtures with each number of
    ``components`` are fitted and the one with the lowest BIC is kept; a single
    component (when allowed and chosen) means one population: ``-inf``, keep
    all. So does a top component less than ``min_separation`` (Ashman's D,
    :func:`top_separation`) from the next one: one population split in two.
    Also ``-inf`` for fewer than ``min_values`` values or no spread.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < min_values or np.ptp(x) == 0:
        return -np.inf
    best = min(fit_mixtures(x, components, seed), key=lambda g: g.bic(x[:, None]))
    if best.n_components == 1 or top_separation(best) < min_separation:
        return -np.inf
    return top_component_cutoff(best, x)


def gmm_cutoff(scores: np.ndarray, max_components: int = 3, min_candidates: int = 12,
               seed: int = 0) -> float:
    """Mixture-model cutoff of cosines ``(n,)`` in Fisher z-space (see module docstring);
    ``-inf`` for too few scores."""
    cut = mixture_cutoff(fisher_z(scores), tuple(range(2, max_components + 1)), min_candidates,
                         seed)
    return float(np.tanh(cut)) if np.isfinite(cut) else cut


# candidates per mixture class the anchored cutoff asks for: with fewer, a 4-class fit of the
# ~45 candidates of a small test micrograph followed noise (F1 0.71 against 0.80 by BIC)
PER_CLASS = 25
# top-class means nearer the anchor than this (Fisher z, about a quarter of a particle class's
# spread) do not tell mixtures apart; of those the fewest classes is kept (a 4-class fit whose
# top mean was 0.05 nearer than the 3-class one cut the particles' lower tail: default
# simulated set F1 0.929 and 0.932 against 0.943 for two of three exemplar draws)
ANCHOR_TOLERANCE = 0.05


# a top class more than this many times broader (Fisher z sd) than the narrowest top class
# among the fits the anchor cannot tell apart is the particles merged with the class under
# them: it is not kept for having fewer classes (the demo's model on a micrograph with 200
# repaired hot pixels: a 2-class fit with a top sd of 0.97 against 0.22 for 3 classes, equally
# near the anchor, cut at -0.02 instead of 0.99, 154 picks instead of 117; on the same
# micrograph clean, 5 of 60 fits with one candidate left out did the same). The fits the
# anchor could not tell apart in session 12 differed 1.7 times
BROAD_TOP = 3.0


def top_spread(mixture) -> float:
    """The standard deviation of a 1D mixture's top component."""
    top = int(np.argmax(mixture.means_[:, 0]))
    return float(np.sqrt(mixture.covariances_.reshape(len(mixture.means_), -1)[top, 0]))


def anchored_cutoff(scores: np.ndarray, anchor: float, components: tuple = (2, 3, 4),
                    seed: int = 0) -> float:
    """Mixture cutoff of cosines ``(n,)`` whose particle class is placed by the exemplars.

    anchor: the median cosine of the exemplars' leave-one-out scores (see
    :meth:`~fewshotpicker.picking.scoring.Bank.leave_one_out`), i.e. where the
    model puts a particle it was not shown. Of the mixtures with each number of
    ``components`` that has ``PER_CLASS`` candidates per class (in Fisher
    z-space) the one whose top component's mean lies closest to the anchor is
    kept, or the one with fewest components among those within
    ``ANCHOR_TOLERANCE`` of that distance whose top component is at most
    ``BROAD_TOP`` times as broad as the narrowest of theirs; with fewer than two
    such mixtures the BIC rule (:func:`gmm_cutoff`) decides.
    """
    z = fisher_z(scores)
    allowed = tuple(sorted(k for k in components if len(z) >= PER_CLASS * k))
    if len(allowed) < 2 or np.ptp(z) == 0:
        return gmm_cutoff(scores, seed=seed)
    target = float(fisher_z(np.array([anchor]))[0])
    fits = fit_mixtures(z, allowed, seed)
    dist = [abs(float(g.means_[:, 0].max()) - target) for g in fits]
    near = [g for g, d in zip(fits, dist) if d <= min(dist) + ANCHOR_TOLERANCE]
    narrowest = min(top_spread(g) for g in near)
    chosen = next(g for g in near if top_spread(g) <= BROAD_TOP * narrowest)
    return float(np.tanh(top_component_cutoff(chosen, z)))


RULES = ("auto", "gmm", "otsu2", "density", "quantile")


def resolved_rule(rule: Union[str, float], anchor: Optional[float] = None,
                  n_scores: Optional[int] = None) -> str:
    """The rule ``choose_cutoff`` applies: ``'auto'`` is ``'anchored'`` when the exemplars'
    ``anchor`` cosine is known and (if given) ``n_scores`` fill three mixture classes, else
    ``'gmm'``; a number is ``'fixed'``. Refuses an unknown rule with one sentence."""
    if isinstance(rule, (int, float)):
        return fixed_rule(rule)
    if rule == "auto":
        known = anchor is not None and np.isfinite(anchor)
        enough = n_scores is None or n_scores >= 3 * PER_CLASS
        return "anchored" if known and enough else "gmm"
    if rule in RULES:
        return rule
    try:
        value = float(rule)
    except ValueError:
        raise InputError(f"Threshold {rule!r} is not one of {', '.join(RULES)} "
                         f"or a number.") from None
    return fixed_rule(value)


def fixed_rule(value: float) -> str:
    """``'fixed'`` for a finite cutoff; a NaN or infinite one (which keeps every pick or
    none) is refused with one sentence."""
    if not np.isfinite(value):
        raise InputError(f"Threshold {value}: a fixed cutoff must be a finite number.")
    return "fixed"


def choose_cutoff(scores: np.ndarray, rule: Union[str, float], k: int = 10,
                  quantile: float = 0.9, anchor: Optional[float] = None) -> float:
    """Cutoff for one micrograph: ``'auto'`` (the anchored mixture given the exemplars'
    median leave-one-out cosine ``anchor``, else ``'gmm'``), ``'gmm'``, ``'otsu2'``,
    ``'density'``, ``'quantile'`` or a number."""
    name = resolved_rule(rule, anchor, len(scores))
    if name == "fixed":
        return float(rule)
    if name == "anchored":
        return anchored_cutoff(scores, anchor)
    if name == "gmm":
        return gmm_cutoff(scores)
    if name == "otsu2":
        return otsu2_cutoff(scores)
    if name == "density":
        return density_cutoff(scores, k)
    return float(np.quantile(scores, quantile)) if len(scores) else np.inf


def overlap_checked_cutoff(scores: np.ndarray, overlapped: np.ndarray, cutoff: float,
                           share: float) -> float:
    """``cutoff`` raised until at most ``share`` of the picks (``scores > cutoff``, counted at
    the given cutoff; at least one) overlap a higher candidate (``overlapped`` ``(n,)``, see
    :func:`~fewshotpicker.picking.peaks.overlapping`). Two overlapping picks cannot both be
    particles; many of them say the cut reaches into the background beside the particles.
    scores: ``(n,)``; ``share`` 0 returns ``cutoff``."""
    if share <= 0:
        return cutoff
    scores = np.asarray(scores, dtype=float)
    allowed = max(1, int(share * np.sum(scores > cutoff)))
    above = np.sort(scores[np.asarray(overlapped, bool) & (scores > cutoff)])[::-1]
    return float(above[allowed]) if len(above) > allowed else cutoff

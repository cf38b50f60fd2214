"""Per-micrograph score cutoffs: two-level Otsu, density-based (CryoMAE), fixed, or a quantile.

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

from typing import Union

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


def otsu2_cutoff(scores: np.ndarray, min_candidates: int = 8) -> float:
    """Two-level Otsu in Fisher z-space (see module docstring); ``-inf`` for too few scores."""
    z = fisher_z(scores)
    if len(z) < min_candidates:
        return -np.inf
    first = otsu_threshold(z)
    upper = z[z > first]
    second = otsu_threshold(upper) if len(upper) >= min_candidates else first
    return float(np.tanh(second))


def choose_cutoff(scores: np.ndarray, rule: Union[str, float], k: int = 10,
                  quantile: float = 0.9) -> float:
    """Cutoff for one micrograph: ``'auto'`` (= ``otsu2``), ``'density'``, ``'quantile'``
    or a number."""
    if isinstance(rule, (int, float)):
        return float(rule)
    if rule in ("auto", "otsu2"):
        return otsu2_cutoff(scores)
    if rule == "density":
        return density_cutoff(scores, k)
    if rule == "quantile":
        return float(np.quantile(scores, quantile)) if len(scores) else np.inf
    try:
        return float(rule)
    except ValueError:
        raise InputError(f"Threshold {rule!r} is not 'auto', 'otsu2', 'density', 'quantile' "
                         f"or a number.") from None

"""Per-micrograph score cutoffs: density-based (CryoMAE), fixed, or a quantile.

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


def choose_cutoff(scores: np.ndarray, rule: Union[str, float], k: int = 10,
                  quantile: float = 0.9) -> float:
    """Cutoff for one micrograph: ``'auto'`` (density), ``'quantile'`` or a number."""
    if isinstance(rule, (int, float)):
        return float(rule)
    if rule == "auto":
        return density_cutoff(scores, k)
    if rule == "quantile":
        return float(np.quantile(scores, quantile)) if len(scores) else np.inf
    try:
        return float(rule)
    except ValueError:
        raise InputError(f"Threshold {rule!r} is not 'auto', 'quantile' or a number.") from None

"""Matching picks to true particles, one micrograph at a time.

Two rules decide whether a pick may match a truth: the IoU of two squares of
side ``box`` px centred on them, or the distance between the centres. Two
procedures pair them one to one:

- :func:`match_maximum`: the largest possible number of pairs (an optimal
  assignment), used for precision/recall/F1 of a final pick set;
- :func:`match_greedy`: picks in descending score order, each taking the best
  free truth, used for ranking metrics (AP, ROC): with several picks on one
  particle, the most confident one is the true positive, the rest are false.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


def box_iou(a: np.ndarray, b: np.ndarray, box: float) -> np.ndarray:
    """IoU of equal squares of side ``box`` centred at ``a`` (n, 2) and ``b`` (m, 2); (n, m)."""
    dx = np.abs(a[:, None, 0] - b[None, :, 0])
    dy = np.abs(a[:, None, 1] - b[None, :, 1])
    inter = np.clip(box - dx, 0, None) * np.clip(box - dy, 0, None)
    return inter / (2.0 * box * box - inter)


def affinity(picks: np.ndarray, truth: np.ndarray, rule: str, size: float) -> tuple:
    """Pairwise affinity (higher is better) and the boolean mask of allowed pairs.

    ``rule='iou'``: affinity is the box IoU, allowed when ``>= size`` is not
    used here (the caller passes the threshold); ``rule='distance'``: affinity
    is minus the centre distance.
    """
    if rule == "iou":
        return box_iou(picks, truth, size)
    if rule == "distance":
        return -np.sqrt(((picks[:, None, :] - truth[None, :, :]) ** 2).sum(-1))
    raise ValueError(f"unknown matching rule {rule!r}")


def _allowed(aff: np.ndarray, rule: str, threshold: float) -> np.ndarray:
    return aff >= threshold if rule == "iou" else aff >= -threshold


def match_maximum(picks: np.ndarray, truth: np.ndarray, rule: str, size: float,
                  threshold: float) -> np.ndarray:
    """Largest one-to-one matching; returns ``(n_picks,)`` index of the matched truth or -1.

    Parameters
    ----------
    picks, truth : ``(n, k)`` and ``(m, k)`` centres, px (k = 2 or 3).
    rule : ``'iou'`` (squares of side ``size``) or ``'distance'``.
    threshold : minimum IoU, or maximum distance in px.
    """
    out = np.full(len(picks), -1)
    if len(picks) == 0 or len(truth) == 0:
        return out
    aff = affinity(picks, truth, rule, size)
    ok = _allowed(aff, rule, threshold)
    if not ok.any():
        return out
    rows = np.flatnonzero(ok.any(1))
    cols = np.flatnonzero(ok.any(0))
    sub_ok = ok[np.ix_(rows, cols)]
    # cost < 1 for allowed pairs, a large penalty otherwise: the optimum first
    # maximises the number of allowed pairs, then prefers the closer ones
    closeness = aff[np.ix_(rows, cols)]
    closeness = closeness if rule == "iou" else 1.0 + closeness / (threshold + 1e-12)
    cost = np.where(sub_ok, 1.0 - 0.5 * closeness, 1e6)
    r, c = linear_sum_assignment(cost)
    good = sub_ok[r, c]
    out[rows[r[good]]] = cols[c[good]]
    return out


def match_greedy(picks: np.ndarray, scores: np.ndarray, truth: np.ndarray, rule: str,
                 size: float, threshold: float) -> np.ndarray:
    """Greedy matching by descending score; returns ``(n_picks,)`` matched truth index or -1."""
    out = np.full(len(picks), -1)
    if len(picks) == 0 or len(truth) == 0:
        return out
    reach = size * 1.5 if rule == "iou" else threshold
    tree = cKDTree(truth)
    taken = np.zeros(len(truth), dtype=bool)
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        near = np.array(tree.query_ball_point(picks[i], reach), dtype=int)
        if near.size == 0:
            continue
        aff = affinity(picks[i:i + 1], truth[near], rule, size)[0]
        free = ~taken[near] & _allowed(aff, rule, threshold)
        if free.any():
            j = near[free][np.argmax(aff[free])]
            taken[j] = True
            out[i] = j
    return out

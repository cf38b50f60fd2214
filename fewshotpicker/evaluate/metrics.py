"""Detection metrics from match results: precision, recall, F-beta, AP, ROC.

Undefined ratios (no picks, or no truth) are ``None``, shown as ``-`` in tables
and ``null`` in JSON, so they never pull an average up or down silently.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.integrate import trapezoid


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num) / float(den) if den > 0 else None


def fbeta(precision: Optional[float], recall: Optional[float], beta: float = 1.0) -> Optional[float]:
    """F-beta score; None if either input is None, 0 if both are 0."""
    if precision is None or recall is None:
        return None
    b2 = beta * beta
    den = b2 * precision + recall
    return (1 + b2) * precision * recall / den if den > 0 else 0.0


def counts_to_scores(tp: int, n_picks: int, n_truth: int, beta: float = 1.0) -> dict:
    """Precision, recall and F-beta from counts (false positives = picks - tp)."""
    p, r = _ratio(tp, n_picks), _ratio(tp, n_truth)
    key = "f1" if beta == 1.0 else f"f{beta:g}"
    return {"tp": int(tp), "fp": int(n_picks - tp), "fn": int(n_truth - tp),
            "precision": p, "recall": r, key: fbeta(p, r, beta)}


def ranking_curve(scores: np.ndarray, is_tp: np.ndarray, n_truth: int) -> dict:
    """Precision-recall and ROC curves over picks ranked by descending score.

    ``is_tp`` marks picks matched one-to-one (greedy by score). Recall is
    TP / n_truth; the ROC's x axis is the fraction of all false-positive picks
    accepted so far, its y axis the recall, so a perfect picker has area 1 and
    a picker that misses particles cannot reach it.
    """
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    tp = np.cumsum(np.asarray(is_tp, dtype=bool)[order])
    fp = np.cumsum(~np.asarray(is_tp, dtype=bool)[order])
    k = np.arange(1, len(order) + 1)
    precision = tp / np.maximum(k, 1)
    recall = tp / n_truth if n_truth else np.zeros(len(order))
    fpr = fp / fp[-1] if len(fp) and fp[-1] > 0 else np.zeros(len(order))
    return {"precision": precision, "recall": recall, "fpr": fpr,
            "thresholds": np.asarray(scores, dtype=float)[order]}


def average_precision(curve: dict, n_truth: int) -> Optional[float]:
    """Area under the precision-recall curve: sum over picks of precision x recall step."""
    if n_truth == 0:
        return None
    recall = np.concatenate([[0.0], curve["recall"]])
    return float(np.sum(np.diff(recall) * curve["precision"]))


def auroc(curve: dict, n_truth: int) -> Optional[float]:
    """Area under (false-positive fraction, recall), trapezoidal; None without truth or picks."""
    if n_truth == 0 or len(curve["recall"]) == 0:
        return None
    x = np.concatenate([[0.0], curve["fpr"]])
    y = np.concatenate([[0.0], curve["recall"]])
    if x[-1] == 0:  # no false positives at all: the curve jumps straight up
        return float(y[-1])
    return float(trapezoid(y, x))  # np.trapz is gone from numpy 2

"""Every published evaluation convention, side by side (METHODS.md section 5).

=============  ===============================  ============================
convention     match rule                       figures
=============  ===============================  ============================
cryomae        boxes IoU >= 0.5, max one-to-one  precision, recall, F1
hydrapicker    boxes IoU >= 0.6, greedy by score AP, AUROC, PR curve
topaz          centre distance <= radius         P/R/F1, AUPRC, PR curve
czii (3D)      distance <= 0.5 x radius          F-beta (beta 4), per class
=============  ===============================  ============================

Each is computed per micrograph and pooled over all micrographs (counts
summed; ranking metrics over all picks ranked together).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io.coordinates import micrograph_key
from .matching import match_greedy, match_maximum
from .metrics import auroc, average_precision, counts_to_scores, ranking_curve


@dataclass(frozen=True)
class Convention:
    """How a convention matches and what it reports."""
    name: str
    rule: str             # "iou" or "distance"
    threshold: float      # min IoU, or max distance as a multiple of the radius
    ranking: bool         # AP / ROC from greedy matching by score
    beta: float = 1.0
    three_d: bool = False


CONVENTIONS = {
    "cryomae": Convention("cryomae", "iou", 0.5, ranking=False),
    "hydrapicker": Convention("hydrapicker", "iou", 0.6, ranking=True),
    "topaz": Convention("topaz", "distance", 1.0, ranking=True),
    "czii": Convention("czii", "distance", 0.5, ranking=False, beta=4.0, three_d=True),
}


def _positions(df: pd.DataFrame, three_d: bool) -> np.ndarray:
    cols = ["x", "y", "z"] if three_d else ["x", "y"]
    return df[cols].to_numpy(dtype=float).reshape(-1, len(cols))


def _group(df: pd.DataFrame) -> Dict[str, pd.DataFrame]:
    keys = df["micrograph"].astype(str).map(micrograph_key)
    return {k: g for k, g in df.groupby(keys, sort=True)}


def check_names(picks: pd.DataFrame, truth_keys: Iterable[str], source: str) -> None:
    """Refuse picks on images that the truth does not know (a naming mismatch)."""
    known = set(truth_keys)
    unknown = sorted(set(picks["micrograph"].astype(str).map(micrograph_key)) - known)
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise InputError(f"{source}: picks name {len(unknown)} micrograph(s) that match no "
                         f"micrograph of the ground truth ({shown}).")


def _evaluate_one(conv: Convention, picks: pd.DataFrame, truth: pd.DataFrame, box: float,
                  radius: float) -> dict:
    """Counts (and ranking data) of one micrograph under one convention."""
    p, t = _positions(picks, conv.three_d), _positions(truth, conv.three_d)
    thr = conv.threshold if conv.rule == "iou" else conv.threshold * radius
    best = match_maximum(p, t, conv.rule, box, thr)
    result = counts_to_scores(int((best >= 0).sum()), len(p), len(t), conv.beta)
    if conv.ranking:
        scores = picks["score"].to_numpy(float) if "score" in picks else np.ones(len(p))
        greedy = match_greedy(p, scores, t, conv.rule, box, thr)
        result["_scores"], result["_tp"] = scores, greedy >= 0
        curve = ranking_curve(scores, greedy >= 0, len(t))
        result["ap"] = average_precision(curve, len(t))
        result["auroc"] = auroc(curve, len(t))
    return result


def _pool(conv: Convention, parts: List[dict]) -> dict:
    tp = sum(r["tp"] for r in parts)
    n_picks = sum(r["tp"] + r["fp"] for r in parts)
    n_truth = sum(r["tp"] + r["fn"] for r in parts)
    pooled = counts_to_scores(tp, n_picks, n_truth, conv.beta)
    if conv.ranking:
        scores = np.concatenate([r["_scores"] for r in parts]) if parts else np.empty(0)
        is_tp = np.concatenate([r["_tp"] for r in parts]) if parts else np.empty(0, bool)
        curve = ranking_curve(scores, is_tp, n_truth)
        pooled["ap"] = average_precision(curve, n_truth)
        pooled["auroc"] = auroc(curve, n_truth)
        pooled["curve"] = {k: v.tolist() for k, v in curve.items()}
    return pooled


def evaluate_convention(name: str, picks: pd.DataFrame, truth: pd.DataFrame, box: float,
                        radius: Optional[float] = None,
                        micrographs: Optional[Iterable[str]] = None) -> dict:
    """Score ``picks`` against ``truth`` under convention ``name``.

    Parameters
    ----------
    picks, truth : coordinate tables (``micrograph``, ``x``, ``y`` [, ``z``], ``score``).
    box : box side in px (the particle diameter for IoU rules).
    radius : particle radius in px for distance rules (default ``box / 2``).
    micrographs : every image evaluated, so images with no truth or no picks count.

    Returns ``{"pooled": {...}, "per_micrograph": {key: {...}}}``; with
    ``czii``, ``per_class`` too.
    """
    conv = CONVENTIONS[name]
    radius = radius or box / 2.0
    if conv.three_d and ("z" not in picks or "z" not in truth):
        raise InputError("The czii convention needs 3D coordinates (a z column) in picks "
                         "and truth.")
    keys = sorted(set(map(micrograph_key, micrographs or [])) |
                  set(truth["micrograph"].astype(str).map(micrograph_key)))
    check_names(picks, keys, "picks")
    by_pick, by_truth = _group(picks), _group(truth)
    empty = picks.iloc[0:0]
    per_mic = {k: _evaluate_one(conv, by_pick.get(k, empty), by_truth.get(k, truth.iloc[0:0]),
                                box, radius) for k in keys}
    report = {"pooled": _pool(conv, list(per_mic.values())),
              "per_micrograph": {k: _public(v) for k, v in per_mic.items()}}
    if conv.three_d:  # a pick counts only for a particle of its own class
        report["per_class"], parts = _per_class(conv, picks, truth, box, radius, keys)
        report["pooled"] = _pool(conv, parts)
    return report


def _per_class(conv: Convention, picks: pd.DataFrame, truth: pd.DataFrame, box: float,
               radius: float, keys: List[str]) -> tuple:
    """Scores per particle class, and every (micrograph, class) part for pooling."""
    out, every = {}, []
    for klass in sorted(set(truth["class"].astype(int))):
        p = picks[picks["class"].astype(int) == klass]
        t = truth[truth["class"].astype(int) == klass]
        bp, bt = _group(p), _group(t)
        parts = [_evaluate_one(conv, bp.get(k, p.iloc[0:0]), bt.get(k, t.iloc[0:0]), box, radius)
                 for k in keys]
        out[str(klass)] = _pool(conv, parts)
        every += parts
    return out, every


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}

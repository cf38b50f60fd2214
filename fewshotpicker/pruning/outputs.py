"""What ``prune`` writes: every pick with its probability, kept and rejected RELION
autopick folders, the gallery, the probability histogram and the summary."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd

from ..io.coordinates import micrograph_key, write_autopick, write_coordinate_table
from ..picking.plots import plot_score_histogram
from .gallery import gallery_rows, plot_gallery

KEPT, REJECTED = 1, 2  # rlnClassNumber in scores.star


def scored_table(picks: pd.DataFrame, probs: np.ndarray, threshold: float) -> pd.DataFrame:
    """The picks (names as given) with ``score`` = probability and ``class`` = 1 kept / 2
    rejected, in input order."""
    out = picks[["micrograph", "x", "y"]].copy()
    out["score"] = probs
    out["class"] = np.where(probs >= threshold, KEPT, REJECTED)
    return out


def per_micrograph_counts(table: pd.DataFrame) -> Dict[str, dict]:
    """``{micrograph key: {"kept": n, "rejected": n}}``."""
    keys = table["micrograph"].astype(str).map(micrograph_key)
    return {k: {"kept": int((g["class"] == KEPT).sum()),
                "rejected": int((g["class"] == REJECTED).sum())}
            for k, g in table.groupby(keys, sort=True)}


def write_pick_lists(table: pd.DataFrame, out_dir: Path, micrographs: List[str]) -> dict:
    """``scores.star`` (all picks, input order), ``kept/`` and ``rejected/`` (RELION
    autopick folders: one STAR per micrograph plus ``autopick.star``)."""
    write_coordinate_table(table, out_dir / "scores.star", with_scores=True)
    paths = {"scores": str(out_dir / "scores.star")}
    for name, klass in (("kept", KEPT), ("rejected", REJECTED)):
        part = table[table["class"] == klass].assign(**{"class": 1})
        paths[name] = str(write_autopick(part, out_dir / name, micrographs))
    return paths


def write_figures(probs: np.ndarray, threshold: float, crops_of, n: int, out_dir: Path) -> dict:
    """``gallery.png`` and ``probabilities.png``. ``crops_of(indices) -> (k, s, s)`` crops."""
    rows = [(title, crops_of(idx), probs[idx]) for title, idx in gallery_rows(probs, threshold, n)]
    plot_gallery(rows, threshold, out_dir / "gallery.png",
                 f"{int((probs >= threshold).sum())} kept, {int((probs < threshold).sum())} "
                 f"rejected at p >= {threshold:.2f}")
    plot_score_histogram(probs, threshold, out_dir / "probabilities.png", "pruning",
                         xlabel="probability of a particle (PU classifier)", what="picks")
    return {"gallery": str(out_dir / "gallery.png"),
            "histogram": str(out_dir / "probabilities.png")}

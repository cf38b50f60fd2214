"""Evaluation report: all conventions at once, as a printed table, JSON and a PR plot."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd

from ..io.atomic import atomic_path, write_text_atomic
from ..io.coordinates import micrograph_key
from .conventions import check_names, evaluate_convention

FIGURES = ["precision", "recall", "f1", "f4", "ap", "auroc", "tp", "fp", "fn"]


def evaluate_all(picks: pd.DataFrame, truth: pd.DataFrame, box: float,
                 conventions: Sequence[str] = ("cryomae", "hydrapicker", "topaz"),
                 radius: Optional[float] = None,
                 micrographs: Optional[Iterable[str]] = None) -> dict:
    """Run each convention; returns ``{"box": .., "conventions": {name: report}}``.

    micrographs: the images evaluated, exactly: picks and truth on other images are
    left out (``left_out`` counts them), images among them with no picks or no truth
    count. None: every image the truth names.
    """
    micrographs = list(micrographs or [])
    left_out = {"picks": 0, "truth": 0}
    if micrographs:
        keys = set(map(micrograph_key, micrographs))
        check_names(picks, keys | set(truth["micrograph"].astype(str).map(micrograph_key)),
                    "picks")
        kept_picks, kept_truth = _only(picks, keys), _only(truth, keys)
        left_out = {"picks": len(picks) - len(kept_picks), "truth": len(truth) - len(kept_truth)}
        picks, truth = kept_picks, kept_truth
    return {"box": box, "radius": radius or box / 2.0,
            "n_picks": int(len(picks)), "n_truth": int(len(truth)), "left_out": left_out,
            "conventions": {name: evaluate_convention(name, picks, truth, box, radius,
                                                      micrographs)
                            for name in conventions}}


def _only(table: pd.DataFrame, keys: set) -> pd.DataFrame:
    """The rows of a coordinate table on the micrographs ``keys`` (micrograph_key form)."""
    return table[table["micrograph"].astype(str).map(micrograph_key).isin(keys)]


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def format_table(report: dict, per_micrograph: bool = False) -> str:
    """A plain-text table: one row per convention (pooled), optionally per micrograph."""
    rows = []
    for name, rep in report["conventions"].items():
        rows.append((name, "all", rep["pooled"]))
        if per_micrograph:
            rows += [(name, key, r) for key, r in rep["per_micrograph"].items()]
    cols = [c for c in FIGURES if any(c in r for _, _, r in rows)]
    header = ["convention", "micrograph"] + cols
    lines = [[n, k] + [_fmt(r.get(c)) for c in cols] for n, k, r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header)] + [fmt.format(*line) for line in lines])


def save_report(report: dict, out_dir: str | Path, label: str = "picks") -> dict:
    """Write ``metrics.json`` and ``precision_recall.png`` under ``out_dir``; return paths."""
    out = Path(out_dir)
    paths = {"json": write_text_atomic(out / "metrics.json", json.dumps(report, indent=1) + "\n")}
    curves = {n: r["pooled"]["curve"] for n, r in report["conventions"].items()
              if "curve" in r["pooled"]}
    if curves:
        paths["plot"] = plot_precision_recall({label: curves}, out / "precision_recall.png")
    return {k: str(v) for k, v in paths.items()}


def plot_precision_recall(curves_by_label: dict, path: str | Path) -> Path:
    """Plot PR curves: ``{label: {convention: {"precision": [...], "recall": [...]}}}``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    for label, curves in curves_by_label.items():
        for conv, curve in curves.items():
            ax.plot(curve["recall"], curve["precision"], label=f"{label} ({conv})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)

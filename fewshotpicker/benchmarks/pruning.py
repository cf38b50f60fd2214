"""Pruning other pickers' picks: precision and recall before and after, on the same data.

For every data set (by default the simulated set with many lures, and the real
EMPIAR-10028 set) and every seed: 15 exemplars are drawn from one micrograph
(the seed chooses which), the DoG baseline and Topaz (trained on those
exemplars) pick the micrographs that gave no exemplars, and ``fewshotpicker
prune`` (the tiny MAE pretrained once per data set, nnPU on the exemplars
against the picks) judges each picker's kept picks. Precision, recall and F1
at box IoU 0.5 before and after, the share of each lure kind removed (simulated
sets record them), the estimated class prior beside the true share of
particles, and the pruner's seconds per micrograph (its own process, start-up
and training included).
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from ..evaluate import evaluate_all
from ..evaluate.matching import match_maximum
from ..io.coordinates import micrograph_key, read_coordinates, write_coordinate_table
from . import topaz_peer
from .features import Dataset
from .picking import (BenchSettings, _engine, datasets, draw_exemplars, ensure_pretrained,
                      pick_dog, pick_topaz, run_folder, run_measured, seed_folder)

log = logging.getLogger("fewshotpicker")
DEFAULT_SETS = ["4", "real"]  # SIM_SETS index 4: "sim many lures"


def _test_truth(ds: Dataset, table: pd.DataFrame) -> pd.DataFrame:
    keys = {micrograph_key(m) for m in ds.test}
    return table[table["micrograph"].astype(str).map(micrograph_key).isin(keys)]


def figures(picks: pd.DataFrame, ds: Dataset) -> dict:
    """Precision, recall, F1 at box IoU 0.5 of ``picks`` on the test micrographs."""
    rep = evaluate_all(picks, ds.truth, ds.box, ("cryomae",),
                       micrographs=[str(m) for m in ds.test])
    c = rep["conventions"]["cryomae"]["pooled"]
    return {"precision": c["precision"] or 0.0, "recall": c["recall"] or 0.0,
            "f1": c["f1"] or 0.0, "picks": int(len(picks))}


def lures_removed(before: pd.DataFrame, after: pd.DataFrame, lures: pd.DataFrame,
                  box: float) -> Optional[float]:
    """Share of the picks lying on a recorded lure (within a radius) that pruning removed."""
    if lures is None or not len(lures):
        return None
    hits = []
    for table in (before, after):
        n = 0
        for key, g in table.groupby(table["micrograph"].astype(str).map(micrograph_key)):
            mine = lures[lures["micrograph"].astype(str).map(micrograph_key) == key]
            if len(mine):
                d = np.linalg.norm(g[["x", "y"]].to_numpy(float)[:, None] -
                                   mine[["x", "y"]].to_numpy(float)[None], axis=-1)
                n += int((d.min(axis=1) <= box / 2).sum())
        hits.append(n)
    return 1.0 - hits[1] / hits[0] if hits[0] else None


def prune_picks(picks: pd.DataFrame, ds: Dataset, exemplars: pd.DataFrame, model: Path,
                out: Path, seed: int, device: str) -> tuple:
    """Run ``fewshotpicker prune`` on ``picks``; returns ``(kept, summary, seconds)``."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "pruned", ignore_errors=True)  # a new run, not a resumed one
    write_coordinate_table(picks, out / "input_picks.star", with_scores=True)
    write_coordinate_table(exemplars, out / "exemplars.star")
    seconds, _ = run_measured(_engine(
        "prune", "--micrographs", *map(str, ds.train + ds.test), "--picks",
        str(out / "input_picks.star"), "--exemplars", str(out / "exemplars.star"),
        "--model", str(model), "--box", str(ds.box), "--out", str(out / "pruned"),
        "--device", device, "--seed", str(seed)), out / "commands.log")
    scores = read_coordinates(out / "pruned" / "scores.star")
    summary = json.loads((out / "pruned" / "summary.json").read_text())
    return scores[scores["class"] == 1], summary, seconds


def true_share(picks: pd.DataFrame, ds: Dataset) -> float:
    """Share of the picks within half a box of a true particle (the prior to estimate)."""
    truth = _test_truth(ds, ds.truth)
    hit = 0
    for key, g in picks.groupby(picks["micrograph"].astype(str).map(micrograph_key)):
        mine = truth[truth["micrograph"].astype(str).map(micrograph_key) == key]
        matched = match_maximum(g[["x", "y"]].to_numpy(float), mine[["x", "y"]].to_numpy(float),
                                "distance", ds.box, ds.box / 2)
        hit += int((matched >= 0).sum())
    return hit / max(1, len(picks))


def run_seed(ds: Dataset, lures: Optional[pd.DataFrame], seed: int, base: Path,
             pretrained: Path, st: BenchSettings, topaz_exe: Optional[Path]) -> List[dict]:
    """Prune DoG's (and Topaz's) picks with the exemplars of one seed."""
    out = seed_folder(base, seed, st)
    exemplars = draw_exemplars(ds, st.exemplars, seed)
    dog = base / "dog"
    picks = {"DoG": read_coordinates(dog / "kept" / "autopick.star")
             if (dog / "kept" / "autopick.star").exists() else pick_dog(ds, dog)["kept"]}
    if topaz_exe is not None:
        picks["Topaz"] = pick_topaz(topaz_exe, ds, exemplars, out / "topaz", st.topaz)["kept"]
    rows = []
    for picker, table in picks.items():
        kept, summary, seconds = prune_picks(table, ds, exemplars, pretrained,
                                             out / f"prune_{picker.lower()}", seed, st.device)
        b, a = figures(table, ds), figures(kept, ds)
        rows.append({"dataset": ds.name, "seed": seed, "exemplars": len(exemplars),
                     "picker": picker,
                     **{f"{k}_before": v for k, v in b.items()},
                     **{f"{k}_after": v for k, v in a.items()},
                     "d_precision": a["precision"] - b["precision"],
                     "d_recall": a["recall"] - b["recall"],
                     "lures_removed": lures_removed(table, kept, lures, ds.box),
                     "prior_est": summary["prior"], "prior_true": true_share(table, ds),
                     "s_per_mic": seconds / len(ds.test)})
    return rows


def summarise(rows: List[dict]) -> List[dict]:
    """Mean (and spread over seeds of the changes) per data set and picker."""
    df = pd.DataFrame(rows)
    out = []
    for (name, picker), g in df.groupby(["dataset", "picker"], sort=False):
        row = {"dataset": name, "picker": picker, "seeds": len(g),
               "exemplars": int(g["exemplars"].iloc[0])}
        for col in ("precision_before", "precision_after", "recall_before", "recall_after",
                    "f1_before", "f1_after", "d_precision", "d_recall", "lures_removed",
                    "prior_est", "prior_true", "s_per_mic"):
            values = g[col].dropna()
            row[col] = float(values.mean()) if len(values) else None
        row["d_precision_std"] = float(g["d_precision"].std(ddof=0))
        row["d_recall_std"] = float(g["d_recall"].std(ddof=0))
        out.append(row)
    return out


def run(work: Path, sets: List[str], real: Optional[Path], seeds: List[int],
        st: BenchSettings, topaz_exe_env: Optional[Path]) -> Dict[str, list]:
    """The whole pruning benchmark; returns ``{"rows", "summary", "settings", "topaz"}``."""
    topaz_exe = topaz_peer.ensure_topaz(topaz_exe_env) if topaz_exe_env else None
    rows = []
    for ds in datasets(work, sets, real, st):
        base = run_folder(work, ds, "prune", st.model)
        pretrained = ensure_pretrained(ds, base, st)
        lures_path = Path(ds.train[0]).parent.parent / "lures.star"
        lures = read_coordinates(lures_path) if lures_path.exists() else None
        for seed in seeds:
            log.info("pruning benchmark: %s, seed %d", ds.name, seed)
            rows += run_seed(ds, lures, seed, base, pretrained, st, topaz_exe)
            (work / "prune_rows.json").write_text(json.dumps(rows, indent=1))
    return {"settings": asdict(st), "rows": rows, "summary": summarise(rows),
            "topaz": topaz_peer.topaz_version(topaz_exe) if topaz_exe else None}

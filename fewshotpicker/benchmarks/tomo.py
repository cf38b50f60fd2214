"""Tomogram picking from few labels: teacher-student against supervised-only.

Simulated tomograms (several species, missing wedge, settable SNR); a fraction
of the particles (at least one per species) is labelled, the detector is
trained once with the teacher-student scheme and once on the labels alone
(same steps, same crops per step), and both pick every tomogram. Scored on the
unlabelled particles only (labelled ones and picks on them are left out):
F-beta 4 and F1 under the CZII rule (a hit within half a particle radius),
per species pooled; seconds per tomogram (picking) and training seconds.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import List

import numpy as np
import pandas as pd

from ..config import Pick3dConfig, TomogramSimConfig
from ..data.synthetic3d import simulate_tomograms
from ..evaluate import evaluate_all
from ..io.coordinates import micrograph_key, read_coordinates
from ..tomo.run import pick3d


def draw_labels(truth: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """``fraction`` of each species' particles (at least one), chosen by ``seed``."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, g in truth.groupby("class"):
        n = max(1, int(round(fraction * len(g))))
        parts.append(g.iloc[np.sort(rng.choice(len(g), n, replace=False))])
    return pd.concat(parts)


def unlabelled_scores(picks: pd.DataFrame, truth: pd.DataFrame, labels: pd.DataFrame,
                      radius: float) -> dict:
    """CZII figures against the particles without a label (species must match), and F1
    ignoring the species (``f1_any``: is the particle found at all); picks on a labelled
    particle are dropped first (they are neither right nor wrong here)."""
    scores = czii_scores(picks, truth, labels, radius)
    anyone = czii_scores(picks.assign(**{"class": 1}), truth.assign(**{"class": 1}), labels,
                         radius)
    return {**scores, "f1_any": anyone["f1"]}


def czii_scores(picks: pd.DataFrame, truth: pd.DataFrame, labels: pd.DataFrame,
                radius: float) -> dict:
    """Pooled CZII precision, recall, F1 and F-beta 4 on the unlabelled particles."""
    def on_labels(table):
        hit = np.zeros(len(table), bool)
        for key, g in table.groupby(table["micrograph"].astype(str).map(micrograph_key)):
            mine = labels[labels["micrograph"].astype(str).map(micrograph_key) == key]
            if len(mine):
                d = np.linalg.norm(g[["x", "y", "z"]].to_numpy()[:, None] -
                                   mine[["x", "y", "z"]].to_numpy()[None], axis=-1)
                hit[table.index.get_indexer(g.index)] = d.min(axis=1) <= radius / 2
        return hit
    rest = truth.drop(index=labels.index)
    kept = picks.reset_index(drop=True)
    kept = kept[~on_labels(kept)]
    pooled = evaluate_all(kept, rest, 2 * radius, ("czii",),
                          micrographs=sorted(set(truth["micrograph"])))["conventions"]["czii"][
        "pooled"]
    p, r = pooled["precision"] or 0.0, pooled["recall"] or 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "f4": pooled["f4"] or 0.0}


def run(work: Path, fractions: List[float], seeds: List[int], steps: int, size: str,
        device: str, sim: TomogramSimConfig) -> dict:
    """Every label fraction x seed x {teacher-student, supervised only}."""
    data = work / "tomograms"
    meta = json.loads((data / "meta.json").read_text()) if (data / "meta.json").exists() \
        else simulate_tomograms(sim, data)
    truth = read_coordinates(data / "truth3d.star")
    tomos = sorted((data / "tomograms").glob("*.mrc"))
    box = float(np.mean([s["diameter_px"] for s in meta["species"]]))
    rows = []
    for fraction in fractions:
        for seed in seeds:
            labels = draw_labels(truth, fraction, seed)
            for semi in (True, False):
                name = f"f{fraction:g}_s{seed}_{'semi' if semi else 'sup'}"
                cfg = Pick3dConfig(box=box, size=size, steps=steps, semi=semi, device=device,
                                   seed=seed)
                start = time.perf_counter()
                summary = pick3d(cfg, tomos, labels, work / name)
                picks = read_coordinates(work / name / "picks3d_relion4.star")
                rows.append({"labels": f"{fraction:.0%} ({len(labels)})", "seed": seed,
                             "method": "teacher-student" if semi else "supervised only",
                             **unlabelled_scores(picks, truth, labels, box / 2),
                             "picks": len(picks), "train_s": summary["train_seconds"],
                             "s_per_tomo": summary["seconds_per_tomogram"],
                             "total_s": time.perf_counter() - start})
                (work / "tomo_rows.json").write_text(json.dumps(rows, indent=1))
    return {"rows": rows, "particles": int(len(truth)), "box": box,
            "sim": {"snr": sim.snr, "shape": list(sim.shape), "n": sim.n_tomograms},
            "steps": steps, "size": size, "device": device}


def default_sim(snr: float, n: int) -> TomogramSimConfig:
    return replace(TomogramSimConfig(), snr=snr, n_tomograms=n, seed=4)

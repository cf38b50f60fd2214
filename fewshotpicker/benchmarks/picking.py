"""Picking quality and speed of the few-shot picker beside DoG and Topaz, on the same data.

For every data set (simulated at several SNRs and crowdings, and the real
EMPIAR-10028 set) and every seed: 15 exemplars are drawn from one micrograph
(the seed chooses which), the few-shot picker is fine-tuned from a model
pretrained once per data set, Topaz is trained on the same exemplars and
micrographs, and all three pickers pick the micrographs that gave no
exemplars. Each picker runs as its own command, so its wall time and peak
memory (resident set of that process; GPU memory from torch) are measured
alike, start-up included.

Figures per picker: precision, recall and F1 at box IoU 0.5 at the picker's
own cutoff (ours: automatic per micrograph; DoG: noise-calibrated; Topaz:
score 0, i.e. p = 0.5 under its prior), the best F1 over all cutoffs (an
oracle, to separate ranking from thresholding), AP at IoU 0.6 over all
candidates, seconds per micrograph and peak memory.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from ..config import MicrographSimConfig, PretrainConfig, TrainConfig
from ..data.synthetic import simulate_dataset
from ..evaluate import evaluate_all
from ..evaluate.report import plot_precision_recall
from ..io.coordinates import micrograph_key, read_coordinates
from ..training.finetune import finetune
from ..training.pretrain import pretrain
from . import topaz_peer
from .features import Dataset, empiar10028

log = logging.getLogger("fewshotpicker")

SIM_SETS = {
    "sim default (SNR 0.05)": {},
    "sim low SNR (0.02)": {"snr": 0.02},
    "sim high SNR (0.2)": {"snr": 0.2},
    "sim crowded (SNR 0.05)": {"crowding": 0.4},
    # the pruning benchmark's default: lures outnumber a third of the particles
    "sim many lures (SNR 0.05)": {"ice_crystals": 12.0, "aggregates": 10.0, "carbon_edge": 1.0},
}


FAST = "fewshot fast (--coarse 2)"
# the sets whose particles touch, where a user would pick with --crowded: also picked so
CROWDED_SETS = {name for name, overrides in SIM_SETS.items() if "crowding" in overrides}
CROWDED = "fewshot crowded (--crowded)"


@dataclass(frozen=True)
class BenchSettings:
    """What each picker is given; the same for every data set and seed."""
    micrographs: int = 4          # simulated micrographs per set (1 gives exemplars)
    size: int = 1024              # simulated micrograph side, px
    exemplars: int = 15
    # 1024 regions x 40 epochs = 3200 steps on 10 micrographs: 400 steps (256 x 20) left the
    # real set's encoder weak (F1 0.72-0.83 by exemplar draw; with 3200 steps 0.84-0.85)
    pretrain_regions: int = 1024
    pretrain_epochs: int = 40
    train_steps: int = 300
    device: str = "cpu"
    model: str = "tiny"           # MAE size pretrained per data set (benchmark --model)
    fast: bool = True             # also our fast setting (pick --coarse 2), same model
    student: float = 0.4          # also the student cascade (pick --student 0.4); 0 = not
    # also a model fine-tuned at this smaller input (train --input-size; 3/4 of the tiny
    # model's 64 px, about half the compute, as 160 px is for base), every window; 0 = not
    small_input: int = 48
    topaz: topaz_peer.TopazSettings = topaz_peer.TopazSettings()


def simulated_set(name: str, overrides: dict, out: Path, st: BenchSettings) -> Dataset:
    """Simulate one set: micrograph 0 gives the exemplars, the others are scored."""
    cfg = replace(MicrographSimConfig(n_micrographs=st.micrographs, shape=(st.size, st.size),
                                      seed=17), **overrides)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else \
        simulate_dataset(cfg, out)
    mics = [out / m for m in sorted(meta["micrographs"])]
    truth = read_coordinates(out / "truth.star")
    return Dataset(name, mics[:1], mics[1:], truth, truth.iloc[:0], float(meta["box_px"]))


def draw_exemplars(ds: Dataset, n: int, seed: int) -> pd.DataFrame:
    """``n`` truth particles of the exemplar micrograph, chosen by ``seed``, at least half a
    box inside the image."""
    key = micrograph_key(ds.train[0])
    pool = ds.truth[ds.truth["micrograph"].map(micrograph_key) == key]
    inside = pool[(pool["x"] > ds.box / 2) & (pool["y"] > ds.box / 2)]
    rng = np.random.default_rng(seed)
    if n > len(inside):
        log.warning("%s: %d exemplars asked for, %d particles to draw from: all of them",
                    ds.train[0], n, len(inside))
    chosen = inside.iloc[rng.choice(len(inside), size=min(n, len(inside)), replace=False)]
    return chosen.assign(micrograph=str(ds.train[0])).reset_index(drop=True)


def run_measured(cmd: List[str], log_path: Path, env: Optional[dict] = None) -> tuple:
    """Run a command; returns ``(seconds, peak resident memory MiB)`` of that process tree's
    largest process (``wait4``)."""
    start = time.perf_counter()
    with open(log_path, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd[:3])} failed; see {log_path}")
    return seconds, usage.ru_maxrss / 1024.0


def _engine(*args: str) -> List[str]:
    return [sys.executable, "-m", "fewshotpicker.cli.main", *args]


def pick_fewshot(model: Path, ds: Dataset, out: Path, device: str, coarse: int = 1,
                 student: float = 0.0, crowded: bool = False) -> dict:
    """Our picker on the test micrographs: kept picks, all candidates, time, memory, and
    the share of windows scored (below 1 in the fast settings, ``coarse`` 2 or a
    ``student`` share); ``crowded``: ``pick --crowded``."""
    seconds, rss = run_measured(_engine("pick", "--model", str(model), "--micrographs",
                                        *map(str, ds.test), "--out", str(out), "--device",
                                        device, "--candidates", "--coarse", str(coarse),
                                        "--student", str(student),
                                        *(["--crowded"] if crowded else [])),
                                out.parent / "commands.log")
    summary = json.loads((out / "summary.json").read_text())
    shares = [json.loads(p.read_text())["windows_scored"]
              for p in (out / "thresholds").glob("*.json")]
    return {"kept": read_coordinates(out / "autopick.star"),
            "all": read_coordinates(out / "candidates.star"), "seconds": seconds,
            "peak_rss_mb": rss, "gpu_mb": max(summary["peak_gpu_memory_mb"].values(),
                                               default=None),
            "windows_scored": float(np.mean(shares)), "device": device}


def pick_dog(ds: Dataset, out: Path) -> dict:
    """The DoG baseline at its noise-calibrated cutoff, and all its peaks."""
    common = ["--micrographs", *map(str, ds.test), "--diameter", str(ds.box)]
    seconds, rss = run_measured(_engine("dog", *common, "--out", str(out / "kept")),
                                out.parent / "commands.log")
    run_measured(_engine("dog", *common, "--threshold=-1e9", "--out", str(out / "all")),
                 out.parent / "commands.log")
    return {"kept": read_coordinates(out / "kept" / "autopick.star"),
            "all": read_coordinates(out / "all" / "autopick.star"), "seconds": seconds,
            "peak_rss_mb": rss, "gpu_mb": None, "device": "cpu"}


def pick_topaz(exe: Path, ds: Dataset, exemplars: pd.DataFrame, out: Path,
               st: topaz_peer.TopazSettings, run: int = 0) -> dict:
    """Topaz trained on the same exemplars; its picks above score 0 (p = 0.5) are kept.
    ``run`` > 0 trains another model beside the first (``train_run<run>``)."""
    suffix = f"_run{run}" if run else ""
    scale = topaz_peer.topaz_scale(ds.box)
    pre = out.parent.parent / "topaz_preprocessed"
    topaz_peer.preprocess(exe, ds.train + ds.test, scale, pre)
    key = micrograph_key(ds.train[0])
    expected = float((ds.truth["micrograph"].map(micrograph_key) == key).sum())
    model, train_s = topaz_peer.train(exe, pre, ds.train, exemplars, expected, scale,
                                      out / f"train{suffix}", st)
    picks, _ = topaz_peer.extract(exe, model, pre, ds.test, ds.box, scale,
                                  out / f"extract{suffix}", st)
    seconds, rss = _time_topaz_extract(exe, model, pre, ds, scale, out, st, suffix)
    return {"kept": picks[picks["score"] > 0], "all": picks, "seconds": seconds,
            "peak_rss_mb": rss, "gpu_mb": None, "train_seconds": train_s,
            "device": "cpu" if st.device < 0 else f"cuda:{st.device}"}


def _time_topaz_extract(exe: Path, model: Path, pre: Path, ds: Dataset, scale: int, out: Path,
                        st: topaz_peer.TopazSettings, suffix: str = "") -> tuple:
    radius = max(1, int(round(ds.box / 2.0 / scale)))
    cmd = [str(exe), "extract", "-m", str(model), "-r", str(radius), "-x", str(scale),
           "-d", str(st.device), "-o", str(out / f"timed{suffix}.txt")] + \
        [str(pre / Path(m).name) for m in ds.test]
    return run_measured(cmd, out.parent / "commands.log")


def best_f1(all_picks: pd.DataFrame, truth: pd.DataFrame, box: float, mics: List[str],
            cuts: int = 200) -> tuple:
    """Best F1 at IoU 0.5 over cutoffs (``cuts`` quantiles of the scores); returns ``(f1,
    cutoff)``. 40 quantiles, used until session 13, stepped over 60 candidates at a time
    among the particles and reported best F1 below F1 at the picker's own cutoff."""
    best = (0.0, float("nan"))
    if not len(all_picks):
        return best
    for cut in np.unique(np.quantile(all_picks["score"], np.linspace(0, 0.995, cuts))):
        rep = evaluate_all(all_picks[all_picks["score"] >= cut], truth, box, ("cryomae",),
                           micrographs=mics)
        f1 = rep["conventions"]["cryomae"]["pooled"]["f1"] or 0.0
        if f1 > best[0]:
            best = (f1, float(cut))
    return best


def score_picker(res: dict, ds: Dataset) -> tuple:
    """Table figures of one picker's result, and its PR curve at IoU 0.6."""
    mics = [str(m) for m in ds.test]
    keys = {micrograph_key(m) for m in mics}
    truth = ds.truth[ds.truth["micrograph"].map(micrograph_key).isin(keys)]
    kept = evaluate_all(res["kept"], truth, ds.box, ("cryomae",), micrographs=mics)
    ranked = evaluate_all(res["all"], truth, ds.box, ("hydrapicker",), micrographs=mics)
    c, h = kept["conventions"]["cryomae"]["pooled"], ranked["conventions"]["hydrapicker"]["pooled"]
    f1_best, _ = best_f1(res["all"], truth, ds.box, mics)
    row = {"precision": c["precision"] or 0.0, "recall": c["recall"] or 0.0,
           "f1": c["f1"] or 0.0, "best_f1": f1_best, "ap": h["ap"] or 0.0,
           "s_per_mic": res["seconds"] / len(mics), "peak_rss_mb": res["peak_rss_mb"],
           "gpu_mb": res["gpu_mb"], "windows_scored": res.get("windows_scored"),
           "device": res.get("device")}
    return row, h.get("curve")


def mean_of_runs(rows: List[dict]) -> dict:
    """One row from the rows of several runs of a picker on one draw: each figure that every
    run has as a number is averaged, anything else is the first run's; with more than one
    run, each run's F1 is kept under ``f1_runs``."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    row = {k: float(np.mean([r[k] for r in rows])) if all(number(r.get(k)) for r in rows)
           else v for k, v in rows[0].items()}
    if len(rows) > 1:
        row["f1_runs"] = [r["f1"] for r in rows]
    return row


def score_runs(runs: List[dict], ds: Dataset) -> tuple:
    """:func:`score_picker` over several runs of one picker: their mean row and the first
    run's PR curve."""
    scored = [score_picker(res, ds) for res in runs]
    return mean_of_runs([row for row, _ in scored]), scored[0][1]


def seed_folder(base: Path, seed: int, st: BenchSettings) -> Path:
    """Where one exemplar draw's runs live: ``seed<N>`` for the standard 15 exemplars (the
    folders of earlier runs), ``seed<N>_<K>ex`` for another count ``K``, so a run with other
    exemplars never finds another count's fine-tuning finished."""
    return base / (f"seed{seed}" if st.exemplars == 15 else f"seed{seed}_{st.exemplars}ex")


def run_seed(ds: Dataset, seed: int, base: Path, pretrained: Path, st: BenchSettings,
             topaz_exe: Optional[Path]) -> List[dict]:
    """All pickers on one data set with the exemplars of one seed."""
    out = seed_folder(base, seed, st)
    exemplars = draw_exemplars(ds, st.exemplars, seed)
    train = TrainConfig(box=ds.box, pretrained=str(pretrained), steps=st.train_steps,
                        device=st.device, seed=seed)
    finetune(train, ds.train, exemplars, out / "train")
    results = {"fewshot (ours)": pick_fewshot(out / "train", ds, out / "fewshot", st.device)}
    if ds.name in CROWDED_SETS:
        results[CROWDED] = pick_fewshot(out / "train", ds, out / "fewshot_crowded", st.device,
                                        crowded=True)
    if st.fast:
        results[FAST] = pick_fewshot(out / "train", ds, out / "fewshot_fast", st.device, coarse=2)
    if st.student > 0:
        results[f"fewshot student (--student {st.student:g})"] = pick_fewshot(
            out / "train", ds, out / "fewshot_student", st.device, student=st.student)
    if st.small_input:
        small = out / f"train_input{st.small_input}"
        finetune(replace(train, input_size=st.small_input, student_steps=0), ds.train,
                 exemplars, small)
        results[f"fewshot small input (--input-size {st.small_input})"] = pick_fewshot(
            small, ds, out / "fewshot_small_input", st.device)
    results["DoG"] = pick_dog(ds, out / "dog")
    if topaz_exe is not None:
        results["Topaz"] = [pick_topaz(topaz_exe, ds, exemplars, out / "topaz", st.topaz, run)
                            for run in range(st.topaz.runs)]
    rows, curves = [], {}
    for picker, res in results.items():
        row, curves[picker] = score_runs(res if isinstance(res, list) else [res], ds)
        rows.append({"dataset": ds.name, "seed": seed, "exemplars": len(exemplars),
                     "picker": picker, **row})
    plot_precision_recall({p: {"IoU 0.6": c} for p, c in curves.items() if c},
                          out / "precision_recall.png")
    return rows


def summarise(rows: List[dict]) -> List[dict]:
    """Mean and spread (std over seeds) of each figure per data set and picker."""
    df = pd.DataFrame(rows)
    out = []
    for (ds, picker), g in df.groupby(["dataset", "picker"], sort=False):
        row = {"dataset": ds, "picker": picker, "seeds": len(g),
               "exemplars": int(g["exemplars"].iloc[0])}
        for col in ("precision", "recall", "f1", "best_f1", "ap"):
            row[col] = float(g[col].mean())
            if col in ("f1", "ap"):
                row[f"{col}_std"] = float(g[col].std(ddof=0))
        row["device"] = str(g["device"].iloc[0])
        row["s_per_mic"] = float(g["s_per_mic"].mean())
        if g["windows_scored"].notna().any():
            row["windows_scored"] = float(g["windows_scored"].mean())
        row["peak_mb"] = float(g["gpu_mb"].max()) if g["gpu_mb"].notna().any() else \
            float(g["peak_rss_mb"].max())
        out.append(row)
    return out


def datasets(work: Path, sets: List[str], real: Optional[Path], st: BenchSettings) -> list:
    """The simulated sets named in ``sets`` (keys of SIM_SETS or 'sim' for all) and the real
    set."""
    chosen = []
    for i, (name, overrides) in enumerate(SIM_SETS.items()):
        if {"sim", "simulated"} & set(sets) or name in sets or str(i) in sets:
            chosen.append(simulated_set(name, overrides, work / f"sim{i}", st))
    if real is not None and "real" in sets:
        # all labels: exemplars are drawn from the training micrograph, scores on the test ones
        chosen.append(replace(empiar10028(real), truth=read_coordinates(real / "truth.star")))
    return chosen


def run_folder(work: Path, ds: Dataset, prefix: str, model: str = "tiny") -> Path:
    """The data set's own folder under ``work``, named after the set (not its position in
    this run's list, so runs with other ``--sets`` never share models) and, but for the
    tiny one, the model size (so models of two sizes never share a folder)."""
    name = micrograph_key(ds.name.split('(')[0].strip().replace(' ', '_'))
    return work / (f"{prefix}_{name}" if model == "tiny" else f"{prefix}_{model}_{name}")


def ensure_pretrained(ds: Dataset, base: Path, st: BenchSettings) -> Path:
    """The data set's MAE (``st.model``), pretrained once on all its micrographs; kept between
    runs in a folder named after the pretraining settings and preparation (``_film``: film
    edges taken apart, since session 18), so a change of them never reuses it."""
    cfg = PretrainConfig(model=st.model, box=ds.box, epochs=st.pretrain_epochs,
                         regions_per_micrograph=st.pretrain_regions, device=st.device, seed=0)
    film = "_film" if cfg.film_edges else ""
    out = base / f"pretrain_{st.pretrain_regions}x{st.pretrain_epochs}{film}"
    if not (out / "model.pt").exists():
        pretrain(cfg, ds.train + ds.test, out)
    return out


def run(work: Path, sets: List[str], real: Optional[Path], seeds: List[int],
        st: BenchSettings, topaz_env: Optional[Path]) -> Dict[str, list]:
    """The whole benchmark; returns ``{"rows": per seed, "summary": mean/spread}``."""
    topaz_exe = topaz_peer.ensure_topaz(topaz_env) if topaz_env else None
    rows = []
    for ds in datasets(work, sets, real, st):
        base = run_folder(work, ds, "runs", st.model)
        pretrained = ensure_pretrained(ds, base, st)
        for seed in seeds:
            log.info("%s, seed %d", ds.name, seed)
            rows += run_seed(ds, seed, base, pretrained, st, topaz_exe)
            (work / "rows.json").write_text(json.dumps(rows, indent=1))
    return {"settings": asdict(st), "rows": rows, "summary": summarise(rows),
            "topaz": topaz_peer.topaz_version(topaz_exe) if topaz_exe else None}

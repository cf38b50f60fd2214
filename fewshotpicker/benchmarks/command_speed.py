"""Whole-command picking time beside Topaz's ``extract``, measured in the same run.

``pick-speed`` times the picking path inside one process; a user waits for a
command. Here ``fewshotpicker pick`` and ``topaz extract`` each run as their
own process on the same micrographs, first on one (start-up included, what a
single micrograph costs) and then on all of them; the difference gives the
seconds per further micrograph, which is what a data set costs. Topaz runs
ResNet8 with 32 units from its general weights (the architecture the picking
benchmark trains), on micrographs its own ``preprocess`` downsampled to about
32 px per particle; that preprocessing is timed and reported apart. Our model
has random weights and a random exemplar bank: the time does not depend on
them, except through the share of windows the fast setting scores.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

from ..data.regions import Preprocess
from ..device import resolve_device
from ..io.atomic import write_text_atomic
from ..io.checkpoint import MODEL_FILE, save_checkpoint
from ..io.mrc import write_mrc
from ..models.mae import build_mae
from ..models.student import ScoreStudent, student_payload
from ..training.common import model_payload
from . import topaz_peer
from .picking import _engine, run_measured

TOPAZ_MODEL = "resnet8_u32"


def random_picking_model(out: Path, model_size: str, box: float, bank_size: int = 60) -> Path:
    """A ``train``-style model folder with random weights, a random bank and a random
    student (seed 0)."""
    torch.manual_seed(0)
    model = build_mae(model_size)
    bank = F.normalize(torch.randn(bank_size, model.cfg.embed_dim), dim=1)
    pre = Preprocess(box=box, img_size=model.cfg.img_size, film_edges=True)
    save_checkpoint(out / MODEL_FILE, model_payload(model, "finetuned", pre, {},
                                                    bank=bank, n_exemplars=bank_size // 4,
                                                    student=student_payload(ScoreStudent(), 0,
                                                                            float("nan"))))
    return out


def noise_micrographs(out: Path, n: int, shape: tuple) -> List[Path]:
    """``n`` Gaussian-noise micrographs ``shape`` (rows, cols), float32 MRC, seeded."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = out / f"noise_{i:03d}.mrc"
        if not path.exists():
            write_mrc(path, rng.normal(size=shape).astype(np.float32), pixel_size=1.0)
        paths.append(path)
    return paths


def time_ours(model: Path, micrographs: List[Path], out: Path, device: str,
              setting: List[str]) -> float:
    """Wall seconds of one ``fewshotpicker pick`` command with the ``setting`` flags on
    ``micrographs`` (into a fresh ``out``, so nothing is skipped as already picked)."""
    shutil.rmtree(out, ignore_errors=True)
    seconds, _ = run_measured(_engine("pick", "--model", str(model), "--micrographs",
                                      *map(str, micrographs), "--out", str(out), "--device",
                                      device, *setting),
                              out.parent / "commands.log")
    return seconds


def time_topaz(exe: Path, pre_dir: Path, micrographs: List[Path], box: float, scale: int,
               out: Path, gpu: int) -> float:
    """Wall seconds of one ``topaz extract`` command on the preprocessed ``micrographs``."""
    radius = max(1, int(round(box / 2.0 / scale)))
    cmd = [str(exe), "extract", "-m", TOPAZ_MODEL, "-r", str(radius), "-x", str(scale),
           "-d", str(gpu), "-o", str(out)] + [str(pre_dir / m.name) for m in micrographs]
    seconds, _ = run_measured(cmd, out.parent / "commands.log")
    return seconds


def preprocess_seconds(exe: Path, micrographs: List[Path], scale: int, pre_dir: Path) -> float:
    """Seconds Topaz's ``preprocess`` took on ``micrographs`` (run once; later runs read the
    figure recorded beside its output)."""
    record = pre_dir / "preprocess_seconds.json"
    if record.exists() and all((pre_dir / m.name).exists() for m in micrographs):
        return float(json.loads(record.read_text())["seconds"])
    shutil.rmtree(pre_dir, ignore_errors=True)
    seconds = topaz_peer.preprocess(exe, micrographs, scale, pre_dir)
    write_text_atomic(record, json.dumps({"seconds": seconds, "micrographs": len(micrographs)}))
    return seconds


def per_further(one: float, many: float, n: int) -> float:
    """Seconds per micrograph beyond the first, from a run on 1 and on ``n`` micrographs."""
    return (many - one) / (n - 1) if n > 1 else float("nan")


def run(work: Path, micrographs: List[Path], box: float, model_size: str, device: str,
        topaz_env: Path, coarse: List[int], student: float = 0.0) -> List[dict]:
    """Rows for our command at each ``coarse`` (and with ``--student`` when > 0) and for
    Topaz: seconds on one micrograph, on all, per further one, and the ratio of ours to
    Topaz on each."""
    work.mkdir(parents=True, exist_ok=True)
    n = len(micrographs)
    model = random_picking_model(work / "model", model_size, box)
    exe = topaz_peer.ensure_topaz(topaz_env)
    scale = topaz_peer.topaz_scale(box)
    pre_dir = work / "topaz_preprocessed"
    prep = preprocess_seconds(exe, micrographs, scale, pre_dir)
    dev = resolve_device(device)
    device, gpu = str(dev), -1 if dev.type == "cpu" else (dev.index or 0)
    topaz = [time_topaz(exe, pre_dir, micrographs[:k], box, scale,
                        work / f"topaz_{k}.txt", gpu) for k in (1, n)]
    rows = [{"command": f"topaz extract ({TOPAZ_MODEL}, 1/{scale} size)",
             "s_one_mic": topaz[0], f"s_{n}_mics": topaz[1],
             "s_per_further_mic": per_further(*topaz, n), "ratio_one": 1.0,
             "ratio_further": 1.0, "preprocess_s": prep}]
    settings = [["--coarse", str(c)] for c in coarse] + \
        ([["--student", str(student)]] if student > 0 else [])
    for setting in settings:
        tag = "".join(setting).replace("--", "_")
        ours = [time_ours(model, micrographs[:k], work / f"pick{tag}_{k}", device, setting)
                for k in (1, n)]
        further = per_further(*ours, n)
        rows.append({"command": f"fewshotpicker pick ({model_size}, {' '.join(setting)})",
                     "s_one_mic": ours[0], f"s_{n}_mics": ours[1],
                     "s_per_further_mic": further, "ratio_one": ours[0] / topaz[0],
                     "ratio_further": further / rows[0]["s_per_further_mic"],
                     "preprocess_s": None})
    return rows

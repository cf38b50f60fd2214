"""Topaz as a peer picker: installed into its own environment, trained on the same exemplars.

Topaz (Bepler et al. 2019, ``topaz-em`` on PyPI) is run through its command
line, never imported: it lives in a virtual environment of its own so its
pinned dependencies cannot disturb ours. The steps follow its tutorial:
``preprocess`` (downsample + GMM normalisation), ``train`` (PU learning with
the expected particle count, ResNet8 from its general pretrained weights)
on the micrographs and exemplars our picker gets, and ``extract`` with the
particle radius as non-maximum suppression.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pandas as pd

from ..io.atomic import write_text_atomic
from ..io.coordinates import micrograph_key

log = logging.getLogger("fewshotpicker")

TOPAZ_REQUIREMENT = "topaz-em>=0.2.5,<0.4"


@dataclass(frozen=True)
class TopazSettings:
    """How Topaz is trained: updates = epochs x epoch_size (its default is 10 x 1000)."""
    epochs: int = 5
    epoch_size: int = 100
    model: str = "resnet8"
    units: int = 32
    device: int = -1          # Topaz's own convention: -1 = CPU, N = GPU N
    threads: int = 0
    # independent trainings per exemplar draw, their figures averaged: Topaz takes no training
    # seed, and its F1 at p > 0.5 moved by up to 0.20 between two runs of one draw
    runs: int = 1

    @property
    def updates(self) -> int:
        return self.epochs * self.epoch_size

    def model_prefix(self) -> str:
        """File prefix of a model trained this way: a rerun with other settings in the same
        folder trains its own model instead of reusing (or overwriting) this one."""
        return f"model_{self.model}_{self.units}units_{self.updates}updates"


def ensure_topaz(env_dir: Path) -> Path:
    """The ``topaz`` executable of ``env_dir``, creating the environment on first use."""
    exe = env_dir / "bin" / "topaz"
    if exe.exists():
        return exe
    log.info("installing %s into %s (once)", TOPAZ_REQUIREMENT, env_dir)
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    done = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", TOPAZ_REQUIREMENT],
                          capture_output=True, text=True)
    if done.returncode or not exe.exists():
        raise RuntimeError(f"Could not install {TOPAZ_REQUIREMENT} into {env_dir}: "
                           f"{done.stderr.strip()[-500:]}")
    return exe


def topaz_scale(box: float) -> int:
    """Downsampling that brings the particle to about 32 px, inside ResNet8's 71 px field."""
    return max(1, int(round(box / 32.0)))


def _run(cmd: List[str], log_path: Path) -> float:
    """Run one Topaz command, its output appended to ``log_path``; returns seconds."""
    start = time.perf_counter()
    with open(log_path, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"Topaz failed ({' '.join(cmd[:2])}); see {log_path}")
    return time.perf_counter() - start


def preprocess(topaz: Path, micrographs: List[Path], scale: int, out: Path) -> float:
    """Downsample and normalise micrographs into ``out`` (names kept); returns seconds."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [str(m) for m in micrographs if not (out / Path(m).name).exists()]
    if not todo:
        return 0.0
    return _run([str(topaz), "preprocess", "-s", str(scale), "-d", "-1", "-o", str(out)] + todo,
                out / "topaz.log")


def write_targets(exemplars: pd.DataFrame, scale: int, path: Path) -> Path:
    """Topaz training targets: ``image_name x_coord y_coord`` in downsampled pixels."""
    rows = ["image_name\tx_coord\ty_coord"]
    for name, x, y in zip(exemplars["micrograph"], exemplars["x"], exemplars["y"]):
        rows.append(f"{micrograph_key(name)}\t{int(round(x / scale))}\t{int(round(y / scale))}")
    return write_text_atomic(path, "\n".join(rows) + "\n")


def train(topaz: Path, pre_dir: Path, train_mics: List[Path], exemplars: pd.DataFrame,
          expected: float, scale: int, out: Path, settings: TopazSettings) -> tuple:
    """Train Topaz on the exemplars; returns ``(model path, seconds)``.

    A model already trained in ``out`` with the same settings is reused
    (seconds then ``nan``), so a benchmark can be rerun without retraining.
    """
    prefix = out / settings.model_prefix()
    model = Path(f"{prefix}_epoch{settings.epochs}.sav")
    if model.exists():
        return model, float("nan")
    out.mkdir(parents=True, exist_ok=True)
    images = ["image_name\tpath"] + [f"{micrograph_key(m)}\t{pre_dir / Path(m).name}"
                                     for m in train_mics]
    write_text_atomic(out / "train_images.txt", "\n".join(images) + "\n")
    write_targets(exemplars, scale, out / "train_targets.txt")
    seconds = _run([str(topaz), "train", "--train-images", str(out / "train_images.txt"),
                    "--train-targets", str(out / "train_targets.txt"),
                    "-n", str(expected), "--radius", "3", "--model", settings.model,
                    "--units", str(settings.units), "--num-epochs", str(settings.epochs),
                    "--epoch-size", str(settings.epoch_size), "--num-workers", "0",
                    "-j", str(settings.threads), "-d", str(settings.device),
                    "--save-prefix", str(prefix), "-o", f"{prefix}_train.txt"],
                   out / "topaz.log")
    return model, seconds


def extract(topaz: Path, model: Path, pre_dir: Path, micrographs: List[Path], box: float,
            scale: int, out: Path, settings: TopazSettings,
            threshold: float = -6.0) -> tuple:
    """Extract picks (radius NMS of the particle radius) from the test micrographs.

    Returns ``(picks table with micrograph/x/y/score in full-size pixels,
    seconds)``. Names are mapped back to the given micrograph paths.
    """
    out.mkdir(parents=True, exist_ok=True)
    radius = max(1, int(round(box / 2.0 / scale)))
    paths = [str(pre_dir / Path(m).name) for m in micrographs]
    seconds = _run([str(topaz), "extract", "-m", str(model), "-r", str(radius),
                    "-t", str(threshold), "-x", str(scale), "-d", str(settings.device),
                    "-j", str(settings.threads), "-o", str(out / "picks.txt")] + paths,
                   out / "topaz.log")
    table = pd.read_csv(out / "picks.txt", sep="\t")
    by_key = {micrograph_key(m): str(m) for m in micrographs}
    picks = pd.DataFrame({"micrograph": table["image_name"].map(lambda n: by_key[str(n)]),
                          "x": table["x_coord"].astype(float),
                          "y": table["y_coord"].astype(float),
                          "score": table["score"].astype(float)})
    return picks, seconds


def topaz_version(topaz: Path) -> Optional[str]:
    """Installed Topaz version, or None."""
    done = subprocess.run([str(topaz), "--version"], capture_output=True, text=True)
    return (done.stdout or done.stderr).strip().splitlines()[-1] if done.returncode == 0 else None

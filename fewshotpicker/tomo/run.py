"""``pick3d``: train the detector on a few labels (or load one), pick every tomogram, write
RELION 5 and RELION 4 coordinate files."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pandas as pd
import torch

from ..config import Pick3dConfig, to_dict
from ..device import resolve_device
from ..errors import InputError
from ..io.checkpoint import MODEL_FILE, load_checkpoint, load_state_strict, \
    resolve_model_file, save_checkpoint
from ..io.coordinates import empty_coordinates, micrograph_key, write_tomo_coordinates
from .data import labels_per_tomogram, open_tomogram
from .detect import detect, suppress_across_classes, tomogram_cutoff
from .plots import plot_slices
from .train import train_detector
from .unet3d import UNET_SIZES, UNet3d, UNetConfig

log = logging.getLogger("fewshotpicker")
KIND = "tomo"
MIN_LABELS = 2


def check_settings(cfg: Pick3dConfig, labels: Optional[pd.DataFrame], source: str) -> None:
    """Refuse missing box, unknown size, too few labels, a bad threshold."""
    if cfg.box <= 0:
        raise InputError("The particle diameter (--box, voxels) is required.")
    if cfg.size not in UNET_SIZES:
        raise InputError(f"Size {cfg.size!r} is not one of {', '.join(UNET_SIZES)}.")
    if not cfg.model and (labels is None or len(labels) < MIN_LABELS):
        raise InputError(f"{source}: holds {0 if labels is None else len(labels)} label(s); "
                         f"at least {MIN_LABELS} are needed to train.")
    if cfg.threshold != "auto":
        try:
            ok = 0 < float(cfg.threshold) < 1
        except ValueError:
            ok = False
        if not ok:
            raise InputError(f"The threshold must be 'auto' or a probability between 0 and 1, "
                             f"not {cfg.threshold!r}.")


def load_detector(path: str, device: torch.device) -> tuple:
    """A trained detector and its payload from a ``pick3d`` model."""
    payload = load_checkpoint(path, kinds=[KIND], map_location="cpu")
    model = UNet3d(UNetConfig(**payload["unet"]))
    load_state_strict(model, payload["state_dict"], resolve_model_file(path), "a 3D detector")
    return model.to(device), payload


def obtain_detector(cfg: Pick3dConfig, tomos, labels, out_dir: Path, device, source: str,
                    progress) -> tuple:
    """Load ``cfg.model`` or train one; returns ``(model, classes, history)``."""
    if cfg.model:
        model, payload = load_detector(cfg.model, device)
        return model, payload["n_classes"], []
    per_tomo = labels_per_tomogram(labels, tomos, source)
    n_classes = int(max(k.max() for _, k in per_tomo.values()))
    model, history = train_detector(cfg, tomos, per_tomo, n_classes, out_dir, device, progress)
    save_checkpoint(out_dir / MODEL_FILE, {
        "kind": KIND, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "unet": asdict(model.cfg), "n_classes": n_classes, "box": cfg.box,
        "config": to_dict(cfg)})
    return model, n_classes, history


def pick_all(model, tomos, cfg: Pick3dConfig, device, progress) -> tuple:
    """Picks of every tomogram above its cutoff; returns ``(picks, per-tomogram summary)``."""
    radius = max(1, int(round(cfg.min_distance or cfg.box / 2.0)))
    frames, summary = [], {}
    for tomo in (progress(tomos, desc="pick") if progress else tomos):
        start = time.perf_counter()
        cands = suppress_across_classes(detect(model, tomo, radius, cfg.tile, device), radius)
        cut = tomogram_cutoff(cands["score"].to_numpy(), cfg.threshold) if len(cands) else 0.5
        kept = cands[cands["score"] >= cut].assign(micrograph=str(tomo.path))
        frames.append(kept)
        summary[tomo.key] = {"picks": int(len(kept)), "candidates": int(len(cands)),
                             "cutoff": cut, "seconds": time.perf_counter() - start,
                             "per_class": {int(k): int(v) for k, v in
                                           kept["class"].value_counts().items()}}
    picks = pd.concat(frames, ignore_index=True) if frames else empty_coordinates(True)
    return picks, summary


def write_outputs(picks: pd.DataFrame, tomos, box: float, out_dir: Path) -> dict:
    """``picks3d.star`` (RELION 5, centred Å), ``picks3d_relion4.star`` (voxels) and
    ``slices/<tomogram>.png`` (slabs with the picks)."""
    keys = picks["micrograph"].astype(str).map(micrograph_key) if len(picks) else pd.Series(
        dtype=str)
    for tomo in tomos:
        plot_slices(tomo, picks[keys == tomo.key], box, out_dir / "slices" / f"{tomo.key}.png")
    shapes = {t.key: t.shape for t in tomos}
    voxel = next((t.voxel_size for t in tomos if t.voxel_size), 0.0)
    files = {"relion4": str(write_tomo_coordinates(picks, out_dir / "picks3d_relion4.star",
                                                   shapes, voxel, relion=4))}
    if voxel:
        files["relion5"] = str(write_tomo_coordinates(picks, out_dir / "picks3d.star", shapes,
                                                      voxel, relion=5))
    else:
        log.warning("the tomograms carry no voxel size: RELION 5 coordinates (Å) not written.")
    return files


def pick3d(cfg: Pick3dConfig, tomograms: List[Path], labels: Optional[pd.DataFrame],
           out_dir: Path, source: str = "labels", progress: Optional[Callable] = None) -> dict:
    """The whole command; returns the summary."""
    out_dir = Path(out_dir)
    check_settings(cfg, labels, source)
    device = resolve_device(cfg.device)
    tomos = [open_tomogram(p) for p in tomograms]
    start = time.perf_counter()
    model, n_classes, history = obtain_detector(cfg, tomos, labels, out_dir, device, source,
                                                progress)
    train_s = time.perf_counter() - start
    picks, per_tomo = pick_all(model, tomos, cfg, device, progress)
    files = write_outputs(picks, tomos, cfg.box, out_dir)
    log.info("%d picks in %d tomogram(s); %s", len(picks), len(tomos), files.get(
        "relion5", files["relion4"]))
    return {"picks": int(len(picks)), "classes": n_classes, "per_tomogram": per_tomo,
            "train_seconds": train_s, "semi": cfg.semi, "device": str(device),
            "final_loss": history[-1]["loss"] if history else None, "files": files,
            "seconds_per_tomogram": float(np.mean([v["seconds"] for v in per_tomo.values()]))}

"""``pick3d``: train the detector on a few labels (or load one), pick every tomogram, write
RELION 5 and RELION 4 coordinate files."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree

from ..config import Pick3dConfig, check_ranges, to_dict
from ..device import resolve_device
from ..errors import InputError
from ..io.checkpoint import MODEL_FILE, load_checkpoint, load_state_strict, \
    resolve_model_file, save_checkpoint
from ..io.coordinates import empty_coordinates, micrograph_key, write_tomo_coordinates
from .data import labels_per_tomogram, open_tomograms
from .detect import detect, suppress_across_classes, tomogram_cutoff
from .plots import plot_slices
from .species import class_prototypes, nearest_species, profile_radius, radial_profiles
from .train import train_detector
from .unet3d import UNET_SIZES, UNet3d, UNetConfig

log = logging.getLogger("fewshotpicker")
KIND = "tomo"
MIN_LABELS = 2
SPECIES_RULES = ("profile", "network")


def check_settings(cfg: Pick3dConfig, labels: Optional[pd.DataFrame], source: str) -> None:
    """Refuse missing box, unknown size, too few labels, a bad threshold."""
    check_ranges(cfg)
    if cfg.box <= 0:
        raise InputError("The particle diameter (--box, voxels) is required.")
    if cfg.size not in UNET_SIZES:
        raise InputError(f"Size {cfg.size!r} is not one of {', '.join(UNET_SIZES)}.")
    if not cfg.model and (labels is None or len(labels) < MIN_LABELS):
        raise InputError(f"{source}: holds {0 if labels is None else len(labels)} label(s); "
                         f"at least {MIN_LABELS} are needed to train.")
    if cfg.species_by not in SPECIES_RULES:
        raise InputError(f"--species-by must be one of {', '.join(SPECIES_RULES)}, "
                         f"not {cfg.species_by!r}.")
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


def label_prototypes(tomos, per_tomo: dict, box: float) -> dict:
    """Radial-profile prototypes of the labelled species (see :mod:`.species`):
    ``{"radius": R, "prototypes": {class: [R + 1 floats]}}``."""
    radius = profile_radius(box)
    by_key = {t.key: t for t in tomos}
    profiles, classes = [], []
    for key, (centres, klass) in per_tomo.items():
        profiles.append(radial_profiles(by_key[key], centres, radius))
        classes.append(klass)
    protos = class_prototypes(np.concatenate(profiles), np.concatenate(classes))
    return {"radius": radius, "prototypes": {k: v.tolist() for k, v in protos.items()}}


def obtain_detector(cfg: Pick3dConfig, tomos, per_tomo: Optional[dict], out_dir: Path,
                    device, progress) -> tuple:
    """Load ``cfg.model`` or train one on the labels ``per_tomo``; returns ``(model,
    classes, species prototypes, history)``."""
    if cfg.model:
        model, payload = load_detector(cfg.model, device)
        return model, payload["n_classes"], payload.get("species"), []
    n_classes = int(max(k.max() for _, k in per_tomo.values()))
    model, history = train_detector(cfg, tomos, per_tomo, n_classes, out_dir, device, progress)
    species = label_prototypes(tomos, per_tomo, cfg.box) if n_classes > 1 else None
    save_checkpoint(out_dir / MODEL_FILE, {
        "kind": KIND, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "unet": asdict(model.cfg), "n_classes": n_classes, "box": cfg.box,
        "species": species, "config": to_dict(cfg)})
    return model, n_classes, species, history


def assign_species(cands: pd.DataFrame, tomo, species: Optional[dict]) -> pd.DataFrame:
    """Replace the detector's species by the nearest labelled radial profile."""
    if not species or not len(cands):
        return cands
    protos = {int(k): np.asarray(v) for k, v in species["prototypes"].items()}
    profiles = radial_profiles(tomo, cands[["x", "y", "z"]].to_numpy(), species["radius"])
    return cands.assign(**{"class": nearest_species(profiles, protos)})


def off_labels(cands: pd.DataFrame, centres: Optional[np.ndarray], radius: float) -> np.ndarray:
    """Mask ``(n,)`` of the candidates farther than ``radius`` from every labelled centre
    ``(m, 3)`` (x, y, z voxels)."""
    if centres is None or not len(centres) or not len(cands):
        return np.ones(len(cands), bool)
    d, _ = cKDTree(centres).query(cands[["x", "y", "z"]].to_numpy(float))
    return d > radius


def pick_all(model, tomos, cfg: Pick3dConfig, device, progress,
             species: Optional[dict] = None, labelled: Optional[dict] = None) -> tuple:
    """Picks of every tomogram above its cutoff, their species from ``species``
    prototypes when given (else the detector's channels); returns ``(picks,
    per-tomogram summary)``.

    ``labelled`` ``{tomogram key: (centres, classes)}``: the candidates on labelled
    particles stay picks but are left out of the cutoff's mixture, because the
    detector has learnt them by heart (measured: with one label per species, the
    labels' peaks were the mixture's top class and the cutoff kept only them).
    """
    radius = max(1, int(round(cfg.min_distance or cfg.box / 2.0)))
    frames, summary = [], {}
    for tomo in (progress(tomos, desc="pick") if progress else tomos):
        start = time.perf_counter()
        cands = suppress_across_classes(detect(model, tomo, radius, cfg.tile, device), radius)
        cands = assign_species(cands, tomo, species)
        fit = cands[off_labels(cands, (labelled or {}).get(tomo.key, (None,))[0], radius)]
        cut = tomogram_cutoff(fit["score"].to_numpy(), cfg.threshold) if len(fit) else 0.5
        kept = cands[cands["score"] >= cut].assign(micrograph=tomo.name or str(tomo.path))
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
           out_dir: Path, source: str = "labels", progress: Optional[Callable] = None,
           names: Optional[Dict[str, str]] = None) -> dict:
    """The whole command; returns the summary. ``names`` ``{absolute path: RELION name}``
    names tomograms apart from their files (RELION 5's rlnTomoName); picks carry it."""
    out_dir = Path(out_dir)
    check_settings(cfg, labels, source)
    device = resolve_device(cfg.device)
    tomos = open_tomograms(tomograms, names)
    start = time.perf_counter()
    labelled = labels_per_tomogram(labels, tomos, source) if labels is not None and len(
        labels) else None
    model, n_classes, species, history = obtain_detector(cfg, tomos, labelled, out_dir, device,
                                                         progress)
    train_s = time.perf_counter() - start
    by_profile = species if cfg.species_by == "profile" else None
    picks, per_tomo = pick_all(model, tomos, cfg, device, progress, by_profile, labelled)
    files = write_outputs(picks, tomos, cfg.box, out_dir)
    log.info("%d picks in %d tomogram(s); %s", len(picks), len(tomos), files.get(
        "relion5", files["relion4"]))
    return {"picks": int(len(picks)), "classes": n_classes, "per_tomogram": per_tomo,
            "species_by": cfg.species_by if n_classes > 1 else None,
            "train_seconds": train_s, "semi": cfg.semi, "device": str(device),
            "final_loss": history[-1]["loss"] if history else None, "files": files,
            "seconds_per_tomogram": float(np.mean([v["seconds"] for v in per_tomo.values()]))}

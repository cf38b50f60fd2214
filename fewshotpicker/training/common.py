"""Pieces shared by the runners: model loading, region banks, augmentation, settings."""
from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import numpy as np
import torch

from ..errors import InputError
from ..io.checkpoint import load_checkpoint, load_state_strict, resolve_model_file
from ..io.mrc import read_image
from ..models.mae import MAEConfig, MaskedAutoencoder
from ..data.regions import Preprocess, crop_windows, prepare_micrograph, random_centres
from .loop import LoopSettings

log = logging.getLogger("fewshotpicker")


def loop_settings(cfg, steps: int) -> LoopSettings:
    """Loop settings from a Pretrain/Train config and a step count."""
    return LoopSettings(steps=steps, lr=cfg.lr, min_lr=cfg.min_lr,
                        warmup_steps=max(1, int(round(cfg.warmup * steps))),
                        weight_decay=cfg.weight_decay, checkpoint_every=cfg.checkpoint_every)


def load_mae(path: str | Path, device: torch.device,
             kinds: Iterable[str] = ("pretrained", "finetuned")) -> tuple:
    """Rebuild an MAE from a model checkpoint; returns ``(model, payload)``."""
    payload = load_checkpoint(path, kinds=kinds, map_location="cpu")
    if "model" not in payload:
        raise InputError(f"{resolve_model_file(path)}: holds no MAE architecture.")
    model = MaskedAutoencoder(MAEConfig(**payload["model"]))
    load_state_strict(model, payload["state_dict"], resolve_model_file(path),
                      "the MAE it describes")
    return model.to(device), payload


def model_payload(model: MaskedAutoencoder, kind: str, pre: Preprocess, config: dict,
                  **extra) -> dict:
    """What a ``model.pt`` holds: weights, architecture, preprocessing, run config."""
    return {"kind": kind, "state_dict": {k: v.detach().cpu() for k, v in
                                         model.state_dict().items()},
            "model": asdict(model.cfg), "preprocess": asdict(pre), "config": config, **extra}


def region_bank(paths: List[Path], pre: Preprocess, per_micrograph: int, seed: int,
                device: torch.device, progress: Optional[Callable] = None) -> tuple:
    """Random regions from every readable micrograph: ``(n, 1, s, s)`` on the CPU, and
    ``{path: reason}`` of the micrographs skipped as unreadable (each logged).

    Regions lie at least half a box inside each (prepared) micrograph; the
    positions depend only on ``seed`` and the micrograph's place in the list.
    Raises InputError when no micrograph can be read.
    """
    out, skipped = [], {}
    for i, path in enumerate(progress(paths) if progress else paths):
        try:
            image = read_image(path, pre.box).data
        except InputError as exc:  # one bad exposure among many does not stop pretraining
            skipped[str(path)] = str(exc)
            log.warning("skipped: %s", exc)
            continue
        prepared = prepare_micrograph(image, pre, device)
        rng = np.random.default_rng([seed, i])
        centres = random_centres(tuple(prepared.shape), per_micrograph, rng,
                                 margin=pre.img_size / 2)
        out.append(crop_windows(prepared, torch.as_tensor(centres, dtype=torch.float32,
                                                          device=device), pre.img_size).cpu())
    if not out:
        raise InputError(f"None of the {len(paths)} micrographs could be read; the first "
                         f"problem: {next(iter(skipped.values()))}")
    return torch.cat(out), skipped


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random 90-degree rotation and flip per region of ``(b, 1, s, s)``."""
    k = torch.as_tensor(rng.integers(0, 4, len(x)), device=x.device)
    flip = torch.as_tensor(rng.integers(0, 2, len(x)).astype(bool), device=x.device)
    out = torch.where(flip[:, None, None, None], x.flip(-1), x)
    for turns in range(1, 4):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(out[sel], turns, dims=(-2, -1))
    return out


def epoch_batches(n: int, batch: int) -> int:
    return max(1, math.ceil(n / batch))

"""MAE pretraining on random regions of unlabeled micrographs (stage 1 of CryoMAE)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from ..config import PretrainConfig, to_dict
from ..data.regions import Preprocess
from ..device import autocast, resolve_device
from ..io.checkpoint import MODEL_FILE, save_checkpoint
from ..losses import masked_mse
from ..models.mae import build_mae
from .common import augment, epoch_batches, loop_settings, model_payload, region_bank
from .loop import inputs_fingerprint, step_generator, train

log = logging.getLogger("fewshotpicker")
# below this many steps the tiny encoder may be weak: on EMPIAR-10028, 400 steps gave F1
# 0.72-0.83 depending on the exemplars drawn, 3200 steps 0.84-0.85 (1280 sufficed on
# simulated sets; 4x longer there and 2x on EMPIAR-10028 moved F1 by +0.010 and +0.005 and
# AP by -0.007 and -0.025: docs/design-notes.md, session 24)
ENOUGH_STEPS = 1000


def warn_if_short(steps: int, regions: int, cfg: PretrainConfig) -> None:
    """Say so when a pretraining is too short to give a good encoder, and how to lengthen it."""
    if steps < ENOUGH_STEPS:
        log.warning("pretraining runs only %d steps (%d regions, %d epochs, batch %d); "
                    "on real micrographs 400 steps gave a weak encoder and 3200 a good one, so "
                    "consider more epochs or more regions per micrograph.", steps, regions,
                    cfg.epochs, cfg.batch_size)


def pretrain_step_fn(model, bank: torch.Tensor, cfg: PretrainConfig, device: torch.device,
                     forward: Callable) -> Callable:
    """``step -> (loss, metrics)``: one batch of the epoch's permutation, augmented, masked."""
    per_epoch = epoch_batches(len(bank), cfg.batch_size)

    def step_fn(step: int):
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(bank))
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        x = augment(bank[torch.as_tensor(idx)].to(device), np.random.default_rng([cfg.seed,
                                                                                 step, 1]))
        with autocast(device):
            pred, mask, _ = forward(x, cfg.mask_ratio, step_generator(cfg.seed, step, device))
            loss = masked_mse(pred, model.target(x), mask)
        return loss, {}

    return step_fn


def pretrain(cfg: PretrainConfig, micrographs: List[Path], out_dir: Path,
             progress: Optional[Callable] = None) -> dict:
    """Pretrain an MAE; writes ``model.pt``, ``checkpoint.pt``, ``losses.json/png``."""
    out_dir, micrographs = Path(out_dir), [Path(m) for m in micrographs]
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_mae(cfg.model).to(device)
    pre = Preprocess(box=cfg.box or model.cfg.img_size, img_size=model.cfg.img_size,
                     highpass=cfg.highpass, lowpass=cfg.lowpass,
                     film_edges=cfg.film_edges)
    log.info("pretraining a %s MAE on %d micrographs (%d regions each, box %.0f px -> %d px) "
             "on %s", cfg.model, len(micrographs), cfg.regions_per_micrograph, pre.box,
             pre.img_size, device)
    bank, skipped = region_bank(micrographs, pre, cfg.regions_per_micrograph, cfg.seed, device,
                                (lambda it: progress(it, desc="regions")) if progress else None)
    bank = bank.to(device)
    forward = torch.compile(model) if cfg.compile else model
    steps = cfg.epochs * epoch_batches(len(bank), cfg.batch_size)
    warn_if_short(steps, len(bank), cfg)
    history = train(model, pretrain_step_fn(model, bank, cfg, device, forward),
                    loop_settings(cfg, steps), out_dir,
                    {**to_dict(cfg), "inputs": inputs_fingerprint(m.stem for m in micrographs)},
                    "MAE pretraining",
                    (lambda it, total: progress(it, desc="pretrain", total=total))
                    if progress else None)
    save_checkpoint(out_dir / MODEL_FILE, model_payload(model, "pretrained", pre, to_dict(cfg)))
    return {"steps": steps, "regions": int(len(bank)), "final_loss": history[-1]["loss"],
            "device": str(device), "skipped": skipped}

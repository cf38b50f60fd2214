"""MAE pretraining on random regions of unlabeled micrographs (stage 1 of CryoMAE)."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import PretrainConfig, to_dict
from ..data.regions import Preprocess
from ..device import autocast
from ..io.checkpoint import MODEL_FILE, save_checkpoint
from ..losses import masked_mse
from ..models.mae import build_mae
from .common import augment, epoch_batches, loop_settings, model_payload, region_bank
from .distributed import Launch, finish, shard_rows, shared_bank, start
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
                     forward: Callable, launch: Launch = Launch()) -> Callable:
    """``step -> (loss, metrics)``: one batch of the epoch's permutation, augmented, masked.

    The batch, its augmentation and its masking noise depend only on ``(seed, step)``;
    with several processes each computes its rows of that batch (:func:`shard_rows`).
    """
    per_epoch = epoch_batches(len(bank), cfg.batch_size)

    def step_fn(step: int):
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(bank))
        idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
        rows, weight = shard_rows(len(idx), launch)
        x = augment(bank[torch.as_tensor(idx)].to(device), np.random.default_rng([cfg.seed,
                                                                                 step, 1]))
        gen = step_generator(cfg.seed, step, device)
        noise = torch.rand(len(idx), model.num_patches, generator=gen, device=gen.device)
        x = x[rows]
        with autocast(device):
            pred, mask, _ = forward(x, cfg.mask_ratio, noise=noise[rows])
            loss = masked_mse(pred, model.target(x), mask)
        return loss * weight, {}

    return step_fn


def distributed_forward(model, device: torch.device, launch: Launch) -> torch.nn.Module:
    """The model wrapped for gradient exchange between processes (itself with one)."""
    if not launch.active:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                   else None)


def pretraining_micrographs(micrographs: List[Path], cfg: PretrainConfig) -> List[Path]:
    """The micrographs whose regions are drawn, in their given order: all of them, or when
    they would give more than ``cfg.max_regions`` regions, a draw (seeded by ``cfg.seed``)
    of as many as give that many. The regions stay in memory (on the device too) for the
    whole run: 20000 regions of the 224 px input of ``small`` or ``base`` are 4 GB; the
    160000 of 5000 micrographs would be 32 GB."""
    if not cfg.max_regions or len(micrographs) * cfg.regions_per_micrograph <= cfg.max_regions:
        return micrographs
    n = max(1, cfg.max_regions // cfg.regions_per_micrograph)
    drawn = np.sort(np.random.default_rng([cfg.seed, 17]).choice(len(micrographs), n,
                                                                  replace=False))
    log.info("pretraining on %d of the %d micrographs, drawn, so that %d regions each stay "
             "within --max-regions %d", n, len(micrographs), cfg.regions_per_micrograph,
             cfg.max_regions)
    return [micrographs[int(i)] for i in drawn]


def pretrain(cfg: PretrainConfig, micrographs: List[Path], out_dir: Path,
             progress: Optional[Callable] = None, launch: Launch = Launch()) -> dict:
    """Pretrain an MAE; writes ``model.pt``, ``checkpoint.pt``, ``losses.json/png``.

    ``launch``: this process's place among several started by torchrun
    (:mod:`.distributed`); rank 0 writes every file, and passes ``progress``.
    """
    out_dir, micrographs = Path(out_dir), [Path(m) for m in micrographs]
    if len(micrographs) * cfg.regions_per_micrograph <= cfg.max_regions:
        cfg = replace(cfg, max_regions=0)  # recorded as what it does: all of them
    micrographs = pretraining_micrographs(micrographs, cfg)
    device = start(launch, cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_mae(cfg.model).to(device)
    pre = Preprocess(box=cfg.box or model.cfg.img_size, img_size=model.cfg.img_size,
                     highpass=cfg.highpass, lowpass=cfg.lowpass,
                     film_edges=cfg.film_edges)
    log.info("pretraining a %s MAE on %d micrographs (%d regions each, box %.0f px -> %d px) "
             "on %s%s", cfg.model, len(micrographs), cfg.regions_per_micrograph, pre.box,
             pre.img_size, device, f", {launch.world} processes" if launch.active else "")
    bank, skipped = shared_bank(
        lambda: region_bank(micrographs, pre, cfg.regions_per_micrograph, cfg.seed, device,
                            (lambda it: progress(it, desc="regions")) if progress else None),
        out_dir / "regions.npy", launch)
    bank = bank.to(device)
    forward = distributed_forward(model, device, launch)
    forward = torch.compile(forward) if cfg.compile else forward
    steps = cfg.epochs * epoch_batches(len(bank), cfg.batch_size)
    warn_if_short(steps, len(bank), cfg)
    history = train(model, pretrain_step_fn(model, bank, cfg, device, forward, launch),
                    loop_settings(cfg, steps), out_dir,
                    {**to_dict(cfg), "inputs": inputs_fingerprint(m.stem for m in micrographs)},
                    "MAE pretraining",
                    (lambda it, total: progress(it, desc="pretrain", total=total))
                    if progress else None, launch)
    if launch.main:
        save_checkpoint(out_dir / MODEL_FILE, model_payload(model, "pretrained", pre,
                                                            to_dict(cfg)))
    finish(launch)
    return {"steps": steps, "regions": int(len(bank)), "final_loss": history[-1]["loss"],
            "device": str(device), "processes": launch.world, "skipped": skipped}

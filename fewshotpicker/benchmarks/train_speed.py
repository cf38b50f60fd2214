"""Training speed: optimisation steps per second of pretraining and fine-tuning.

Runs the real step functions on random data already on the device (the
engine keeps its region banks there), after a warm-up, and prints steps/s,
regions/s and the achieved encoder+decoder TFLOP/s estimate.
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from ..config import PretrainConfig, TrainConfig
from ..device import resolve_device
from ..models.mae import build_mae
from ..training.finetune import finetune_step_fn
from ..training.pretrain import pretrain_step_fn
from ..data.regions import view_window_size


def mae_flops_per_region(model) -> float:
    """Approximate training FLOPs per region (forward + backward = 3 x forward).

    A transformer block costs about 24 d^2 + 4 n d FLOPs per token (n tokens).
    """
    c = model.cfg
    n_all = model.num_patches + 1
    n_enc = int(model.num_patches * 0.25) + 1
    enc = c.depth * n_enc * (24 * c.embed_dim ** 2 + 4 * n_enc * c.embed_dim)
    dec = c.decoder_depth * n_all * (24 * c.decoder_embed_dim ** 2 + 4 * n_all *
                                     c.decoder_embed_dim)
    return 3.0 * (enc + dec)


def _time_steps(model, step_fn, steps: int, warmup: int, device) -> float:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        loss, _ = step_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start)


def run(size: str = "tiny", device: str = "auto", batch: int = 128, steps: int = 10,
        compile_model: bool = False) -> dict:
    """Steps per second of the pretraining and fine-tuning steps of a model size."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = build_mae(size).to(dev)
    s = model.cfg.img_size
    forward = torch.compile(model) if compile_model else model
    bank = torch.randn(batch * 4, 1, s, s, device=dev)
    pre_cfg = replace(PretrainConfig(model=size, batch_size=batch), device=device)
    pre_sps = _time_steps(model, pretrain_step_fn(model, bank, pre_cfg, dev, forward), steps,
                          3, dev)
    ft_cfg = TrainConfig(box=float(s), model=size)
    big = torch.randn(15, 1, view_window_size(s), view_window_size(s), device=dev)
    pool = torch.randn(600, 1, s, s, device=dev)
    ft_sps = _time_steps(model, finetune_step_fn(model, big, pool, ft_cfg, dev, forward),
                         steps, 3, dev)
    flops = mae_flops_per_region(model)
    return {"model": size, "device": str(dev) if dev.type == "cpu"
            else torch.cuda.get_device_name(dev), "batch": batch,
            "pretrain_steps_per_s": round(pre_sps, 3),
            "pretrain_regions_per_s": round(pre_sps * batch, 1),
            "pretrain_tflops": round(pre_sps * batch * flops / 1e12, 3),
            "finetune_steps_per_s": round(ft_sps, 3),
            "finetune_regions_per_step": 15 * 4 * 3, "threads": torch.get_num_threads()}

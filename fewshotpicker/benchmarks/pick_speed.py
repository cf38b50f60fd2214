"""Picking speed: seconds per micrograph, windows per second and achieved TFLOP/s.

Times the real picking path (prepare, window views, encoder in batches,
cosines to the bank, peaks) on one micrograph of a given size with a model
of a given size. The weights are random: speed does not depend on them. The
encoder's arithmetic is counted analytically, so the achieved TFLOP/s and its
ratio to the device's peak are printed beside the wall time: over the whole
picking path (``tflops``) and for the encoder alone on full batches
(``encoder_tflops``), beside the vendor's peak and a bf16 matrix product
timed in the same run (``matmul_tflops``, the ceiling cuBLAS reaches here).
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PickConfig
from ..data.regions import Preprocess
from ..device import resolve_device
from ..models.inference import scoring_encoder
from ..models.mae import build_mae, resize_input
from ..models.student import ScoreStudent
from ..picking.picker import default_stride, pick_micrograph
from ..picking.run import window_batch
from ..picking.scoring import Bank, score_windows

# dense bf16 tensor-core peaks in TFLOP/s (vendor figures, no sparsity)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A6000": 155.0,
               "RTX 4090": 165.0}


def encoder_flops_per_window(model) -> float:
    """Forward FLOPs of the encoder for one whole window (2 FLOPs per multiply-add).

    Per block and token: QKV + projection + MLP = ``24 d^2`` (MLP ratio 4) and
    attention ``4 n d`` for ``n`` tokens; plus the patch embedding.
    """
    c = model.cfg
    n = model.num_patches + 1
    blocks = c.depth * n * (24 * c.embed_dim ** 2 + 4 * n * c.embed_dim)
    patch = 2 * model.num_patches * c.patch_size ** 2 * c.embed_dim
    return float(blocks + patch)


def matmul_ceiling_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> Optional[float]:
    """TFLOP/s of one ``n^3`` bf16 matrix product on this GPU, measured now: the
    ceiling a dense encoder can approach here (None on a CPU)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize(device)
    return 2 * n ** 3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def device_peak_tflops(device: torch.device) -> Optional[float]:
    """The bf16 peak of a known GPU, or None (CPUs, unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def encoder_rate(encoder, bank: Bank, batch: int, device: torch.device,
                 repeats: int = 5) -> float:
    """Windows per second through the encoder alone (scoring one full batch of
    windows against the bank, as the picker does), median of ``repeats``."""
    s = encoder.cfg.img_size
    windows = torch.randn(batch, s, s, device=device)
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        score_windows(encoder, windows, bank)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def random_bank(dim: int, size: int, device: torch.device) -> Bank:
    """A bank of ``size`` random unit features of ``dim`` channels (speed does not depend
    on what the exemplars look like)."""
    return Bank(F.normalize(torch.randn(dim, size, device=device), dim=0),
                torch.zeros(dim, device=device))


def timed_pick(encoder, bank: Bank, image: np.ndarray, pre: Preprocess, cfg: PickConfig,
               device: torch.device, batch: int, student) -> tuple:
    """One ``pick_micrograph`` call on ``image`` (H, W): its wall seconds (the device
    synchronised on both sides), windows scored by the encoder and candidates found."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    cands = pick_micrograph(encoder, bank, image, pre, cfg, device, batch, student)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    smap = cands.score_map
    return (time.perf_counter() - start, int(round(smap.scores.size * smap.scored)),
            len(cands.scores))


def rate_figures(model, encoder, bank: Bank, batch: int, device: torch.device, windows: int,
                 seconds: float) -> dict:
    """Windows per second and TFLOP/s of the whole picking path, the encoder's own rate on
    full batches, and both as fractions of the vendor's bf16 peak and of a bf16 matrix
    product timed now (None where a figure does not exist, e.g. the peak of a CPU)."""
    flops = encoder_flops_per_window(model)
    tflops = windows * flops / seconds / 1e12
    encoder_tflops = encoder_rate(encoder, bank, batch, device) * flops / 1e12
    peak, ceiling = device_peak_tflops(device), matmul_ceiling_tflops(device)
    return {"windows_per_s": windows / seconds, "tflops": tflops,
            "peak_fraction": tflops / peak if peak else None,
            "encoder_tflops": encoder_tflops,
            "encoder_peak_fraction": encoder_tflops / peak if peak else None,
            "matmul_tflops": ceiling,
            "encoder_matmul_fraction": encoder_tflops / ceiling if ceiling else None}


def noise_micrograph(size: tuple, film_edge: bool = False) -> np.ndarray:
    """Gaussian noise ``size`` (H, W) float32, with ``film_edge`` a carbon film 3 noise
    sigmas darker beyond an arc that crosses the image (its preparation then takes each
    side's background apart, as on a real micrograph at a hole's edge)."""
    h, w = size
    image = np.random.default_rng(0).normal(size=size).astype(np.float32)
    if film_edge:
        yy, xx = np.ogrid[0:h, 0:w]
        image[np.hypot(xx + 0.5 * w, yy + 0.5 * h) < 1.2 * max(h, w)] -= 3.0
    return image


def time_picking(model_size: str = "base", size: tuple = (4096, 4096), box: float = 180.0,
                 stride: float = 0.0, device: str = "auto", batch: int = 0, repeats: int = 3,
                 compile: bool = False, bank_size: int = 60, coarse: int = 1,
                 student: float = 0.0, input_size: int = 0, student_check: bool = False,
                 film_edge: bool = False) -> dict:
    """Median seconds of picking one ``size`` micrograph, with the derived rates.

    coarse: 1 scores every window; 2 is the fast setting (``pick --coarse 2``).
    student: > 0 times the student cascade instead (``pick --student``), the
    encoder re-scoring that share of the student's peaks. With random weights
    the share of windows either scores is only indicative; the picking
    benchmark reports the share on real score maps. input_size: the model input a
    box becomes (``train --input-size``; 0 = the model's own, 224 for base).
    student_check: with ``student`` 0, also run the cascade that checks the automatic
    cutoff (``pick``'s default for a model with a student); with random weights it
    re-scores far more of the student's peaks than a trained student does, so its
    cost here is an upper bound. film_edge: the micrograph has a carbon film's edge
    (:func:`noise_micrograph`), whose preparation costs more.
    """
    dev = resolve_device(device)
    batch = window_batch(batch, dev)
    torch.manual_seed(0)
    model = build_mae(model_size).to(dev)
    model = (resize_input(model, input_size) if input_size else model).eval()
    pre = Preprocess(box=box, img_size=model.cfg.img_size, film_edges=True)
    bank = random_bank(model.cfg.embed_dim, bank_size, dev)
    image = noise_micrograph(size, film_edge)
    stride = stride or default_stride(box)
    cfg = PickConfig(stride=stride, coarse=coarse, student=student, student_check=student_check)
    net = ScoreStudent().to(dev).eval() if student > 0 or student_check else None
    start = time.perf_counter()
    encoder = scoring_encoder(model, dev, cfg.precision, compile)
    compile_s = time.perf_counter() - start if compile else None
    timed_pick(encoder, bank, image, pre, cfg, dev, batch, net)  # warm-up: kernels, allocator
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs = [timed_pick(encoder, bank, image, pre, cfg, dev, batch, net) for _ in range(repeats)]
    seconds, windows = float(np.median([r[0] for r in runs])), runs[0][1]
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            f"cpu ({torch.get_num_threads()} threads)",
            "model": model_size, "micrograph": f"{size[1]}x{size[0]}", "box": box,
            "stride": round(stride, 2), "input": model.cfg.img_size, "coarse": coarse,
            "student": student, "student_check": bool(student_check and not student),
            "film_edge": film_edge,
            "batch": batch, "windows": windows, "s_per_mic": seconds,
            **rate_figures(model, encoder, bank, batch, dev, windows, seconds),
            "compile_s": compile_s,
            "gpu_mb": torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda"
            else None, "candidates": runs[0][2]}

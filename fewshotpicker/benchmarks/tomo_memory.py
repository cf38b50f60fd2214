"""Memory of tomogram picking on a full-size volume (1k x 1k x 300 by default).

Writes a noise tomogram of the given shape (float32 MRC, slab by slab), then
runs the tiled detection of ``pick3d`` over all of it with an untrained
detector of the chosen width (the memory and time of a forward pass do not
depend on the weights). While it runs, a sampler reads the process's anonymous
resident memory (``RssAnon``: arrays and tensors; file pages of the memory map
are the kernel's cache, not the process's) and keeps its peak. Prints the
volume's size, that peak, the growth over the state before picking, the tiles
and the seconds.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Tuple

import mrcfile
import numpy as np
import torch

from ..device import resolve_device
from ..tomo.data import open_tomogram, tiles
from ..tomo.detect import detect
from ..tomo.unet3d import UNET_SIZES, UNet3d, UNetConfig


def anonymous_rss_mb() -> float:
    """The process's anonymous resident memory, MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class PeakSampler:
    """Samples :func:`anonymous_rss_mb` every ``interval`` s in a thread; ``peak`` MiB."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, anonymous_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, anonymous_rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, anonymous_rss_mb())


def write_noise_tomogram(path: Path, shape: Tuple[int, int, int], voxel: float = 10.0) -> Path:
    """A float32 MRC of Gaussian noise, ``shape`` (z, y, x), written 16 sections at a time."""
    rng = np.random.default_rng(0)
    with mrcfile.new_mmap(str(path), shape=shape, mrc_mode=2, overwrite=True) as mrc:
        for z in range(0, shape[0], 16):
            n = min(16, shape[0] - z)
            mrc.data[z:z + n] = rng.standard_normal((n, *shape[1:]), dtype=np.float32)
        mrc.voxel_size = voxel
    return path


def run(work: Path, shape: Tuple[int, int, int], size: str, box: float, tile: int,
        device: str) -> dict:
    """Detection over a whole ``shape`` noise tomogram; memory and time figures."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / ("noise_%dx%dx%d.mrc" % shape)
    if not path.exists():
        write_noise_tomogram(path, shape)
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = UNet3d(UNetConfig(width=UNET_SIZES[size].width, n_classes=1)).to(dev)
    tomo = open_tomogram(path)
    radius = max(1, int(round(box / 2)))
    n_tiles = sum(1 for _ in tiles(tomo.shape, tile, radius + 16, model.multiple))
    before = anonymous_rss_mb()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        candidates = detect(model, tomo, radius, tile, dev)
    seconds = time.perf_counter() - start
    gpu_peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else None
    return {"shape_zyx": "x".join(map(str, shape)), "volume_MiB": round(
        float(np.prod(shape)) * 4 / 2 ** 20), "model": size, "tile": tile, "tiles": n_tiles,
        "anon_rss_before_MiB": round(before), "anon_rss_peak_MiB": round(sampler.peak),
        "growth_MiB": round(sampler.peak - before), "gpu_peak_MiB": gpu_peak,
        "candidates": int(len(candidates)), "seconds": round(seconds, 1), "device": str(dev)}

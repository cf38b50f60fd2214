"""Tomograms as the detector sees them: memory-mapped, normalised, cut into crops and tiles."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from ..data.regions import OUTLIER_CLIP
from ..errors import InputError
from ..io.coordinates import micrograph_key
from ..io.mrc import open_volume


@dataclass
class Tomogram:
    """A memory-mapped tomogram ``(d, h, w)`` with the statistics used to normalise it."""
    path: Path
    data: np.ndarray        # read-only memmap, file dtype
    voxel_size: float       # Å / voxel (0 if the header has none)
    mean: float
    std: float
    name: str = ""          # RELION 5's rlnTomoName, when it is not the file's name

    @property
    def key(self) -> str:
        """The name picks and labels are matched by: ``name``, else the file's stem."""
        return micrograph_key(self.name or str(self.path))

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)

    def read(self, lo: np.ndarray, size: np.ndarray) -> torch.Tensor:
        """The normalised block ``(1, sd, sh, sw)`` at corner ``lo`` (z, y, x), clipped to
        ``±OUTLIER_CLIP`` standard deviations (a hot voxel); parts outside the volume are
        zero (the mean)."""
        out = np.zeros(tuple(int(s) for s in size), dtype=np.float32)
        a = np.maximum(lo, 0)
        b = np.minimum(lo + size, self.shape)
        if np.all(b > a):
            block = np.asarray(self.data[a[0]:b[0], a[1]:b[1], a[2]:b[2]], dtype=np.float32)
            out[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1],
                a[2] - lo[2]:b[2] - lo[2]] = np.clip((block - self.mean) / self.std,
                                                     -OUTLIER_CLIP, OUTLIER_CLIP)  # hot voxels
        return torch.from_numpy(out)[None]


def open_tomogram(path: str | Path, max_samples: int = 2_000_000, name: str = "") -> Tomogram:
    """Open ``path`` memory-mapped; mean and std from a strided sample of sections;
    ``name`` is the tomogram's RELION name if it differs from the file's.

    The whole volume is scanned once for NaN and inf, in chunks (memory stays
    bounded; 0.1 s measured for a 1k x 1k x 300 float32 volume in the page cache),
    so a bad voxel anywhere is refused before any work rather than turning a
    tile's scores into NaN.
    """
    vol = open_volume(path)
    d = vol.data.shape[0]
    step = max(1, int(np.ceil(vol.data.size / max_samples)))
    sample = np.asarray(vol.data[::max(1, d // 16)], dtype=np.float32).reshape(-1)[::max(
        1, step // 16)].astype(np.float64)  # the squares of values near 1e20 overflow float32
    if not np.all(np.isfinite(sample)):
        raise InputError(f"{path}: holds NaN or infinite values.")
    std = float(sample.std())
    if std == 0:
        raise InputError(f"{path}: is constant (no contrast).")
    return Tomogram(Path(path), vol.data, vol.pixel_size or 0.0, float(sample.mean()), std,
                    name)


def open_tomograms(paths: List[Path], names: Optional[Dict[str, str]] = None) -> List[Tomogram]:
    """:func:`open_tomogram` for each path, named by ``names`` ``{absolute path: name}``."""
    names = names or {}
    return [open_tomogram(p, name=names.get(os.path.abspath(p), "")) for p in paths]


def labels_per_tomogram(labels: pd.DataFrame, tomos: List[Tomogram], source: str) -> dict:
    """``{tomogram key: (centres (n, 3) x, y, z, classes (n,))}``; refuses labels naming no
    given tomogram or lying outside it."""
    keys = labels["micrograph"].astype(str).map(micrograph_key)
    by_key = {t.key: t for t in tomos}
    unknown = sorted(set(keys) - set(by_key))
    if unknown:
        raise InputError(f"{source}: names {len(unknown)} tomogram(s) that match no given "
                         f"tomogram ({', '.join(unknown[:3])}).")
    out = {}
    for key, g in labels.groupby(keys):
        xyz = g[["x", "y", "z"]].to_numpy(float)
        d, h, w = by_key[key].shape
        outside = (xyz < 0).any(1) | (xyz[:, 0] >= w) | (xyz[:, 1] >= h) | (xyz[:, 2] >= d)
        if outside.any():
            raise InputError(f"{source}: {int(outside.sum())} label(s) lie outside the "
                             f"{w} x {h} x {d} voxel tomogram {key}.")
        klass = g["class"].to_numpy(int) if "class" in g else np.ones(len(g), int)
        if (klass < 1).any():
            raise InputError(f"{source}: rlnClassNumber must be 1 or more (one number per "
                             f"species), found {int(klass.min())}.")
        out[key] = (xyz, klass)
    return out


def crop_size(cfg_crop: int, shape: Tuple[int, int, int], multiple: int) -> np.ndarray:
    """Cubic crop side, at most each volume side, a multiple of ``multiple`` (what the
    network takes): ``(3,)`` (z, y, x)."""
    return np.array([max(multiple, (min(cfg_crop, s) // multiple) * multiple) for s in shape])


def tiles(shape: Tuple[int, int, int], core: int, halo: int,
          multiple: int) -> Iterator[tuple]:
    """Tiles covering a volume: ``(lo, size, core_lo, core_hi)`` (z, y, x arrays) where the
    core regions partition the volume and ``size`` (core plus a halo on each side,
    rounded up to a multiple of ``multiple``) is what the network sees."""
    shape = np.array(shape)
    starts = [range(0, s, core) for s in shape]
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                core_lo = np.array([z, y, x])
                core_hi = np.minimum(core_lo + core, shape)
                lo = core_lo - halo
                size = core_hi - core_lo + 2 * halo
                yield lo, -(-size // multiple) * multiple, core_lo, core_hi

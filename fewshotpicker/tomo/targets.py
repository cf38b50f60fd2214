"""Heatmap targets, views, pseudo-labels and peaks: pure tensor functions.

Positions are voxel coordinates ``(x, y, z)`` (x along the last array axis);
volumes are ``(d, h, w)`` = (z, y, x).
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_heatmap(shape: Tuple[int, int, int], centres: np.ndarray, classes: np.ndarray,
                     n_classes: int, sigma: float) -> torch.Tensor:
    """Targets ``(C, d, h, w)``: at each centre ``(n, 3)`` (x, y, z) of class ``k`` (1-based),
    a Gaussian of ``sigma`` voxels with peak 1 in channel ``k - 1`` (maximum where they
    overlap)."""
    d, h, w = shape
    out = torch.zeros(n_classes, d, h, w)
    r = int(np.ceil(3 * sigma))
    ax = torch.arange(-r, r + 1, dtype=torch.float32)
    blob = torch.exp(-(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
                     / (2 * sigma ** 2))
    for (x, y, z), k in zip(np.round(centres).astype(int), classes):
        lo = np.array([z, y, x]) - r
        a = np.maximum(lo, 0)
        b = np.minimum(lo + 2 * r + 1, [d, h, w])
        if np.any(b <= a):
            continue
        part = blob[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]]
        region = out[int(k) - 1, a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        torch.maximum(region, part, out=region)
    return out


# views: (flip x, flip y, quarter turns about z); each is exact and invertible
VIEWS: List[Tuple[bool, bool, int]] = [(False, False, 0), (True, False, 0), (False, True, 0),
                                       (False, False, 1), (False, False, 2), (False, False, 3)]


def apply_view(x: torch.Tensor, view: Tuple[bool, bool, int]) -> torch.Tensor:
    """A view of ``(..., d, h, w)`` volumes: flips along x / y, then turns about z."""
    fx, fy, k = view
    if fx:
        x = x.flip(-1)
    if fy:
        x = x.flip(-2)
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def invert_view(x: torch.Tensor, view: Tuple[bool, bool, int]) -> torch.Tensor:
    """Undo :func:`apply_view`."""
    fx, fy, k = view
    if k:
        x = torch.rot90(x, -k, dims=(-2, -1))
    if fy:
        x = x.flip(-2)
    return x.flip(-1) if fx else x


def local_peaks(heat: torch.Tensor, radius: int, threshold: float) -> torch.Tensor:
    """3D non-maximum suppression: voxels of ``(C, d, h, w)`` that are the maximum of their
    ``(2 radius + 1)^3`` neighbourhood and above ``threshold``; returns ``(n, 4)`` long
    indices ``(c, z, y, x)``."""
    return torch.nonzero((heat >= cube_max(heat, radius)) & (heat > threshold))


def cube_max(heat: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum over the ``(2 radius + 1)^3`` cube around each voxel of ``(C, d, h, w)``,
    as three 1D max filters (the cube is separable: 3k instead of k^3 comparisons)."""
    k = 2 * radius + 1
    x = heat[None]
    for kernel, pad in (((k, 1, 1), (radius, 0, 0)), ((1, k, 1), (0, radius, 0)),
                        ((1, 1, k), (0, 0, radius))):
        x = F.max_pool3d(x, kernel, stride=1, padding=pad)
    return x[0]


def wedge_dropblock(x: torch.Tensor, n_blocks: int, size_xy: int, elongation: float,
                    generator: torch.Generator) -> torch.Tensor:
    """DropBlock for tomograms: replace ``n_blocks`` random cuboids of each volume
    ``(b, 1, d, h, w)`` by noise of the volume's own statistics.

    The cuboids are ``size_xy`` voxels across and ``elongation`` times longer along z,
    the direction the missing wedge smears density and noise in, so the network
    cannot rely on a particle's z-streaks alone.
    """
    out = x.clone()
    b, _, d, h, w = x.shape
    sz = min(d, max(1, int(round(size_xy * elongation))))
    for i in range(b):
        mean, std = x[i].mean(), x[i].std()
        for _ in range(n_blocks):
            z0, y0, x0 = (int(torch.randint(0, max(1, n - s + 1), (1,), generator=generator))
                          for n, s in ((d, sz), (h, size_xy), (w, size_xy)))
            block = out[i, :, z0:z0 + sz, y0:y0 + size_xy, x0:x0 + size_xy]
            noise = torch.randn(block.shape, generator=generator).to(block.device)
            block.copy_(mean + std * noise)
    return out


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameter by parameter (buffers
    copied)."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)

"""Carbon-film edges: find them, and take the background on each side of one apart.

Where the edge of a hole in the carbon film crosses a micrograph, the image
steps from one brightness to another over a few pixels. A Gaussian background
subtraction (the preparation's ``highpass``) turns that step into a bright
and a dark band about two boxes wide, and the particles on those bands look
to the encoder like nothing it was trained on (session 17: 11 of the 21
particles the default simulated set's picker missed at its best cut).

Here the step is found on a coarse copy of the image (``PER_BOX`` pixels a
box): a film edge is a long, sharp ridge of the gradient magnitude, many times
the micrograph's median gradient (particles, noise and the ice's slow
thickness changes stay far below it) that runs into the image's border. Ice
crystals are as sharp but compact, and do not count. The image is then cut
along the edge into regions, and each region's background is a normalised
convolution over that region alone (``blur(image * mask) / blur(mask)``), so
the step leaves no bands. Away from an edge, and in micrographs without one,
the background is the same Gaussian blur as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .blur import blur_radius, gaussian_blur, gaussian_kernel

PER_BOX = 8            # analysis grid: coarse pixels per box
EDGE_FACTOR = 8.0      # a film edge's gradient, in medians of the micrograph's gradient
MIN_EDGE_BOXES = 4.0   # an edge spans at least this many boxes (ice crystals: under 3)
MIN_REGION_BOXES = 4.0  # a region cut off by an edge covers at least this many boxes^2


def coarse_factor(box: float) -> int:
    """Prepared-image pixels per coarse pixel (about ``box / PER_BOX``, at least 1)."""
    return max(1, int(round(box / PER_BOX)))


def film_edge_mask(coarse: np.ndarray, box: float) -> np.ndarray:
    """Boolean ``(ch, cw)``: pixels of ``coarse`` (``PER_BOX`` px a box) on a film edge.

    An edge is a connected ridge of the gradient magnitude (at a quarter box)
    above ``EDGE_FACTOR`` times its median, spanning at least ``MIN_EDGE_BOXES``
    boxes and touching the image border. ``box`` is in coarse pixels.
    """
    grad = ndimage.gaussian_gradient_magnitude(coarse, 0.25 * box, mode="nearest")
    level = float(np.median(grad))
    edge = np.zeros(coarse.shape, dtype=bool)
    if not level > 0:
        return edge
    labels, _ = ndimage.label(grad > EDGE_FACTOR * level)
    border = np.zeros_like(edge)
    border[[0, -1], :] = border[:, [0, -1]] = True
    for i, where in enumerate(ndimage.find_objects(labels), start=1):
        part = labels[where] == i
        extent = max(where[0].stop - where[0].start, where[1].stop - where[1].start)
        if extent >= MIN_EDGE_BOXES * box and (part & border[where]).any():
            edge[where] |= part
    return edge


def coarse_regions(coarse: np.ndarray, box: float) -> Optional[np.ndarray]:
    """Labels ``(ch, cw)`` int of the regions film edges cut ``coarse`` into: 1..n for regions
    of at least ``MIN_REGION_BOXES`` boxes^2, 0 on the edges and in smaller pieces; ``None``
    when no edge divides the image into two such regions."""
    edge = film_edge_mask(coarse, box)
    if not edge.any():
        return None
    pieces, n = ndimage.label(~edge)
    areas = ndimage.sum(np.ones_like(pieces), pieces, index=np.arange(1, n + 1))
    big = 1 + np.flatnonzero(areas >= MIN_REGION_BOXES * box * box)
    if len(big) < 2:
        return None
    lookup = np.zeros(n + 1, dtype=np.int64)
    lookup[big] = np.arange(1, len(big) + 1)
    return lookup[pieces]


def _upsample(x: torch.Tensor, factor: int, shape: tuple, mode: str) -> torch.Tensor:
    """Coarse ``(..., ch, cw)`` -> ``(..., h, w)``, each coarse pixel covering ``factor``^2."""
    lead = x.shape[:-2]
    up = F.interpolate(x.reshape(1, -1, *x.shape[-2:]).float(), scale_factor=factor, mode=mode,
                       **({"align_corners": False} if mode == "bilinear" else {}))
    return up[0, :, :shape[0], :shape[1]].reshape(*lead, *shape)


def _bilinear_at(coarse: torch.Tensor, factor: int, ys: torch.Tensor,
                 xs: torch.Tensor) -> torch.Tensor:
    """``coarse`` ``(n, ch, cw)`` interpolated at full-size pixels ``ys``, ``xs`` (``(k,)``
    long): ``(n, k)``, the values ``_upsample(coarse, factor, ..., "bilinear")`` has there,
    without making the ``(n, h, w)`` whole."""
    def axis(i: torch.Tensor, size: int):
        src = ((i.to(coarse.dtype) + 0.5) / factor - 0.5).clamp_min(0.0)
        low = src.long().clamp_max(size - 1)
        return low, (low + 1).clamp_max(size - 1), src - low
    y0, y1, wy = axis(ys, coarse.shape[-2])
    x0, x1, wx = axis(xs, coarse.shape[-1])
    top = coarse[:, y0, x0] * (1 - wx) + coarse[:, y0, x1] * wx
    bottom = coarse[:, y1, x0] * (1 - wx) + coarse[:, y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def _coarse_region_means(img: torch.Tensor, labels: torch.Tensor, n: int, factor: int,
                         sigma: float) -> torch.Tensor:
    """Each region's normalised-convolution mean of ``img`` ``(h, w)``, on the coarse grid
    (``factor`` px a coarse pixel; the means are smooth): ``(n, ch, cw)``. ``labels``
    ``(h, w)`` long gives each pixel's region, 0..n-1 (others, -1, belong to none); the blur
    is at ``sigma`` full-size px. One region at a time, so memory does not grow with ``n``."""
    pool = lambda x: F.avg_pool2d(x[None, None], factor, ceil_mode=True)[0, 0]  # noqa: E731
    means = []
    for k in range(n):
        mask = (labels == k).to(img.dtype)
        weight, mass = pool(mask), pool(mask * img)
        means.append(gaussian_blur(mass, sigma / factor) /
                     gaussian_blur(weight, sigma / factor).clamp_min(1e-4))
    return torch.stack(means)


def _own_region_mean(coarse: torch.Tensor, labels: torch.Tensor, factor: int) -> torch.Tensor:
    """``(h, w)``: at each pixel the mean of its own region (``coarse`` ``(n, ch, cw)`` from
    :func:`_coarse_region_means`, interpolated), one region at a time."""
    out = torch.zeros(labels.shape, dtype=coarse.dtype, device=coarse.device)
    for k in range(len(coarse)):
        out = torch.where(labels == k, _upsample(coarse[k], factor, labels.shape, "bilinear"),
                          out)
    return out


@dataclass
class FilmRegions:
    """Regions a film edge cuts a prepared image ``(h, w)`` into.

    ``labels``: ``(h, w)`` long, each pixel's region 0..n-1; ``band``: ``(h, w)`` bool, the
    pixels near the edge (the coarse edge mask), where the step's own blur is fitted;
    ``n``: the number of regions.
    """
    labels: torch.Tensor
    band: torch.Tensor
    n: int


def film_regions(img: torch.Tensor, box: float) -> Optional[FilmRegions]:
    """The regions of a prepared image ``(h, w)`` (``box`` prepared px) cut by film edges, or
    ``None`` when it has no film edge.

    The edge pixels of the coarse grid are given to the region whose local mean
    (half a box around) is nearest to their own brightness (the image blurred
    at a tenth of a box), so the cut follows the step to a few pixels.
    """
    factor = coarse_factor(box)
    coarse = F.avg_pool2d(img[None, None], factor, ceil_mode=True)[0, 0]
    labels = coarse_regions(coarse.double().cpu().numpy(), box / factor)
    if labels is None:
        return None
    full = _upsample(torch.as_tensor(labels, device=img.device), factor, img.shape,
                     "nearest").long() - 1                     # -1 on the edge
    n = int(labels.max())
    band = full < 0
    ys, xs = torch.nonzero(band, as_tuple=True)
    local = _bilinear_at(_coarse_region_means(img, full, n, factor, 0.5 * box), factor,
                         ys, xs)                                                  # (n, k)
    own = gaussian_blur(img, 0.1 * box)[band]                                     # (k,)
    full[band] = (own[None] - local).abs().argmin(0)
    return FilmRegions(full, band, n)


# widths (Gaussian sigma, in boxes) tried for the step's blur: the preparation's low-pass
# (0.03 box) and the edge's own softness and CTF; 0 = a sharp step
STEP_WIDTHS = (0.0, 0.015, 0.03, 0.045, 0.065, 0.09, 0.13)
TILE = 64            # px: the blurred step is computed on tiles this size near the cut only
TILE_VALUES = 2 ** 24  # soft-mask values per chunk of tiles (64 MiB in float32)


@dataclass
class _Tiles:
    """Tiles ``TILE x TILE`` of a prepared image, by their grid indices ``ty``, ``tx``
    ``(t,)``."""
    ty: torch.Tensor
    tx: torch.Tensor


def _boundary_tiles(labels: torch.Tensor, radius: int) -> _Tiles:
    """The tiles holding a pixel within ``radius`` px of a boundary between regions of
    ``labels`` ``(h, w)`` (measured in 8 px blocks, so a few more): elsewhere any blur of the
    region masks up to that radius leaves them as they are."""
    step = torch.zeros_like(labels, dtype=torch.bool)
    step[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    step[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    step[1:] |= labels[1:] != labels[:-1]
    step[:-1] |= labels[1:] != labels[:-1]
    block = 8
    near = F.max_pool2d(step[None, None].float(), block, ceil_mode=True)
    reach = radius // block + 1
    near = F.max_pool2d(near, 2 * reach + 1, stride=1, padding=reach)
    per_tile = TILE // block
    near = F.max_pool2d(near, per_tile, ceil_mode=True)[0, 0] > 0
    ty, tx = torch.nonzero(near, as_tuple=True)
    return _Tiles(ty, tx)


def _tile_grid(x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``x`` ``(h, w)`` padded with ``fill`` to whole tiles, as ``(H / T, T, W / T, T)``:
    ``grid[ty, :, tx, :]`` are tiles ``(t, T, T)``, ``grid.reshape(H, W)[:h, :w]`` is ``x``."""
    h, w = x.shape
    padded = F.pad(x[None, None], (0, -w % TILE, 0, -h % TILE), value=fill)[0, 0]
    return padded.view(padded.shape[0] // TILE, TILE, padded.shape[1] // TILE, TILE)


def _halo_tiles(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Every tile of ``x`` ``(h, w)`` with ``radius`` px around it (reflected at the image's
    border, as :func:`gaussian_blur` does), ``(H / T, W / T, T + 2 radius, T + 2 radius)``: a
    view, copied only where indexed."""
    padded = F.pad(x[None, None], (radius,) * 4, mode="reflect")
    padded = F.pad(padded, (0, -x.shape[1] % TILE, 0, -x.shape[0] % TILE))[0, 0]
    return padded.unfold(0, TILE + 2 * radius, TILE).unfold(1, TILE + 2 * radius, TILE)


def _tile_pixels(tiles: _Tiles, shape: tuple) -> tuple:
    """Row and column ``(t * TILE * TILE,)`` of every pixel of the ``tiles``, clamped into an
    image of ``shape``."""
    offs = torch.arange(TILE, device=tiles.ty.device)
    ys = (tiles.ty[:, None, None] * TILE + offs[None, :, None]).clamp_max(shape[0] - 1)
    xs = (tiles.tx[:, None, None] * TILE + offs[None, None, :]).clamp_max(shape[1] - 1)
    return ys.expand(-1, TILE, TILE).reshape(-1), xs.expand(-1, TILE, TILE).reshape(-1)


def _soft_masks(onehot: torch.Tensor, width: float, r: int, radius: int) -> torch.Tensor:
    """Region masks of tiles with a ``radius`` px halo, ``(t, n, T + 2 radius, T + 2 radius)``
    0/1, blurred at ``width`` px by a kernel ``r`` <= ``radius`` px wide each side: ``(t, n,
    T, T)``, how much of each region's background a pixel on the blurred step sees (they sum
    to 1)."""
    side = onehot.shape[-1]
    inner = onehot[:, :, radius - r:side - radius + r, radius - r:side - radius + r]
    if r == 0:
        return inner
    # the separable blur as two products with a banded (T, T + 2r) matrix: on two CPU
    # cores far faster than conv2d's one-channel 1-D convolution, or the FFT of the image
    k = gaussian_kernel(width, r, onehot)
    banded = torch.zeros(TILE, TILE + 2 * r, dtype=onehot.dtype, device=onehot.device)
    rows = torch.arange(TILE, device=onehot.device)[:, None]
    banded[rows, rows + torch.arange(2 * r + 1, device=onehot.device)[None, :]] = k
    return banded @ inner @ banded.T


def region_background(img: torch.Tensor, regions: FilmRegions, sigma: float,
                      box: float) -> torch.Tensor:
    """Background ``(h, w)`` of ``img`` ``(h, w)`` cut into ``regions``: each region's
    Gaussian blur (``sigma`` prepared px) over that region alone, normalised by the blur of
    its mask, and across the edge a blurred step between them, its width (of
    ``STEP_WIDTHS`` x ``box``) the one that leaves the least in the edge's band.

    A sharp step left a bright and a dark line along the edge, up to four times the
    noise (session 18, the default simulated set); the fitted width, 4 px of 64 px
    boxes there, left the band as quiet as the rest of the image. The step is blurred
    only on the tiles near the cut (elsewhere a blurred mask is the mask), in chunks, so
    time and memory grow with the image's area and the length of its edges, not with the
    number of regions times the area.
    """
    factor = max(1, int(sigma // (2 * PER_BOX)))
    coarse = _coarse_region_means(img, regions.labels, regions.n, factor, sigma)
    background = _own_region_mean(coarse, regions.labels, factor)   # the sharp step
    radius = blur_radius(max(STEP_WIDTHS) * box, img.shape)
    tiles = _boundary_tiles(regions.labels, radius)
    if not len(tiles.ty) or not regions.band.any():
        return background
    halos = _halo_tiles(regions.labels.to(img.dtype), radius)
    regions_n = torch.arange(regions.n, device=img.device, dtype=img.dtype)
    image, band = _tile_grid(img), _tile_grid(regions.band, fill=False)

    def tile_inputs(part: slice) -> tuple:
        """What one chunk of tiles needs: masks with halo ``(t, n, S, S)``, the regions' means
        ``(t, n, T, T)``, the image and the band ``(t, T, T)``."""
        sub = _Tiles(tiles.ty[part], tiles.tx[part])
        onehot = (halos[sub.ty, sub.tx][:, None] == regions_n[None, :, None, None])
        means = _bilinear_at(coarse, factor, *_tile_pixels(sub, img.shape))
        means = means.view(regions.n, -1, TILE, TILE).transpose(0, 1)
        return (onehot.to(img.dtype), means, image[sub.ty, :, sub.tx, :],
                band[sub.ty, :, sub.tx, :])

    def stepped(inputs: tuple, width: float) -> torch.Tensor:
        r = blur_radius(width * box, img.shape) if width > 0 else 0
        return (_soft_masks(inputs[0], width * box, r, radius) * inputs[1]).sum(1)
    chunk = max(1, TILE_VALUES // (regions.n * (TILE + 2 * radius) ** 2))
    parts = [slice(i, i + chunk) for i in range(0, len(tiles.ty), chunk)]
    left = np.zeros(len(STEP_WIDTHS))  # what each width leaves in the band (up to a constant)
    for part in parts:
        inputs = tile_inputs(part)
        for i, width in enumerate(STEP_WIDTHS):
            left[i] += float(((inputs[2] - stepped(inputs, width))[inputs[3]] ** 2).sum())
    best = STEP_WIDTHS[int(np.argmin(left))]
    out = _tile_grid(background)
    for part in parts:
        out[tiles.ty[part], :, tiles.tx[part], :] = stepped(tile_inputs(part), best)
    return out.reshape(out.shape[0] * TILE, -1)[:img.shape[0], :img.shape[1]].contiguous()

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

from .blur import gaussian_blur

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


def _region_means(img: torch.Tensor, masks: torch.Tensor, factor: int,
                  sigma: float) -> torch.Tensor:
    """Each region's normalised-convolution mean ``(n, h, w)`` of ``img`` ``(h, w)`` under
    ``masks`` ``(n, h, w)`` (0/1), blurred at ``sigma`` prepared px, computed on the coarse
    grid (the means are smooth) and interpolated back."""
    pool = lambda x: F.avg_pool2d(x[None], factor, ceil_mode=True)[0]  # noqa: E731
    weight, mass = pool(masks), pool(masks * img)
    means = torch.stack([gaussian_blur(m, sigma / factor) /
                         gaussian_blur(w, sigma / factor).clamp_min(1e-4)
                         for m, w in zip(mass, weight)])
    return _upsample(means, factor, img.shape, "bilinear")


@dataclass
class FilmRegions:
    """Regions a film edge cuts a prepared image ``(h, w)`` into.

    ``masks``: ``(n, h, w)`` 0/1, one region per pixel; ``band``: ``(h, w)`` bool, the
    pixels near the edge (the coarse edge mask), where the step's own blur is fitted.
    """
    masks: torch.Tensor
    band: torch.Tensor


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
                     "nearest").long()
    n = int(labels.max())
    masks = torch.stack([(full == k).float() for k in range(1, n + 1)])
    band = full == 0
    local = _region_means(img, masks, factor, 0.5 * box)[:, band]           # (n, k)
    own = gaussian_blur(img, 0.1 * box)[band]                                # (k,)
    full[band] = (own[None] - local).abs().argmin(0) + 1
    return FilmRegions(torch.stack([(full == k).float() for k in range(1, n + 1)]), band)


# widths (Gaussian sigma, in boxes) tried for the step's blur: the preparation's low-pass
# (0.03 box) and the edge's own softness and CTF; 0 = a sharp step
STEP_WIDTHS = (0.0, 0.015, 0.03, 0.045, 0.065, 0.09, 0.13)


def soft_masks(masks: torch.Tensor, width: float) -> torch.Tensor:
    """Region masks ``(n, h, w)`` blurred at ``width`` px and renormalised to sum to 1: how
    much of each region's background a pixel on the blurred step sees."""
    if width <= 0:
        return masks
    if len(masks) == 2:  # the blur is linear and keeps a constant: the second is 1 - first
        first = gaussian_blur(masks[0], width).clamp(0.0, 1.0)
        return torch.stack([first, 1.0 - first])
    soft = torch.stack([gaussian_blur(m, width) for m in masks]).clamp_min(0.0)
    return soft / soft.sum(0).clamp_min(1e-6)


def region_background(img: torch.Tensor, regions: FilmRegions, sigma: float,
                      box: float) -> torch.Tensor:
    """Background ``(h, w)`` of ``img`` ``(h, w)`` cut into ``regions``: each region's
    Gaussian blur (``sigma`` prepared px) over that region alone, normalised by the blur of
    its mask, and across the edge a blurred step between them, its width (of
    ``STEP_WIDTHS`` x ``box``) the one that leaves the least in the edge's band.

    A sharp step left a bright and a dark line along the edge, up to four times the
    noise (session 18, the default simulated set); the fitted width, 4 px of 64 px
    boxes there, left the band as quiet as the rest of the image.
    """
    factor = max(1, int(sigma // (2 * PER_BOX)))
    means = _region_means(img, regions.masks, factor, sigma)
    best = None
    for width in STEP_WIDTHS:
        background = (soft_masks(regions.masks, width * box) * means).sum(0)
        left = float(((img - background)[regions.band] ** 2).mean()) if regions.band.any() \
            else 0.0
        if best is None or left < best[0]:
            best = (left, background)
    return best[1]

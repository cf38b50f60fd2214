"""Regions (crops) for training and picking, as torch tensors.

A micrograph is first *prepared* once: rescaled so that one particle box
becomes the model input size, its slow background (ice gradient, carbon)
removed, and normalised. Regions are then square windows of the model input
size cut from the prepared image, each normalised to zero mean and unit
variance. Training and picking use the same preparation, so features agree.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .blur import gaussian_blur
from .film import film_regions, region_background

log = logging.getLogger("fewshotpicker")

# in robust standard deviations of the raw micrograph (:func:`repair_defects`): a pixel this
# far from its neighbours' median is a defect; what is left beyond the clip is cut back
DEFECT_JUMP = 10.0
OUTLIER_CLIP = 100.0


@dataclass(frozen=True)
class Preprocess:
    """How micrographs are prepared. ``box`` in micrograph px, ``img_size`` in model px."""
    box: float
    img_size: int
    highpass: float = 4.0   # background blur, in boxes; 0 = none
    lowpass: float = 0.03   # denoising blur sigma, in boxes; 0 = none
    # background per side of a carbon-film edge (:mod:`~fewshotpicker.data.film`); False for
    # models trained before it, whose checkpoints do not name it
    film_edges: bool = False

    @property
    def scale(self) -> float:
        """Model pixels per micrograph pixel."""
        return self.img_size / self.box


def prepare_micrograph(image: np.ndarray | torch.Tensor, pre: Preprocess,
                       device: str | torch.device = "cpu") -> torch.Tensor:
    """Rescale, flatten and normalise a micrograph: ``(h, w)`` -> ``(h', w')`` float32.

    ``h' = round(h * scale)``. Downscaling is anti-aliased. A Gaussian blur
    of ``lowpass`` boxes removes the shot noise finer than the particle's
    features (it makes masked patches predictable, which MAE training needs),
    the background (a blur of ``highpass`` boxes) is subtracted, and the image
    is divided by its robust standard deviation. With ``film_edges`` the
    background of a micrograph crossed by a carbon-film edge is taken on each
    side of the edge apart (:func:`background`).
    """
    img = standardise(torch.as_tensor(np.asarray(image, dtype=np.float32), device=device))
    h, w = img.shape
    size = (max(1, round(h * pre.scale)), max(1, round(w * pre.scale)))
    img = F.interpolate(img[None, None], size=size, mode="bilinear", align_corners=False,
                        antialias=pre.scale < 1)[0, 0]
    if pre.lowpass > 0:
        img = gaussian_blur(img, pre.lowpass * pre.img_size)
    if pre.highpass > 0:
        img = img - background(img, pre)
    med = img.median()
    mad = (img - med).abs().median() * 1.4826 + 1e-6
    return (img - med) / mad


def standardise(img: torch.Tensor) -> torch.Tensor:
    """``(h, w)`` -> ``(h, w)`` float32: the raw micrograph less its median, over its robust
    standard deviation (1.4826 MAD; the standard deviation where more than half the pixels
    share one value), with its defects repaired (:func:`repair_defects`).

    Done before any filtering, so that neither the scale of the values (1e-30 or 1e30 per
    count) nor a defect (a hot pixel of 1e20, a bad column) spreads through the blurs and
    the rescaling into the windows around it. Statistics from a strided sample of about a
    million pixels.
    """
    sample = img.reshape(-1)[::max(1, math.ceil(img.numel() / 2 ** 20))].double()
    median = sample.median()
    spread = (sample - median).abs().median() * 1.4826
    if not spread > 0:
        spread = sample.std()
    if not (spread > 0 and torch.isfinite(spread)):
        spread = torch.ones((), dtype=torch.float64, device=img.device)
    return repair_defects(((img - median.float()) / spread.float()).clamp(-1e6, 1e6))


def repair_defects(z: torch.Tensor, jump: float = DEFECT_JUMP,
                   clip: float = OUTLIER_CLIP) -> torch.Tensor:
    """``(h, w)`` -> ``(h, w)``, in robust standard deviations: every pixel more than
    ``jump`` from the median of its 3 x 3 neighbourhood (a hot or dead pixel, a bad column
    or row) takes the mean of its neighbours within ``±jump``, then all are clipped to
    ``±clip`` (what is left of larger defects).

    Nothing a micrograph shows jumps so far between neighbouring pixels: noise moves a
    pixel about 1 from that median, and particles, ice and carbon span many pixels (the
    darkest pixels of the simulated set full of ice crystals, at -12.6, lie within 2.8 of
    their neighbourhood's median; the most isolated pixels of the ten EMPIAR-10028
    micrographs within 9.6, but for one at 14.8). Only pixels beyond ``jump`` from 0 are
    looked at, so the cost is that of finding them.
    """
    h, w = z.shape
    ys, xs = torch.nonzero(z.abs() > jump, as_tuple=True)
    if len(ys):
        offsets = torch.arange(-1, 2, device=z.device)
        ny = (ys[:, None, None] + offsets[None, :, None]).clamp(0, h - 1).expand(-1, 3, 3)
        nx = (xs[:, None, None] + offsets[None, None, :]).clamp(0, w - 1).expand(-1, 3, 3)
        near = z[ny.reshape(len(ys), 9), nx.reshape(len(ys), 9)]           # (n, 9)
        jumped = (z[ys, xs] - near.median(dim=1).values).abs() > jump
        # the mean of the neighbours that are not outliers themselves (a bad column's
        # own pixels would bias a median), or the median where all are
        fill = torch.where(near.abs() > jump, torch.nan, near).nanmean(dim=1)
        fill = torch.where(torch.isnan(fill), near.median(dim=1).values, fill)
        z = z.clone()
        z[ys[jumped], xs[jumped]] = fill[jumped]
    return z.clamp(-clip, clip)


def background(img: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """The slow background ``(h', w')`` of a rescaled, low-passed micrograph: its Gaussian
    blur at ``highpass`` boxes, or with ``pre.film_edges`` and a film edge in the image,
    that blur taken over each side of the edge alone
    (:func:`~fewshotpicker.data.film.region_background`)."""
    sigma = pre.highpass * pre.img_size / 2.0
    regions = film_regions(img, pre.img_size) if pre.film_edges else None
    if regions is None:
        return gaussian_blur(img, sigma)
    return region_background(img, regions, sigma, pre.img_size)


def normalize_regions(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation per region: ``(n, s, s)`` or ``(n, 1, s, s)``."""
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (std + 1e-6)


def crop_raw(prepared: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Cut ``size x size`` windows centred on ``centres`` ``(n, 2)`` (x, y), prepared-image px,
    from ``prepared`` ``(h, w)``, as they are: ``(n, size, size)``. Windows that cross the
    border are filled by reflection."""
    half = size // 2
    padded = F.pad(prepared[None, None], (half + 1, half + 1, half + 1, half + 1),
                   mode="reflect")[0, 0]
    corner = torch.round(centres - size / 2.0).long() + half + 1
    offs = torch.arange(size, device=prepared.device)
    rows = (corner[:, 1, None] + offs).clamp(0, padded.shape[0] - 1)
    cols = (corner[:, 0, None] + offs).clamp(0, padded.shape[1] - 1)
    return padded[rows[:, :, None], cols[:, None, :]]


def crop_windows(prepared: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Windows of :func:`crop_raw`, normalised per region: ``(n, 1, size, size)``."""
    return normalize_regions(crop_raw(prepared, centres, size))[:, None]


def window_contrast_at(prepared: torch.Tensor, centres: torch.Tensor, size: int) -> torch.Tensor:
    """Standard deviation ``(n,)`` of the windows of :func:`crop_raw`, before the per-window
    normalisation: how strong a window's contrast is, in the prepared image's units (robust
    standard deviations of its micrograph)."""
    return crop_raw(prepared, centres, size).flatten(1).std(dim=1, unbiased=False)


def window_contrast_grid(prepared: torch.Tensor, size: int, step: int) -> torch.Tensor:
    """Standard deviation of every ``size x size`` window every ``step`` px of ``prepared``
    ``(h, w)``, the grid of ``unfold`` (window ``(i, j)`` starts at ``(i, j) * step``):
    ``(gy, gx)``, as :func:`window_contrast_at` measures it, from box means of the image
    and its square (pooled along rows, then columns: 3.6x faster than one 2D pooling for
    a 5097^2 image and 224 px windows on two CPU cores, equal to 2e-7)."""
    def box_mean(x: torch.Tensor) -> torch.Tensor:
        rows = F.avg_pool2d(x, (size, 1), stride=(step, 1))
        return F.avg_pool2d(rows, (1, size), stride=(1, step))

    x = prepared[None, None].float()
    mean = box_mean(x)
    return (box_mean(x * x) - mean * mean).clamp_min(0.0).sqrt()[0, 0]


def check_inside(centres: np.ndarray, shape: tuple, box: float, source: str,
                 warn: bool = True) -> np.ndarray:
    """Refuse coordinates outside the image; report those whose box crosses the border.

    centres: ``(n, 2)`` (x, y) px; shape: ``(h, w)``. Returns a boolean array
    of the ones whose box is not whole (they are padded by reflection).
    """
    h, w = shape
    outside = (centres[:, 0] < 0) | (centres[:, 0] >= w) | (centres[:, 1] < 0) | \
        (centres[:, 1] >= h)
    if outside.any():
        x, y = centres[np.argmax(outside)]
        raise InputError(f"{source}: {int(outside.sum())} coordinate(s) lie outside the "
                         f"{w} x {h} px micrograph (first at x={x:.0f}, y={y:.0f}).")
    half = box / 2.0
    partial = (centres[:, 0] < half) | (centres[:, 0] > w - half) | (centres[:, 1] < half) | \
        (centres[:, 1] > h - half)
    if partial.any() and warn:
        log.warning("%s: %d coordinate(s) closer than half a box (%.0f px) to the border; "
                    "their boxes are padded by reflection.", source, int(partial.sum()), half)
    return partial


def random_centres(shape: tuple, n: int, rng: np.random.Generator, margin: float = 0.0,
                   avoid: Optional[np.ndarray] = None, avoid_radius: float = 0.0) -> np.ndarray:
    """``n`` random centres (x, y) in an image ``(h, w)``, ``margin`` px from the edges,
    optionally farther than ``avoid_radius`` from every point of ``avoid`` ``(k, 2)``."""
    h, w = shape
    lo = np.array([margin, margin])
    hi = np.array([max(w - margin, margin + 1), max(h - margin, margin + 1)])
    if avoid is None or len(avoid) == 0 or avoid_radius <= 0:
        return rng.uniform(lo, hi, size=(n, 2))
    out = np.empty((0, 2))
    for _ in range(50):
        cand = rng.uniform(lo, hi, size=(2 * n, 2))
        d = np.min(np.linalg.norm(cand[:, None] - avoid[None], axis=-1), axis=1)
        out = np.vstack([out, cand[d > avoid_radius]])
        if len(out) >= n:
            break
    return out[:n]


def rotations90(x: torch.Tensor) -> torch.Tensor:
    """Regions and their 90/180/270 degree rotations: ``(n, 1, s, s)`` -> ``(4n, 1, s, s)``."""
    return torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=0)


def random_views(big: torch.Tensor, size: int, rng: np.random.Generator,
                 max_shift: int = 0, flips: bool = True) -> torch.Tensor:
    """Random exact views of larger windows: integer shift, 90-degree turn, flip.

    big: ``(n, 1, S, S)`` windows centred on the particles (S >= size + 2 max_shift);
    returns ``(n, 1, size, size)`` normalised per region. Only exact pixel
    operations are used: resampling (an arbitrary-angle rotation, a sub-pixel
    shift) smooths the noise, and a network soon learns to call anything
    smoothed a particle.
    """
    n, big_size = big.shape[0], big.shape[-1]
    start = (big_size - size) // 2
    shifts = rng.integers(-max_shift, max_shift + 1, (n, 2))
    turns = rng.integers(0, 4, n)
    mirror = rng.integers(0, 2, n) if flips else np.zeros(n, dtype=int)
    views = []
    for i in range(n):
        x0, y0 = start + shifts[i, 0], start + shifts[i, 1]
        v = big[i, :, y0:y0 + size, x0:x0 + size]
        v = torch.rot90(v, int(turns[i]), dims=(-2, -1))
        views.append(v.flip(-1) if mirror[i] else v)
    return normalize_regions(torch.stack(views))


def view_window_size(size: int, max_shift: int = 4) -> int:
    """Side of the windows that :func:`random_views` needs for ``size`` outputs."""
    return size + 2 * max_shift

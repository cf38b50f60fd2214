"""Difference-of-Gaussians baseline picker (template-free blob detection).

The classic DoG picker: band-pass the micrograph with two Gaussians matched to
the particle radius, take local maxima of the response at least a radius
apart, and keep those above a threshold: automatic (calibrated against the
peaks of a pixel-shuffled copy of the image, see :func:`calibrated_threshold`),
or a given height in units of the response's robust standard deviation. It knows
nothing about the particle's shape, so it is the floor every learned picker
must beat, and it takes ice crystals, aggregates and carbon edges for particles.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..config import DogConfig
from .peaks import find_peaks


def dog_filter(image: np.ndarray, diameter: float, dark_particles: bool = True) -> np.ndarray:
    """Raw DoG band-pass of ``image`` ``(h, w)`` for blobs of ``diameter`` px.

    sigma1 = radius / sqrt(2) (the scale of a blob of that radius) and
    sigma2 = 1.6 sigma1; dark particles are inverted so they give maxima.
    """
    img = -image.astype(np.float64) if dark_particles else image.astype(np.float64)
    s1 = diameter / 2.0 / np.sqrt(2.0)
    return ndimage.gaussian_filter(img, s1) - ndimage.gaussian_filter(img, 1.6 * s1)


def robust_scale(values: np.ndarray) -> tuple:
    """Median and robust standard deviation (1.4826 x MAD) of an array."""
    median = float(np.median(values))
    return median, float(np.median(np.abs(values - median)) * 1.4826 + 1e-12)


def dog_response(image: np.ndarray, diameter: float, dark_particles: bool = True) -> np.ndarray:
    """DoG band-pass in units of its robust standard deviation, median 0."""
    response = dog_filter(image, diameter, dark_particles)
    median, scale = robust_scale(response)
    return (response - median) / scale


def noise_peak_heights(image: np.ndarray, diameter: float, min_distance: float,
                       dark_particles: bool = True, seed: int = 0) -> np.ndarray:
    """Peak heights that noise alone produces, in the units of :func:`dog_response`.

    The same DoG and peak search run on a pixel-shuffled copy of the image with
    its slow background (ice gradient, carbon) removed first: the same local
    noise level, no structure.
    """
    rng = np.random.default_rng(seed)
    median, scale = robust_scale(dog_filter(image, diameter, dark_particles))
    flat = image.astype(np.float64) - ndimage.gaussian_filter(image.astype(np.float64),
                                                              2.0 * diameter)
    shuffled = rng.permutation(flat.ravel()).reshape(image.shape)
    noise = (dog_filter(shuffled, diameter, dark_particles) - median) / scale
    return find_peaks(noise, min_distance, refine=False)[1]


def calibrated_threshold(heights: np.ndarray, noise_heights: np.ndarray) -> float:
    """The cut on peak heights that maximises an F1 estimated from a noise calibration.

    Above a cut t, the true picks are estimated as (peaks above t) - (noise
    peaks above t), the particle count P as the largest such estimate, and
    F1(t) = 2 TP / (picks + P). Returns a height just below the chosen peak.
    """
    if len(heights) == 0:
        return 0.0
    cuts = np.sort(heights)[::-1]
    n_real = np.arange(1, len(cuts) + 1)
    n_noise = np.searchsorted(np.sort(noise_heights), cuts, side="left")
    n_noise = len(noise_heights) - n_noise
    tp = np.clip(n_real - n_noise, 0, None)
    if tp.max() == 0:
        return float(cuts[0])  # nothing stands above the noise: keep (almost) nothing
    f1 = 2 * tp / (n_real + tp.max())
    return float(np.nextafter(cuts[int(np.argmax(f1))], -np.inf))


def pick_dog(image: np.ndarray, cfg: DogConfig) -> tuple:
    """Pick one micrograph ``(h, w)``; returns ``(xy (n, 2) px, scores (n,), threshold)``.

    Scores are the DoG response at each peak; all peaks above the threshold
    are returned, best first.
    """
    radius = cfg.diameter / 2.0
    response = dog_response(image, cfg.diameter, cfg.dark_particles)
    border = cfg.exclude_border or radius / 2.0
    xy, scores = find_peaks(response, cfg.min_distance or radius, exclude_border=border)
    if cfg.threshold == "auto":
        noise = noise_peak_heights(image, cfg.diameter, cfg.min_distance or radius,
                                   cfg.dark_particles)
        threshold = calibrated_threshold(scores, noise)
    else:
        threshold = float(cfg.threshold)
    keep = scores > threshold
    return xy[keep], scores[keep], threshold

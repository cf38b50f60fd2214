"""Difference-of-Gaussians baseline picker (template-free blob detection).

The classic DoG picker: band-pass the micrograph with two Gaussians matched to
the particle radius, take local maxima of the response at least a radius
apart, and keep those above a threshold (automatic: the height that pure-noise
peaks rarely reach; or a given number in units of the response's robust
standard deviation). It knows
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


def noise_threshold(image: np.ndarray, diameter: float, min_distance: float,
                    dark_particles: bool = True, quantile: float = 0.5,
                    seed: int = 0) -> float:
    """Height that only ``1 - quantile`` of pure-noise peaks exceed (default: the median).

    The same DoG and peak search run on a pixel-shuffled copy of the image:
    same intensity distribution and noise level, no structure. Its peak heights
    are what noise alone produces, so the cut controls the false-positive rate
    without being pulled by a few very strong contaminants.
    """
    rng = np.random.default_rng(seed)
    median, scale = robust_scale(dog_filter(image, diameter, dark_particles))
    shuffled = rng.permutation(image.ravel()).reshape(image.shape)
    noise = (dog_filter(shuffled, diameter, dark_particles) - median) / scale
    _, heights = find_peaks(noise, min_distance, refine=False)
    return float(np.quantile(heights, quantile)) if len(heights) else 0.0


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
        threshold = noise_threshold(image, cfg.diameter, cfg.min_distance or radius,
                                    cfg.dark_particles)
    else:
        threshold = float(cfg.threshold)
    keep = scores > threshold
    return xy[keep], scores[keep], threshold

"""Telling species apart from a few labels: nearest prototype of in-plane radial profiles.

With one or a few labels per species the detector finds particles well before
its species channels tell them apart (at 1% labels a quarter of its confident
peaks had the right species, chance level for three). Species usually differ
in size and radial density, which a rotation-invariant profile captures from a
single example. The profile is taken in a thin slab about the centre's
z-section (in the plane the missing wedge leaves intact), after a light
Gaussian smoothing that averages the noise.

Measured once (a throwaway script over the benchmark's simulated tomograms at
the true centres: 3 species of 22, 16 and 12 voxels, SNR 0.1, 6 draws of the
labels): 0.83 of the particles got the right species from one label per
species, 0.87 from 5%; a spherical profile without smoothing got 0.47. The
tomo benchmark measures the effect on picking (F1 with and without species).
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from scipy.ndimage import gaussian_filter

from .data import Tomogram

SLAB = 2        # voxels above and below the centre's section
SMOOTH = 1.0    # Gaussian sigma, voxels, before the profile is taken


def profile_radius(box: float) -> int:
    """Profiles reach one particle diameter from the centre (the largest species fits)."""
    return max(3, int(np.ceil(box)))


def radial_profiles(tomo: Tomogram, centres: np.ndarray, radius: int) -> np.ndarray:
    """In-plane radial profiles ``(n, radius + 1)`` (normalised density per ring of 1 voxel)
    of the slab ``|dz| <= SLAB`` about each centre ``(n, 3)`` (x, y, z voxels)."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    ring = np.minimum(np.round(np.hypot(xx, yy)).astype(int), radius + 1).ravel()
    counts = np.bincount(ring, minlength=radius + 2)[:radius + 1]
    size = np.array([2 * (SLAB + 2) + 1, 2 * radius + 1, 2 * radius + 1])
    out = np.zeros((len(centres), radius + 1), np.float32)
    for i, (x, y, z) in enumerate(np.round(np.asarray(centres, float)).astype(int)):
        lo = np.array([z - SLAB - 2, y - radius, x - radius])
        block = gaussian_filter(tomo.read(lo, size)[0].numpy(), SMOOTH)
        section = block[2:2 + 2 * SLAB + 1].mean(axis=0).ravel()
        out[i] = np.bincount(ring, section, minlength=radius + 2)[:radius + 1] / counts
    return out


def class_prototypes(profiles: np.ndarray, classes: np.ndarray) -> Dict[int, np.ndarray]:
    """The mean profile of each species' labels: ``{class: (radius + 1,)}``."""
    return {int(k): profiles[classes == k].mean(axis=0) for k in np.unique(classes)}


def nearest_species(profiles: np.ndarray, prototypes: Dict[int, np.ndarray]) -> np.ndarray:
    """The species ``(n,)`` whose prototype is nearest (Euclidean) to each profile
    ``(n, radius + 1)``."""
    keys = sorted(prototypes)
    table = np.stack([prototypes[k] for k in keys])
    d = ((profiles[:, None, :] - table[None]) ** 2).sum(axis=-1)
    return np.array(keys)[d.argmin(axis=1)] if len(profiles) else np.empty(0, int)

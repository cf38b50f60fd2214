"""Realistic synthetic micrographs with exact ground truth.

Each micrograph is built the way a real one forms:

1. particles: projections of a 3D density (a real map, or a generated
   asymmetric pseudo-atomic one) at uniformly random 3D orientations, placed
   from sparse to touching (``crowding``, ``min_separation``);
2. false-positive lures: ice-crystal contaminants (dense irregular polygons),
   protein aggregates (clumps of overlapping particles) and, on some
   micrographs, a carbon-film edge with amorphous carbon texture;
3. vitreous ice: a thickness gradient (intensity ramp) and amorphous texture;
4. the microscope: a CTF (defocus with astigmatism, amplitude contrast,
   B-factor envelope) applied to the projected potential;
5. the detector: shot noise (Poisson) at a dose chosen with the contrast so
   that the particle SNR equals ``snr``.

SNR is defined as the variance of the noise-free particle signal over the
particle discs divided by the shot-noise variance there. Everything is drawn
from one seeded generator: the same config gives the same files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd
from scipy import ndimage

from ..config import MicrographSimConfig, to_dict
from ..io.atomic import write_text_atomic
from ..io.coordinates import make_coordinates, write_coordinate_table
from ..io.mrc import write_mrc
from .ctf import apply_filter, ctf_2d
from .density import (PointDensity, density_from_map, generated_density, project_particles,
                      random_rotations)

LURE_CLASSES = {"ice": 1, "aggregate": 2, "carbon_edge": 3}


@dataclass
class SimulatedMicrograph:
    """One simulated image ``(h, w)`` (electron counts) with its truth.

    ``particles``: ``(n, 2)`` centres (x, y) px; ``lures``: list of (kind, x, y);
    ``expected``: the noise-free expected counts ``(h, w)`` behind ``image``.
    """
    image: np.ndarray
    particles: np.ndarray
    lures: List[tuple]
    defocus_um: float
    dose_per_px: float
    contrast: float
    carbon_mask: Optional[np.ndarray] = None
    expected: Optional[np.ndarray] = None


# ------------------------------------------------------------------ placement

def place_centres(n: int, shape: tuple, min_dist: float, margin: float,
                  rng: np.random.Generator, keep_out: Optional[np.ndarray] = None,
                  tries_per_point: int = 40) -> np.ndarray:
    """Up to ``n`` centres (x, y) px at least ``min_dist`` apart, by dart throwing.

    ``keep_out`` is an optional boolean ``(h, w)`` mask of forbidden centres.
    """
    h, w = shape
    accepted = np.empty((0, 2))
    for _ in range(n * tries_per_point):
        if len(accepted) >= n:
            break
        p = rng.uniform([margin, margin], [w - margin, h - margin])
        if keep_out is not None and keep_out[int(p[1]), int(p[0])]:
            continue
        if len(accepted) and np.min(np.sum((accepted - p) ** 2, axis=1)) < min_dist ** 2:
            continue
        accepted = np.vstack([accepted, p])
    return accepted


def _smooth_field(shape: tuple, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma`` px."""
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-12)


# ------------------------------------------------------------------ lures

def _polygon_mask(shape: tuple, centre: np.ndarray, radius: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of an irregular polygon (an ice crystal) around ``centre`` (x, y) px."""
    n = int(rng.integers(5, 10))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.6, 1.2, n)
    stretch = rng.uniform(1.0, 2.0)
    vx = centre[0] + stretch * radii * np.cos(angles)
    vy = centre[1] + radii * np.sin(angles) / stretch
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    inside = np.zeros(shape, dtype=bool)
    j = n - 1
    for i in range(n):  # even-odd rule
        cond = ((vy[i] > yy) != (vy[j] > yy)) & \
            (xx < (vx[j] - vx[i]) * (yy - vy[i]) / (vy[j] - vy[i] + 1e-12) + vx[i])
        inside ^= cond
        j = i
    return inside


def _carbon_mask(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Soft mask (0..1) of carbon film outside a large hole whose edge crosses the image."""
    h, w = shape
    radius = rng.uniform(1.5, 3.0) * max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    # put the hole centre so that its rim passes 15-35% into the image from one side
    inset = rng.uniform(0.15, 0.35) * max(h, w)
    cx = w / 2 - np.cos(angle) * (radius - max(h, w) / 2 + inset)
    cy = h / 2 - np.sin(angle) * (radius - max(h, w) / 2 + inset)
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.hypot(xx - cx, yy - cy) - radius
    return 1.0 / (1.0 + np.exp(-dist / 1.5))


def _edge_points(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Points (x, y) along the 0.5 contour of a soft mask, about ``spacing`` px apart."""
    edge = (mask > 0.5) & ~ndimage.binary_erosion(mask > 0.5)
    edge[[0, -1], :] = False
    edge[:, [0, -1]] = False
    yx = np.argwhere(edge)
    if len(yx) == 0:
        return np.empty((0, 2))
    keep = [yx[0]]
    for p in yx[1:]:
        if np.min(np.sum((np.array(keep) - p) ** 2, axis=1)) >= spacing ** 2:
            keep.append(p)
    return np.array(keep, dtype=float)[:, ::-1]


# ------------------------------------------------------------------ one micrograph

def _phase_and_amplitude(cfg: MicrographSimConfig, density: PointDensity, shape: tuple,
                         rng: np.random.Generator):
    """Build the projected potentials (particles, the rest), transmission and truth."""
    px = cfg.pixel_size
    diameter = density.diameter / px
    radius = diameter / 2
    keep_out = np.zeros(shape, dtype=bool)
    other = np.zeros(shape)
    absorb = np.zeros(shape)
    lures: List[tuple] = []
    mean_particle = float(density.weights.sum()) / (np.pi * (radius * px) ** 2)

    carbon = None
    if rng.uniform() < cfg.carbon_edge:
        carbon = _carbon_mask(shape, rng)
        texture = _smooth_field(shape, 1.5, rng)
        other += mean_particle * (0.8 * carbon + 0.4 * carbon * texture)
        absorb += 0.1 * carbon
        lures += [("carbon_edge", x, y) for x, y in _edge_points(carbon, diameter)]

    for _ in range(rng.poisson(cfg.ice_crystals)):
        c = rng.uniform([0, 0], [shape[1], shape[0]])
        mask = _polygon_mask(shape, c, radius * rng.uniform(0.5, 2.0), rng)
        if not mask.any():
            continue
        soft = ndimage.gaussian_filter(mask.astype(float), 1.0)
        other += 4.0 * mean_particle * soft
        absorb += 0.6 * soft
        keep_out |= ndimage.binary_dilation(mask, iterations=int(radius))
        lures.append(("ice", float(c[0]), float(c[1])))

    for _ in range(rng.poisson(cfg.aggregates)):
        c = rng.uniform([radius, radius], [shape[1] - radius, shape[0] - radius])
        k = int(rng.integers(6, 14))
        offsets = rng.normal(scale=0.5 * radius, size=(k, 2))
        other += project_particles(density, c + offsets, random_rotations(k, rng), shape, px)
        yy, xx = np.ogrid[0:shape[0], 0:shape[1]]
        keep_out |= (xx - c[0]) ** 2 + (yy - c[1]) ** 2 < (2.5 * radius) ** 2
        lures.append(("aggregate", float(c[0]), float(c[1])))

    n_target = int(cfg.crowding * shape[0] * shape[1] / (np.pi * radius ** 2))
    centres = place_centres(n_target, shape, cfg.min_separation * diameter, radius * 0.75, rng,
                            keep_out)
    if carbon is not None and len(centres):  # fewer particles adsorb on carbon
        on_carbon = carbon[centres[:, 1].astype(int), centres[:, 0].astype(int)] > 0.5
        centres = centres[~on_carbon | (rng.uniform(size=len(centres)) < 0.3)]
    particles = project_particles(density, centres, random_rotations(len(centres), rng),
                                  shape, px)
    return particles, other, absorb, centres, lures, carbon


def _ice(shape: tuple, gradient: float, rng: np.random.Generator) -> np.ndarray:
    """Relative ice thickness ``(h, w)``: 1 + a linear ramp + slow undulation (0: flat ice)."""
    h, w = shape
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5))
    return 1.0 + gradient * (ramp + 0.15 * _smooth_field(shape, max(h, w) / 8, rng))


def _disc_mask(shape: tuple, centres: np.ndarray, radius: float) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.ogrid[0:shape[0], 0:shape[1]]
    for x, y in centres:
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2
    return mask


def simulate_micrograph(cfg: MicrographSimConfig, density: PointDensity,
                        rng: np.random.Generator) -> SimulatedMicrograph:
    """Simulate one micrograph (see the module docstring for the image model)."""
    shape = tuple(int(s) for s in cfg.shape)
    px = cfg.pixel_size
    particles, other, absorb, centres, lures, carbon = \
        _phase_and_amplitude(cfg, density, shape, rng)
    thickness = _ice(shape, cfg.ice_gradient, rng)
    defocus = rng.uniform(*cfg.defocus_um) * 1e4
    astig = rng.uniform(0.0, 0.05) * defocus
    ctf = ctf_2d(shape, px, defocus + astig, defocus - astig, rng.uniform(0, np.pi),
                 cfg.voltage_kv, cfg.cs_mm, cfg.amplitude_contrast, cfg.bfactor)
    phase_p = apply_filter(particles, ctf)
    discs = _disc_mask(shape, centres, density.diameter / px / 2)
    if not discs.any():
        discs = np.ones(shape, dtype=bool)
    scale = phase_p[discs].std() + 1e-12
    ice_texture = np.sqrt(cfg.ice_texture) * np.sqrt(thickness) * rng.normal(size=shape)
    phase = (phase_p + apply_filter(other, ctf)) / scale + apply_filter(ice_texture, ctf)
    transmission = np.exp(-0.5 * (thickness - 1.0) - absorb)
    dose_px = cfg.dose * px * px
    signal = transmission * phase_p / scale
    contrast = np.sqrt(cfg.snr * transmission[discs].mean() / (dose_px * signal[discs].var()))
    expected = dose_px * transmission * np.clip(1.0 + contrast * phase, 0.05, None)
    image = rng.poisson(expected).astype(np.float32)
    return SimulatedMicrograph(image, centres, lures, defocus / 1e4, dose_px, float(contrast),
                               carbon, expected.astype(np.float32))


# ------------------------------------------------------------------ data set

def load_density(cfg: MicrographSimConfig, rng: np.random.Generator) -> PointDensity:
    """The particle of a data set: the map in ``cfg.density`` or a generated one."""
    if cfg.density:
        return density_from_map(cfg.density, rng)
    return generated_density(cfg.particle_diameter_A, rng)


def pick_exemplars(centres: np.ndarray, shape: tuple, box: int, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """``n`` truth centres at least half a box from every border (indices into centres)."""
    half = box / 2
    ok = np.flatnonzero((centres[:, 0] >= half) & (centres[:, 0] <= shape[1] - half) &
                        (centres[:, 1] >= half) & (centres[:, 1] <= shape[0] - half))
    return rng.choice(ok, size=min(n, len(ok)), replace=False)


def simulate_dataset(cfg: MicrographSimConfig, out_dir: str | Path,
                     progress=None) -> dict:
    """Simulate ``cfg.n_micrographs`` micrographs and write them with their truth.

    Writes ``micrographs/mic_NNN.mrc``, ``truth.star`` (all particle centres),
    ``exemplars.star`` (``cfg.exemplars`` particles of the first micrograph),
    ``lures.star`` (class 1 ice, 2 aggregate, 3 carbon edge) and ``meta.json``.
    Returns the metadata dict (also in ``meta.json``).
    """
    out = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    density = load_density(cfg, rng)
    box = int(2 * round(density.diameter / cfg.pixel_size / 2))
    truth, lures, per_mic = [], [], {}
    exemplars = None
    iterator = range(cfg.n_micrographs)
    for i in (progress(iterator) if progress else iterator):
        mic = simulate_micrograph(cfg, density, rng)
        name = f"micrographs/mic_{i:03d}.mrc"
        write_mrc(out / name, mic.image, cfg.pixel_size)
        truth.append(make_coordinates(name, mic.particles))
        if mic.lures:
            kinds = [LURE_CLASSES[k] for k, _, _ in mic.lures]
            lures.append(make_coordinates(name, np.array([[x, y] for _, x, y in mic.lures]),
                                          klass=np.array(kinds)))
        if i == 0:
            idx = pick_exemplars(mic.particles, mic.image.shape, box, cfg.exemplars, rng)
            exemplars = make_coordinates(name, mic.particles[np.sort(idx)])
        per_mic[name] = {"defocus_um": round(mic.defocus_um, 4), "dose_per_px": mic.dose_per_px,
                         "contrast": mic.contrast, "n_particles": len(mic.particles),
                         "n_lures": len(mic.lures), "carbon_edge": mic.carbon_mask is not None}
    truth_df = pd.concat(truth, ignore_index=True)
    write_coordinate_table(truth_df, out / "truth.star")
    write_coordinate_table(exemplars, out / "exemplars.star")
    lure_df = pd.concat(lures, ignore_index=True) if lures else make_coordinates("", np.empty((0, 2)))
    write_coordinate_table(lure_df, out / "lures.star")
    meta = {"kind": "micrographs", "pixel_size_A": cfg.pixel_size, "box_px": box,
            "particle_diameter_px": round(density.diameter / cfg.pixel_size, 2),
            "density": density.name, "n_particles": int(len(truth_df)),
            "micrographs": per_mic, "config": to_dict(cfg)}
    write_text_atomic(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta

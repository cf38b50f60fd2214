"""Synthetic tomograms with exact ground truth: several species, missing wedge.

A tomogram ``(d, h, w)`` holds particles of several species (real maps or
generated densities) at random 3D positions and orientations inside an ice
slab. The density is filtered with an isotropic CTF and the missing wedge of a
single-axis tilt series (tilt axis y, +- ``tilt_range_deg``), which elongates
particles along z. Noise is anisotropic: reconstruction noise shaped by the
same wedge, plus a weaker isotropic part. SNR is the variance of the
noise-free particle signal inside the particle spheres over the noise variance.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pandas as pd
from scipy import ndimage

from ..config import TomogramSimConfig, to_dict
from ..io.atomic import write_text_atomic
from ..io.coordinates import make_coordinates, write_coordinate_table
from ..io.mrc import write_mrc
from .ctf import apply_filter, ctf_radial, frequency_grid
from .density import PointDensity, density_from_map, generated_density, random_rotations, splat


def missing_wedge_mask(shape: tuple, tilt_range_deg: float) -> np.ndarray:
    """Boolean mask on the ``rfftn`` grid of ``(d, h, w)``: True where the tilt series samples.

    Tilting about the y axis samples the Fourier planes that contain k_y and
    lie within ``tilt_range_deg`` of the k_x axis: |k_z| <= tan(range) |k_x|.
    """
    kz, _, kx = frequency_grid(shape, 1.0)
    mask = np.abs(kz) <= np.tan(np.deg2rad(tilt_range_deg)) * np.abs(kx) + 1e-12
    return np.broadcast_to(mask, kz.shape[:1] + (shape[1],) + kx.shape[2:]).copy()


def place_centres_3d(n: int, shape: tuple, radii: np.ndarray, slab: float,
                     rng: np.random.Generator, tries_per_point: int = 40) -> tuple:
    """Centres (x, y, z) px for ``n`` particles of the given radii without overlap.

    Returns ``(centres (m, 3), index (m,))`` into ``radii`` of the placed ones.
    """
    d, h, w = shape
    placed, kinds = [], []
    zlo, zhi = d * (1 - slab) / 2, d * (1 + slab) / 2
    for i in rng.permutation(np.repeat(np.arange(len(radii)), n)):
        r = radii[i]
        for _ in range(tries_per_point):
            p = rng.uniform([r, r, max(r, zlo)], [w - r, h - r, min(d - r, zhi)])
            if all(np.linalg.norm(q - p) >= radii[k] + r for q, k in zip(placed, kinds)):
                placed.append(p)
                kinds.append(i)
                break
    return np.array(placed).reshape(-1, 3), np.array(kinds, dtype=int)


def _species(cfg: TomogramSimConfig, rng: np.random.Generator) -> List[PointDensity]:
    if cfg.densities:
        return [density_from_map(p, rng) for p in cfg.densities]
    return [generated_density(cfg.diameters_A[i % len(cfg.diameters_A)], rng)
            for i in range(cfg.n_species)]


def simulate_tomogram(cfg: TomogramSimConfig, species: List[PointDensity],
                      rng: np.random.Generator) -> tuple:
    """One tomogram ``(d, h, w)`` float32 and its truth ``(centres (n, 3) px, class (n,))``."""
    shape = tuple(int(s) for s in cfg.shape)
    vx = cfg.voxel_size
    radii = np.array([s.diameter / vx / 2 for s in species])
    volume_each = cfg.crowding * np.prod(shape) / len(species)
    n_each = int(max(1, volume_each / np.mean(4 / 3 * np.pi * radii ** 3)))
    centres, kinds = place_centres_3d(n_each, shape, radii, 0.8, rng)
    density = np.zeros(shape)
    for k, sp in enumerate(species):
        mine = centres[kinds == k]
        rot = random_rotations(len(mine), rng)
        pts = np.einsum("nij,pj->npi", rot, sp.points) / vx + mine[:, None, :]
        density += splat(pts.reshape(-1, 3), np.tile(sp.weights, len(mine)), shape)
    density = ndimage.gaussian_filter(density, max(3.0 / vx, 0.5))
    transfer = ctf_radial(shape, vx, cfg.defocus_um * 1e4, bfactor=200.0)
    wedge = missing_wedge_mask(shape, cfg.tilt_range_deg)
    signal = apply_filter(density, transfer * wedge)
    inside = np.zeros(shape, dtype=bool)
    zz, yy, xx = np.ogrid[0:shape[0], 0:shape[1], 0:shape[2]]
    for (x, y, z), k in zip(centres, kinds):
        inside |= (xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= radii[k] ** 2
    signal /= signal[inside].std() + 1e-12
    noise = apply_filter(rng.normal(size=shape), wedge) + 0.3 * rng.normal(size=shape)
    noise /= noise.std()
    tomo = signal * np.sqrt(cfg.snr) + noise
    return tomo.astype(np.float32), centres, kinds + 1


def simulate_tomograms(cfg: TomogramSimConfig, out_dir: str | Path, progress=None) -> dict:
    """Simulate ``cfg.n_tomograms`` tomograms; write them, ``truth3d.star`` and ``meta.json``."""
    out = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    species = _species(cfg, rng)
    truth = []
    iterator = range(cfg.n_tomograms)
    for i in (progress(iterator) if progress else iterator):
        tomo, centres, classes = simulate_tomogram(cfg, species, rng)
        name = f"tomograms/tomo_{i:03d}.mrc"
        write_mrc(out / name, tomo, cfg.voxel_size)
        truth.append(make_coordinates(name, centres, klass=classes))
    truth_df = pd.concat(truth, ignore_index=True)
    write_coordinate_table(truth_df, out / "truth3d.star")
    meta = {"kind": "tomograms", "voxel_size_A": cfg.voxel_size,
            "species": [{"class": k + 1, "name": s.name,
                         "diameter_px": round(s.diameter / cfg.voxel_size, 2)}
                        for k, s in enumerate(species)],
            "n_particles": int(len(truth_df)), "config": to_dict(cfg)}
    write_text_atomic(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta

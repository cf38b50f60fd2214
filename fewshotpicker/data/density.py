"""3D particle densities as weighted point clouds, and their projections.

A density is a set of points (Å, centred on the centre of mass) with weights.
Projecting at a random orientation is exact and cheap: rotate the points and
splat them onto the pixel grid with bilinear weights, then blur by the point
size. Real maps (MRC) are turned into point clouds by sampling their voxels;
without a map, an asymmetric pseudo-atomic density is generated in code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..io.mrc import read_volume


@dataclass
class PointDensity:
    """Points ``(n, 3)`` in Å (x, y, z) about the centre of mass, weights ``(n,)``."""
    points: np.ndarray
    weights: np.ndarray
    name: str = "generated"

    @property
    def diameter(self) -> float:
        """Particle diameter in Å: twice the 98th-percentile radius, weighted."""
        r = np.linalg.norm(self.points, axis=1)
        order = np.argsort(r)
        cum = np.cumsum(self.weights[order]) / self.weights.sum()
        return 2.0 * float(r[order][np.searchsorted(cum, 0.98)])


def _centre(points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return points - (points * weights[:, None]).sum(0) / weights.sum()


def generated_density(diameter_A: float, rng: np.random.Generator,
                      spacing_A: float = 4.0) -> PointDensity:
    """An asymmetric pseudo-atomic particle of about ``diameter_A`` Å.

    Three to five ellipsoidal domains of unequal size, placed off-centre so the
    particle has no symmetry (its projections differ with orientation), filled
    with pseudo-atoms at roughly ``spacing_A`` Å spacing.
    """
    radius = diameter_A / 2.0
    n_domains = int(rng.integers(3, 6))
    clouds = []
    for d in range(n_domains):
        axes = radius * rng.uniform(0.3, 0.55, size=3) * (1.0 if d else 1.3)
        centre = rng.normal(size=3)
        centre *= (radius - axes.max()) * rng.uniform(0.3, 1.0) / np.linalg.norm(centre)
        volume = 4.0 / 3.0 * np.pi * np.prod(axes)
        n = int(volume / spacing_A ** 3)
        u = rng.normal(size=(n, 3))
        u *= (rng.uniform(size=(n, 1)) ** (1 / 3)) / np.linalg.norm(u, axis=1, keepdims=True)
        frame = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
        clouds.append(centre + (u * axes) @ frame.T)
    points = np.concatenate(clouds)
    weights = np.ones(len(points))
    points = _centre(points, weights)
    scale = diameter_A / PointDensity(points, weights).diameter
    return PointDensity(points * scale, weights)


def density_from_map(path: str | Path, rng: np.random.Generator,
                     samples_per_voxel: int = 4) -> PointDensity:
    """Turn an MRC map into a point cloud: jittered samples of the voxels above noise.

    The map's voxel size sets the scale (Å). Voxels below a threshold (mean +
    1 std of the map) are dropped, which removes the solvent; each kept voxel
    gives ``samples_per_voxel`` points spread uniformly inside it.
    """
    vol = read_volume(path)
    if not vol.pixel_size:
        raise InputError(f"{path}: the map has no voxel size in its header, so its scale "
                         f"in Å is unknown.")
    data = vol.data - np.median(vol.data)
    mask = data > data.mean() + data.std()
    if mask.sum() < 10:
        raise InputError(f"{path}: the map holds too little density above its noise level "
                         f"to be used as a particle.")
    zyx = np.argwhere(mask).astype(float)
    w = data[mask].astype(float)
    zyx = np.repeat(zyx, samples_per_voxel, 0) + rng.uniform(-0.5, 0.5,
                                                             (len(zyx) * samples_per_voxel, 3))
    w = np.repeat(w, samples_per_voxel) / samples_per_voxel
    xyz = zyx[:, ::-1] * vol.pixel_size
    return PointDensity(_centre(xyz, w), w, name=Path(path).stem)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, 3, 3)`` rotation matrices, uniform on SO(3)."""
    return Rotation.random(n, random_state=int(rng.integers(2**31))).as_matrix().reshape(n, 3, 3)


def splat(points_px: np.ndarray, weights: np.ndarray, shape: tuple) -> np.ndarray:
    """Accumulate weighted points into an image or volume with (bi/tri)linear weights.

    Parameters
    ----------
    points_px : ``(n, k)`` positions in pixels, k = 2 (x, y) or 3 (x, y, z).
    weights : ``(n,)``.
    shape : output shape, ``(h, w)`` or ``(d, h, w)``.

    Returns a float64 array of ``shape``; points outside are dropped.
    """
    k = points_px.shape[1]
    grid_shape = tuple(shape)
    base = np.floor(points_px).astype(np.int64)
    frac = points_px - base
    out = np.zeros(int(np.prod(grid_shape)), dtype=np.float64)
    dims = grid_shape[::-1]  # x, y, (z) sizes
    for corner in np.ndindex(*(2,) * k):
        idx = base + np.array(corner)
        wt = weights * np.prod(np.where(np.array(corner) == 1, frac, 1.0 - frac), axis=1)
        inside = np.all((idx >= 0) & (idx < np.array(dims)), axis=1)
        flat = np.zeros(inside.sum(), dtype=np.int64)
        stride = 1
        for axis in range(k):
            flat += idx[inside, axis] * stride
            stride *= dims[axis]
        out += np.bincount(flat, weights=wt[inside], minlength=out.size)
    return out.reshape(grid_shape)


def project_particles(density: PointDensity, centres_px: np.ndarray, rotations: np.ndarray,
                      shape: tuple, pixel_size: float, point_sigma_A: float = 3.0) -> np.ndarray:
    """Projected density of many particles on one image.

    Parameters
    ----------
    density : the particle.
    centres_px : ``(n, 2)`` particle centres (x, y) in pixels.
    rotations : ``(n, 3, 3)`` orientation of each particle.
    shape : ``(h, w)`` of the image.
    pixel_size : Å per pixel.
    point_sigma_A : blur of each point (Å), so the projection is smooth.

    Returns ``(h, w)`` float64, in density units x Å (sum along z).
    """
    if len(centres_px) == 0:
        return np.zeros(shape)
    rotated = np.einsum("nij,pj->npi", rotations, density.points)[..., :2] / pixel_size
    xy = (rotated + centres_px[:, None, :]).reshape(-1, 2)
    w = np.tile(density.weights, len(centres_px))
    image = splat(xy, w, shape)
    sigma = max(point_sigma_A / pixel_size, 0.5)
    return ndimage.gaussian_filter(image, sigma)

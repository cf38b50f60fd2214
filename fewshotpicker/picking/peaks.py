"""Peaks of a score map: local maxima at least a minimum distance apart.

Pure numpy/scipy functions on ``(h, w)`` maps (and ``(d, h, w)`` volumes),
tested on synthetic maps with known answers.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree


def _disk_footprint(radius: float, ndim: int) -> np.ndarray:
    r = max(int(np.floor(radius)), 1)
    grid = np.indices((2 * r + 1,) * ndim) - r
    return (grid ** 2).sum(0) <= radius ** 2 + 1e-9


def suppress_close(points: np.ndarray, scores: np.ndarray, min_distance: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best score first, none closer than
    ``min_distance`` (px) to a better one."""
    order = np.argsort(-scores, kind="stable")
    if min_distance <= 0 or len(points) < 2:
        return order
    tree = cKDTree(points)
    alive = np.ones(len(points), dtype=bool)
    keep = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        alive[tree.query_ball_point(points[i], min_distance - 1e-9)] = False
    return np.array(keep, dtype=int)


def find_peaks(score: np.ndarray, min_distance: float, threshold: float = -np.inf,
               exclude_border: float = 0.0, refine: bool = True) -> tuple:
    """Local maxima of ``score`` ``(h, w)`` or ``(d, h, w)``; flat regions give none.

    Parameters
    ----------
    min_distance : px; no two peaks closer (greedy by height).
    threshold : keep peaks with score above it.
    exclude_border : px; peaks closer to an edge are dropped.
    refine : move each peak by a 1D parabola fit per axis (sub-pixel).

    Returns ``(positions (n, ndim) in (x, y[, z]) order, px; scores (n,))``,
    sorted by descending score.
    """
    score = np.asarray(score, dtype=np.float64)
    # at least the full 3x3(x3) neighbourhood, however small min_distance is
    footprint = _disk_footprint(max(min_distance / 2, np.sqrt(score.ndim)), score.ndim)
    local_max = ndimage.maximum_filter(score, footprint=footprint, mode="nearest") == score
    not_flat = ndimage.minimum_filter(score, footprint=footprint, mode="nearest") < score
    candidates = local_max & not_flat & (score > threshold)
    idx = np.argwhere(candidates)  # (n, ndim) in array order (z), y, x
    if exclude_border > 0 and len(idx):
        shape = np.array(score.shape)
        inside = np.all((idx >= exclude_border) & (idx <= shape - 1 - exclude_border), axis=1)
        idx = idx[inside]
    values = score[tuple(idx.T)] if len(idx) else np.empty(0)
    keep = suppress_close(idx.astype(float), values, min_distance)
    idx, values = idx[keep], values[keep]
    pos = refine_positions(score, idx) if refine else idx.astype(float)
    return pos[:, ::-1].copy(), values


def refine_positions(score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-pixel peak positions (array order) by a parabola through each axis' neighbours."""
    pos = idx.astype(float)
    for axis in range(score.ndim):
        lo, hi = idx.copy(), idx.copy()
        lo[:, axis] = np.clip(idx[:, axis] - 1, 0, score.shape[axis] - 1)
        hi[:, axis] = np.clip(idx[:, axis] + 1, 0, score.shape[axis] - 1)
        f0, fm, fp = score[tuple(idx.T)], score[tuple(lo.T)], score[tuple(hi.T)]
        den = fm - 2 * f0 + fp
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = np.where(den < 0, 0.5 * (fm - fp) / den, 0.0)
        pos[:, axis] += np.clip(shift, -0.5, 0.5)
    return pos


def path_minima(score: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lowest value of ``score`` ``(h, w)`` on each straight path from ``starts`` to
    ``ends`` ``(m, 2)`` (x, y map px; bilinear, end points excluded): ``(m,)``. A path
    is sampled every half pixel, at least 7 times; all paths in one interpolation."""
    if len(starts) == 0:
        return np.empty(0)
    delta = ends - starts
    steps = np.maximum(8, np.ceil(2 * np.hypot(delta[:, 0], delta[:, 1])).astype(int))
    counts = steps - 1
    first = np.cumsum(counts) - counts
    path = np.repeat(np.arange(len(starts)), counts)
    k = np.arange(counts.sum()) - first[path] + 1          # 1 .. steps - 1 on each path
    pts = starts[path] + (k * (1.0 / steps[path]))[:, None] * delta[path]
    values = ndimage.map_coordinates(score, [pts[:, 1], pts[:, 0]], order=1, mode="nearest")
    return np.minimum.reduceat(values, first)


def suppress_shoulders(score: np.ndarray, positions: np.ndarray, values: np.ndarray,
                       reach: float, dip: float) -> np.ndarray:
    """Mask ``(n,)`` of the peaks that are not shoulders of a higher peak.

    A peak is a shoulder when a higher kept peak lies within ``reach`` (map px)
    and the straight path to it never falls more than ``dip`` of the peak's
    height above the map's median below the peak. Two particles side by side
    have a valley between them (the window between them is centred on
    neither); one particle scored off-centre on its flank has none.

    score: ``(h, w)``; positions: ``(n, 2)`` (x, y) map px; values: ``(n,)``.
    """
    keep = np.ones(len(values), dtype=bool)
    if reach <= 0 or len(values) < 2:
        return keep
    pairs = cKDTree(positions).query_pairs(reach, output_type="ndarray")
    low, high = _lower_then_higher(pairs, values)
    floor = values[low] - dip * (values[low] - float(np.median(score)))
    flat = path_minima(score, positions[low], positions[high]) > floor
    low, high = low[flat], high[flat]
    rank = np.empty(len(values), dtype=int)
    rank[np.argsort(-values, kind="stable")] = np.arange(len(values))
    # from the highest peak down, so each higher peak's own fate is settled first
    for i in np.argsort(rank[low], kind="stable"):
        if keep[high[i]]:
            keep[low[i]] = False
    return keep


def _lower_then_higher(pairs: np.ndarray, values: np.ndarray) -> tuple:
    """Index pairs ``(m, 2)`` -> ``(low (k,), high (k,))``, the lower-valued peak first;
    pairs of equal value are dropped (neither is the higher)."""
    a, b = pairs[:, 0], pairs[:, 1]
    unequal = values[a] != values[b]
    a, b = a[unequal], b[unequal]
    b_higher = values[b] > values[a]
    return np.where(b_higher, a, b), np.where(b_higher, b, a)


def ring_mean(score: np.ndarray, positions: np.ndarray, radius: float,
              points: int = 16) -> np.ndarray:
    """Mean of ``score`` ``(h, w)`` on a circle of ``radius`` (map px) around each of
    ``positions`` ``(n, 2)`` (x, y map px): ``(n,)``. Bilinear, ``points`` samples per
    circle; samples beyond the map take its nearest edge value."""
    if len(positions) == 0:
        return np.empty(0)
    angle = np.linspace(0.0, 2 * np.pi, points, endpoint=False)
    x = positions[:, :1] + radius * np.cos(angle)[None]
    y = positions[:, 1:2] + radius * np.sin(angle)[None]
    values = ndimage.map_coordinates(np.asarray(score, dtype=np.float64),
                                     [y.ravel(), x.ravel()], order=1, mode="nearest")
    return values.reshape(x.shape).mean(axis=1)


def overlapping(positions: np.ndarray, values: np.ndarray, reach: float) -> np.ndarray:
    """Mask ``(n,)`` of the peaks with a higher peak closer than ``reach`` (px): at most one
    of two such peaks can be a particle, since their boxes would overlap.

    positions: ``(n, 2)`` or ``(n, 3)`` px; values: ``(n,)``.
    """
    out = np.zeros(len(values), dtype=bool)
    if reach <= 0 or len(values) < 2:
        return out
    pairs = cKDTree(positions).query_pairs(reach - 1e-9, output_type="ndarray")   # (m, 2)
    a, b = values[pairs[:, 0]], values[pairs[:, 1]]
    out[pairs[:, 0][a < b]] = True
    out[pairs[:, 1][b < a]] = True
    return out

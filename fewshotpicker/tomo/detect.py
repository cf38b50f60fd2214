"""Detection on whole tomograms: tiles with overlap, 3D NMS, one cutoff per tomogram."""
from __future__ import annotations

from typing import Union

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree

from ..device import precision_autocast
from ..picking.threshold import mixture_cutoff
from .data import Tomogram, tiles
from .targets import local_peaks
from .unet3d import UNet3d

CANDIDATE_FLOOR = 0.02  # peaks below this probability are not even candidates


@torch.no_grad()
def detect(model: UNet3d, tomo: Tomogram, radius: int, tile: int,
           device: torch.device) -> pd.DataFrame:
    """Every local maximum (3D NMS at ``radius`` voxels) with probability above the floor:
    a table ``x, y, z`` (voxels), ``score`` (probability), ``class`` (1-based).

    The volume is processed in tiles whose cores partition it; each tile adds a
    halo of ``radius`` plus 16 voxels of context, and only peaks inside the core
    are kept, so memory is bounded by the tile, not by the tomogram.
    """
    model.eval()
    rows = []
    halo = radius + 16
    for lo, size, core_lo, core_hi in tiles(tomo.shape, tile, halo, model.multiple):
        x = tomo.read(lo, size)[None].to(device)
        with precision_autocast(device):
            prob = torch.sigmoid(model(x).float())[0]
        peaks = local_peaks(prob, radius, CANDIDATE_FLOOR).cpu().numpy()
        zyx = peaks[:, 1:] + lo
        keep = np.all((zyx >= core_lo) & (zyx < core_hi), axis=1)
        for (c, z, y, x_), pos in zip(peaks[keep], zyx[keep]):
            rows.append((pos[2], pos[1], pos[0], float(prob[c, z, y, x_]), int(c) + 1))
    return pd.DataFrame(rows, columns=["x", "y", "z", "score", "class"]).astype(
        {"x": float, "y": float, "z": float})


def suppress_across_classes(picks: pd.DataFrame, radius: float) -> pd.DataFrame:
    """Of picks of different species closer than ``radius``, keep the higher score."""
    if len(picks) < 2:
        return picks
    picks = picks.sort_values("score", ascending=False).reset_index(drop=True)
    tree = cKDTree(picks[["x", "y", "z"]].to_numpy(float))
    dropped = np.zeros(len(picks), bool)
    for i, j in sorted(tree.query_pairs(radius)):
        if not dropped[i]:
            dropped[j] = True
    return picks[~dropped].reset_index(drop=True)


def tomogram_cutoff(scores: np.ndarray, rule: Union[str, float]) -> float:
    """``auto``: where the top class of a 2- or 3-component mixture of the candidates'
    logits stops being the most probable (0.5 with too few candidates); or a number."""
    if rule != "auto":
        return float(rule)
    p = np.clip(np.asarray(scores, float), 1e-6, 1 - 1e-6)
    cut = mixture_cutoff(np.log(p / (1 - p)), components=(2, 3))
    return float(1 / (1 + np.exp(-cut))) if np.isfinite(cut) else 0.5

"""Slices through a tomogram with its picks: what the viewer shows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..io.atomic import atomic_path
from .data import Tomogram


def plot_slices(tomo: Tomogram, picks: pd.DataFrame, box: float, path: str | Path,
                n_slabs: int = 3) -> Path:
    """``n_slabs`` z-slabs (each a box thick, averaged) at evenly spaced depths, with the
    picks whose centre lies in the slab circled (colour per species)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.preview import draw_outlines

    d, h, w = tomo.shape
    half = max(1, int(round(box / 2)))
    depths = np.linspace(0, d, n_slabs + 2)[1:-1].astype(int)
    fig, axes = plt.subplots(1, n_slabs, figsize=(4.2 * n_slabs, 4.2 * h / w + 0.6), dpi=100,
                             squeeze=False)
    colours = ["yellow", "cyan", "magenta", "lime", "orange"]
    for ax, z in zip(axes[0], depths):
        lo, hi = max(0, z - half), min(d, z + half + 1)
        slab = np.asarray(tomo.data[lo:hi], dtype=np.float32).mean(axis=0)
        ax.imshow(slab, cmap="gray", vmin=np.percentile(slab, 1), vmax=np.percentile(slab, 99))
        mine = picks[(picks["z"] >= lo) & (picks["z"] < hi)]
        classes = mine.get("class", pd.Series(1, mine.index)).astype(int)
        draw_outlines(ax, mine[["x", "y"]].to_numpy(float), box,
                      colours=[colours[(k - 1) % len(colours)] for k in classes])
        ax.set_title(f"z {lo}-{hi - 1}: {len(mine)} picks", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{tomo.key}: {len(picks)} picks", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)

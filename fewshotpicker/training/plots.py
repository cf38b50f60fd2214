"""Loss curves as PNG."""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from ..io.atomic import atomic_path


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) < 3 or width < 2:
        return values
    width = min(width, len(values))
    kernel = np.ones(width) / width
    padded = np.concatenate([np.full(width - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_losses(history: List[dict], path: str | Path, title: str = "training") -> Path:
    """One panel per metric (loss, mse, scs, s_self, s_cross, ...), raw and smoothed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k not in ("step", "lr")]
    steps = np.array([h["step"] for h in history])
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), dpi=100, squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = np.array([h.get(key, np.nan) for h in history], dtype=float)
        ax.plot(steps, values, alpha=0.3, color="tab:blue")
        ax.plot(steps, _smooth(values, max(1, len(values) // 50)), color="tab:blue")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)

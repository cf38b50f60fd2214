"""The gallery a user checks before trusting the pruner: what is thrown away and what is close."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import numpy as np

from ..io.atomic import atomic_path

Row = Tuple[str, np.ndarray, np.ndarray]  # (title, crops (n, s, s), probabilities (n,))


def gallery_rows(probs: np.ndarray, threshold: float, n: int) -> List[Tuple[str, np.ndarray]]:
    """Which picks to show: ``[(title, indices into probs)]``.

    The most confidently rejected (lowest probability), the borderline ones
    (closest to the threshold, either side) and, for comparison, the most
    confidently kept.
    """
    order = np.argsort(probs, kind="stable")
    rejected = order[probs[order] < threshold][:n]
    near = np.argsort(np.abs(probs - threshold), kind="stable")[:n]
    borderline = near[np.argsort(probs[near], kind="stable")]
    kept = order[::-1][probs[order[::-1]] >= threshold][:n]
    return [("most confidently rejected", rejected), ("borderline", borderline),
            ("most confidently kept", kept)]


def plot_gallery(rows: List[Row], threshold: float, path: str | Path, title: str = "") -> Path:
    """One row of crops per entry of ``rows``, each crop labelled with its probability
    (red: rejected, green: kept)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max([len(c) for _, c, _ in rows] + [1])
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.1 * cols, 1.35 * len(rows) + 0.5),
                             dpi=100, squeeze=False)
    for r, (name, crops, probs) in enumerate(rows):
        axes[r, 0].set_title(f"{name} ({len(crops)})", fontsize=8, loc="left")
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(crops):
                ax.axis("off")
                continue
            ax.imshow(crops[c], cmap="gray")
            ax.set_xlabel(f"p={probs[c]:.2f}", fontsize=7,
                          color="tab:green" if probs[c] >= threshold else "tab:red")
    fig.suptitle(title or f"pruning at p >= {threshold:.2f}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)

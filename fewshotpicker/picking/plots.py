"""Figures of picking: score histogram with the cutoff; a micrograph with picks and score map."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path


def plot_score_histogram(scores: np.ndarray, cutoff: float, path: str | Path,
                         title: str = "", xlabel: str = "max cosine similarity to the exemplars",
                         what: str = "candidates") -> Path:
    """Histogram of scores with the chosen cutoff as a red line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.hist(scores, bins=40, color="tab:blue", alpha=0.8)
    if np.isfinite(cutoff):
        ax.axvline(cutoff, color="red", label=f"cutoff {cutoff:.3f}")
        ax.legend(fontsize=8)
    kept = int(np.sum(scores > cutoff))
    ax.set_title(f"{title}: {kept} of {len(scores)} {what} kept", fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(what, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def plot_picks(image: np.ndarray, score_map, picks_xy: np.ndarray, box: float,
               path: str | Path, truth_xy: np.ndarray | None = None, title: str = "") -> Path:
    """Two panels: the micrograph with picks (yellow circles; truth as green boxes if
    given) and the score map at micrograph scale with the same picks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    from ..data.preview import display_image

    h, w = image.shape
    fig, axes = plt.subplots(1, 2, figsize=(12, 6 * h / w + 0.4), dpi=100)
    axes[0].imshow(display_image(image), cmap="gray")
    gy, gx = score_map.scores.shape
    x0, y0 = score_map.grid_to_micrograph(np.array([[0, 0]]))[0]
    x1, y1 = score_map.grid_to_micrograph(np.array([[gx - 1, gy - 1]]))[0]
    half = score_map.stride_px / 2
    im = axes[1].imshow(score_map.scores, cmap="viridis",
                        extent=(x0 - half, x1 + half, y1 + half, y0 - half))
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="max cosine to exemplars")
    for ax in axes:
        for x, y in np.asarray(picks_xy).reshape(-1, 2):
            ax.add_patch(Circle((x, y), box / 2, fill=False, edgecolor="yellow", linewidth=0.8))
        if truth_xy is not None:
            for x, y in np.asarray(truth_xy).reshape(-1, 2):
                ax.add_patch(Rectangle((x - box / 2, y - box / 2), box, box, fill=False,
                                       edgecolor="lime", linewidth=0.6))
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)

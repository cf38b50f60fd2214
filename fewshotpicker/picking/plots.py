"""Figures of picking: score histogram with the cutoff; a micrograph with picks and score map."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..io.atomic import atomic_path
from ..io.coordinates import micrograph_key


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

    from ..data.preview import draw_outlines, show_micrograph

    h, w = image.shape
    fig, axes = plt.subplots(1, 2, figsize=(12, 6 * h / w + 0.4), dpi=100)
    show_micrograph(axes[0], image)
    gy, gx = score_map.scores.shape
    x0, y0 = score_map.grid_to_micrograph(np.array([[0, 0]]))[0]
    x1, y1 = score_map.grid_to_micrograph(np.array([[gx - 1, gy - 1]]))[0]
    half = score_map.stride_px / 2
    im = axes[1].imshow(score_map.scores, cmap="viridis",
                        extent=(x0 - half, x1 + half, y1 + half, y0 - half))
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="max cosine to exemplars")
    for ax in axes:
        draw_outlines(ax, picks_xy, box)
        if truth_xy is not None:
            draw_outlines(ax, truth_xy, box, "square", "lime", 0.6)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.axis("off")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def unusual_counts(counts: np.ndarray, limit: float = 4.0) -> np.ndarray:
    """Indices of the counts ``(n,)`` (picks per micrograph) that lie more than ``limit``
    robust standard deviations (1.4826 median absolute deviations, at least 1 pick and a
    tenth of the median) from the median: an empty grid square, thick ice or a broken
    exposure among the rest. None with fewer than 5 micrographs."""
    counts = np.asarray(counts, dtype=float)
    if len(counts) < 5:
        return np.empty(0, dtype=int)
    median = np.median(counts)
    spread = max(1.4826 * np.median(np.abs(counts - median)), 1.0, 0.1 * median)
    return np.flatnonzero(np.abs(counts - median) > limit * spread)


def plot_pick_summary(names: list, counts: np.ndarray, cutoffs: np.ndarray, unusual: np.ndarray,
                      path: str | Path, failed: int = 0) -> Path:
    """Picks and cutoff of every micrograph picked ``(n,)`` in input order, the ``unusual``
    ones (indices) in red and the first ten of them named; ``failed`` micrographs counted in
    the title."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    index = np.arange(len(counts))
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), dpi=100, sharex=True)
    for ax, values, label in ((axes[0], counts, "picks"), (axes[1], cutoffs, "cutoff")):
        ax.plot(index, values, ".", color="tab:blue", markersize=4)
        ax.plot(index[unusual], np.asarray(values)[unusual], "o", color="red", markersize=5,
                fillstyle="none")
        ax.set_ylabel(label, fontsize=8)
    axes[0].axhline(np.median(counts) if len(counts) else 0, color="grey", linewidth=0.8)
    for i in list(unusual)[:10]:
        axes[0].annotate(names[i], (i, counts[i]), fontsize=6, color="red",
                         xytext=(3, 3), textcoords="offset points")
    axes[0].set_title(f"{len(counts)} micrographs, {int(np.sum(counts))} picks "
                      f"(median {np.median(counts) if len(counts) else 0:.0f}); "
                      f"{len(unusual)} unusual in red" + (f"; {failed} not picked" if failed
                                                           else ""), fontsize=9)
    axes[1].set_xlabel("micrograph (input order)", fontsize=8)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def summarise_counts(summary: Dict[str, dict], path: Path, failed: int = 0) -> List[str]:
    """Plot every picked micrograph's picks and cutoff (``summary.png``; ``failed``: how many
    could not be picked); returns the names of those with unusually many or few picks
    (:func:`unusual_counts`)."""
    names = list(summary)
    counts = np.array([summary[n]["picks"] for n in names], dtype=float)
    unusual = unusual_counts(counts)
    if names:
        plot_pick_summary([micrograph_key(n) for n in names], counts,
                          np.array([summary[n]["cutoff"] for n in names], dtype=float),
                          unusual, path, failed)
    return [names[i] for i in unusual]

"""PNG previews: a micrograph (or a tomogram slice) with its boxes, for a person to look at."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from ..io.atomic import atomic_path


def display_image(image: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Band-pass an image and clip it to its 1-99 percentiles for display (float in 0..1).

    The low-pass (``sigma`` px) removes shot noise; subtracting a wide blur
    flattens ice gradients and carbon so particles keep their contrast.
    """
    image = image.astype(np.float64)
    smooth = ndimage.gaussian_filter(image, sigma)
    lo, hi = np.percentile(image, [2, 98])
    smooth -= ndimage.gaussian_filter(np.clip(image, lo, hi), max(image.shape) / 24)
    lo, hi = np.percentile(smooth, [1, 99])
    return np.clip((smooth - lo) / (hi - lo + 1e-12), 0, 1)


def save_preview(image: np.ndarray, path: str | Path, boxes: np.ndarray, box: float,
                 title: str = "", lures: Optional[np.ndarray] = None,
                 lure_labels: Optional[Sequence[str]] = None, others: Optional[np.ndarray] = None,
                 sigma: float = 1.5) -> Path:
    """Save ``image`` ``(h, w)`` with square boxes of side ``box`` px at ``boxes`` (n, 2) (x, y).

    Truth boxes are green; ``lures`` (m, 2) are marked red with their labels;
    ``others`` (k, 2), for example picks, are drawn as yellow circles.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle, Rectangle

    h, w = image.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w), dpi=110)
    ax.imshow(display_image(image, sigma), cmap="gray", origin="upper")
    for x, y in np.asarray(boxes).reshape(-1, 2):
        ax.add_patch(Rectangle((x - box / 2, y - box / 2), box, box, fill=False,
                               edgecolor="lime", linewidth=0.8))
    if others is not None:
        for x, y in np.asarray(others).reshape(-1, 2):
            ax.add_patch(Circle((x, y), box / 2, fill=False, edgecolor="yellow", linewidth=0.8))
    if lures is not None:
        for i, (x, y) in enumerate(np.asarray(lures).reshape(-1, 2)):
            ax.plot(x, y, "x", color="red", markersize=6)
            if lure_labels is not None and lure_labels[i] not in lure_labels[:i]:
                ax.text(x + 4, y - 4, lure_labels[i], color="red", fontsize=6)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)

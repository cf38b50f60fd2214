"""PNG previews: a micrograph (or a tomogram slice) with its boxes, for a person to look at."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..io.atomic import atomic_path
from .blur import gaussian_blur


# the longest side, in px, an image is drawn at: a figure's panel is narrower still
DISPLAY_SIDE = 1024


def binned_for_display(image: np.ndarray, max_side: int = DISPLAY_SIDE) -> tuple:
    """``(h, w)`` -> ``(binned (h // f, w // f), f)``: block means over ``f x f`` pixels, the
    smallest whole ``f`` that brings the longest side to ``max_side`` or under (1: as is;
    the last ``h % f`` rows and ``w % f`` columns are left out)."""
    factor = max(1, -(-max(image.shape) // max_side))
    if factor == 1:
        return image, 1
    h, w = (s // factor for s in image.shape)
    blocks = np.asarray(image[:h * factor, :w * factor], dtype=np.float64)
    return blocks.reshape(h, factor, w, factor).mean(axis=(1, 3)), factor


def draw_outlines(ax, xy: np.ndarray, size: float, shape: str = "circle",
                  colours="yellow", linewidth: float = 0.8) -> None:
    """Outline circles (diameter ``size``) or squares (side ``size``) centred on ``xy``
    ``(n, 2)`` (x, y, data units) on ``ax``, as one collection: added one patch at a time,
    matplotlib updated the axes' limits through each outline's Bezier curves (800 circles:
    18 s of a profiled 34 s figure, on a machine busy with a benchmark). ``colours``: one colour, or one per outline. The axes' limits
    are left to the caller."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle, Rectangle

    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    if shape == "circle":
        patches = [Circle((x, y), size / 2) for x, y in xy]
    else:
        patches = [Rectangle((x - size / 2, y - size / 2), size, size) for x, y in xy]
    ax.add_collection(PatchCollection(patches, facecolor="none", edgecolor=colours,
                                      linewidth=linewidth), autolim=False)


def show_micrograph(ax, image: np.ndarray, sigma: float = 1.5) -> None:
    """Draw ``image`` ``(h, w)`` on ``ax`` for display (:func:`display_image`), binned when
    large (:func:`binned_for_display`: drawn at full size, a 4096 x 4096 micrograph's figure
    took 22 s or more, its band-pass 3 s already at 1024 x 1024), in its own pixel coordinates so that boxes drawn over it in micrograph
    pixels land where they belong."""
    binned, factor = binned_for_display(image)
    h, w = binned.shape
    ax.imshow(display_image(binned, sigma / factor), cmap="gray",
              extent=(0, w * factor, h * factor, 0), interpolation="antialiased")


def display_image(image: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Band-pass an image and clip it to its 1-99 percentiles for display (float in 0..1).

    The low-pass (``sigma`` px) removes shot noise; subtracting a wide blur
    flattens ice gradients and carbon so particles keep their contrast.
    """
    image = image.astype(np.float64)
    smooth = ndimage.gaussian_filter(image, sigma)
    lo, hi = np.percentile(image, [2, 98])
    wide = gaussian_blur(torch.from_numpy(np.clip(image, lo, hi)), max(image.shape) / 24)
    smooth -= wide.numpy()   # through the FFT: a direct blur this wide took seconds
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

    h, w = image.shape
    fig, ax = plt.subplots(figsize=(8, 8 * h / w), dpi=110)
    show_micrograph(ax, image, sigma)
    draw_outlines(ax, boxes, box, "square", "lime")
    if others is not None:
        draw_outlines(ax, others, box)
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

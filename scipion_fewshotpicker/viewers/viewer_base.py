"""Show a PNG the engine wrote in a Scipion plot window (no computation here)."""
import os

from pyworkflow.gui.plotter import Plotter


def pngPlotter(path, title):
    """A Plotter holding the image at ``path``; an error if the engine did not write it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the engine did not write this figure.")
    import matplotlib.image as mpimg
    image = mpimg.imread(path)
    h, w = image.shape[:2]
    plotter = Plotter(figsize=(8, 8 * h / w), windowTitle=title)
    ax = plotter.createSubPlot(title, "", "")
    ax.imshow(image)
    ax.axis("off")
    return plotter

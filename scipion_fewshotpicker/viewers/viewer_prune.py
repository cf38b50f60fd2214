"""What FewShotProtPrune threw away: the gallery of crops and the probability histogram."""
from pyworkflow.viewer import DESKTOP_TKINTER, Viewer

from ..protocols import FewShotProtPrune
from .viewer_base import pngPlotter


class FewShotPruneViewer(Viewer):
    """The most confidently rejected, the borderline and the most confidently kept crops
    with their probabilities, and the histogram of all probabilities with the threshold."""
    _label = "rejected and borderline picks"
    _targets = [FewShotProtPrune]
    _environments = [DESKTOP_TKINTER]

    def _visualize(self, obj, **kwargs):
        folder = obj._modelFolder()
        name = obj.getRunName()
        return [pngPlotter(f"{folder}/gallery.png", f"{name}: gallery"),
                pngPlotter(f"{folder}/probabilities.png", f"{name}: probabilities")]

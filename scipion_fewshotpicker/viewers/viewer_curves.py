"""Training loss curves of FewShotProtPretrain, FewShotProtTrain and FewShotProtPrune."""
from pyworkflow.viewer import DESKTOP_TKINTER, Viewer

from ..protocols import FewShotProtPretrain, FewShotProtPrune, FewShotProtTrain
from .viewer_base import pngPlotter


class FewShotCurvesViewer(Viewer):
    """The loss curves (per step) that pretraining, fine-tuning or pruning drew."""
    _label = "loss curves"
    _targets = [FewShotProtPretrain, FewShotProtTrain, FewShotProtPrune]
    _environments = [DESKTOP_TKINTER]

    def _visualize(self, obj, **kwargs):
        folder = obj._modelFolder()
        return [pngPlotter(f"{folder}/losses.png", f"{obj.getRunName()}: losses")]

"""Training loss curves of FewShotProtPretrain and FewShotProtTrain."""
from pyworkflow.viewer import DESKTOP_TKINTER, Viewer

from ..protocols import FewShotProtPretrain, FewShotProtTrain
from .viewer_base import pngPlotter


class FewShotCurvesViewer(Viewer):
    """The loss curves (per step) that pretraining or fine-tuning drew."""
    _label = "loss curves"
    _targets = [FewShotProtPretrain, FewShotProtTrain]
    _environments = [DESKTOP_TKINTER]

    def _visualize(self, obj, **kwargs):
        folder = obj._modelFolder()
        return [pngPlotter(f"{folder}/losses.png", f"{obj.getRunName()}: losses")]

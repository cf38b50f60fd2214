"""Training loss curves of pretraining, fine-tuning, pruning and tomogram picking."""
from pyworkflow.viewer import DESKTOP_TKINTER, Viewer

from ..protocols import (FewShotProtPickTomo, FewShotProtPretrain, FewShotProtPrune,
                         FewShotProtTrain)
from .viewer_base import pngPlotter


class FewShotCurvesViewer(Viewer):
    """The loss curves (per step) that pretraining, fine-tuning or pruning drew."""
    _label = "loss curves"
    _targets = [FewShotProtPretrain, FewShotProtTrain, FewShotProtPrune, FewShotProtPickTomo]
    _environments = [DESKTOP_TKINTER]

    def _visualize(self, obj, **kwargs):
        folder = obj._modelFolder()
        return [pngPlotter(f"{folder}/losses.png", f"{obj.getRunName()}: losses")]

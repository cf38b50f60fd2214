"""Picks of FewShotProtPickTomo: slabs through one tomogram with its picks circled."""
import os

import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, ProtocolViewer

from ..convert import itemAt, tomoKey
from ..protocols import FewShotProtPickTomo
from .viewer_base import pngPlotter


class FewShotTomoPicksViewer(ProtocolViewer):
    """Three slabs (a particle thick) through the chosen tomogram with the picks whose
    centre lies in each slab."""
    _label = "slices with picks"
    _targets = [FewShotProtPickTomo]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label="Tomogram")
        form.addParam("tomoIndex", params.IntParam, default=1, label="Tomogram number",
                      help="Position of the tomogram in the input set (1 = first).")
        form.addParam("doShowSlices", params.LabelParam, label="Slices with picks",
                      help="Slabs at a quarter, half and three quarters of the depth.")

    def _getVisualizeDict(self):
        return {"doShowSlices": lambda p=None: self._show()}

    def _tomogram(self):
        return itemAt(self.protocol.inputTomograms.get(), self.tomoIndex.get())

    def figurePath(self):
        """The engine's figure of the chosen tomogram."""
        return os.path.join(self.protocol._modelFolder(), "slices",
                            tomoKey(self._tomogram()) + ".png")

    def _show(self):
        tomo = self._tomogram()
        return [pngPlotter(self.figurePath(), f"{tomo.getTsId()}: picks")]

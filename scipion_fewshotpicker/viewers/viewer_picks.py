"""Picks of FewShotProtPick on one micrograph: the picks over the micrograph and score map,
and that micrograph's score histogram with its cutoff; and the picks and cutoff of every
micrograph picked."""
import os

import pyworkflow.protocol.params as params
from pyworkflow.viewer import DESKTOP_TKINTER, ProtocolViewer

from ..convert import itemAt, micKey
from ..protocols import FewShotProtPick
from .viewer_base import pngPlotter


class FewShotPicksViewer(ProtocolViewer):
    """Picks and score histogram of one picked micrograph."""
    _label = "picks and scores"
    _targets = [FewShotProtPick]
    _environments = [DESKTOP_TKINTER]

    def _defineParams(self, form):
        form.addSection(label="Micrograph")
        form.addParam("micIndex", params.IntParam, default=1, label="Micrograph number",
                      help="Position of the micrograph in the input set (1 = first).")
        form.addParam("doShowPicks", params.LabelParam, label="Picks on micrograph and score map",
                      help="The micrograph with its picks, beside the score map.")
        form.addParam("doShowHistogram", params.LabelParam, label="Score histogram and cutoff",
                      help="All candidate scores of the micrograph and the chosen cutoff.")
        form.addSection(label="All micrographs")
        form.addParam("doShowCounts", params.LabelParam, label="Picks per micrograph",
                      help="Picks and cutoff of every micrograph picked so far, in the order "
                           "picked; those with unusually many or few picks (an empty grid "
                           "square, thick ice, a broken exposure) in red and named.")

    def _getVisualizeDict(self):
        return {"doShowPicks": lambda p=None: self._show("_picks.png", "picks"),
                "doShowHistogram": lambda p=None: self._show(".png", "score histogram"),
                "doShowCounts": lambda p=None: [pngPlotter(
                    self.protocol._getExtraPath("summary.png"), "picks per micrograph")]}

    def _micrograph(self):
        return itemAt(self.protocol.getInputMicrographs(), self.micIndex.get())

    def figurePath(self, suffix):
        """The engine's figure of the chosen micrograph."""
        return os.path.join(self.protocol._getExtraPath("thresholds"),
                            micKey(self._micrograph()) + suffix)

    def _show(self, suffix, what):
        mic = self._micrograph()
        return [pngPlotter(self.figurePath(suffix), f"{mic.getMicName()}: {what}")]

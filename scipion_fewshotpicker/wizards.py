"""Wizards: the box size from the exemplars; a preview of the picks at a score cutoff."""
import tempfile

from pwem.wizards import EmWizard

from .protocols import FewShotProtPick, FewShotProtPrune, FewShotProtTrain


class FewShotBoxSizeWizard(EmWizard):
    """Box size = the box of the input coordinates (the exemplars, or the picks to prune),
    in pixels of the input micrographs."""
    _targets = [(FewShotProtTrain, ["boxSize"]), (FewShotProtPrune, ["boxSize"])]

    def show(self, form, *args):
        prot = form.protocol
        coords = prot.inputCoordinates.get()
        if coords is None or not coords.getBoxSize():
            form.showWarning("Select input coordinates that carry a box size first.")
            return
        form.setVar("boxSize", int(round(coords.getBoxSize() * prot.coordinateScale(coords))))


class FewShotThresholdWizard(EmWizard):
    """Pick the first input micrograph at the cutoff in the form (on the CPU) and show its
    picks over the score map and its score histogram, to choose a fixed cutoff."""
    _targets = [(FewShotProtPick, ["threshold"])]

    def show(self, form, *args):
        from .viewers.viewer_base import pngPlotter
        prot = form.protocol
        if prot.inputModel.get() is None or prot.getInputMicrographs() is None:
            form.showWarning("Select the micrographs and the fine-tuned model first.")
            return
        try:
            result = prot.previewPicks(1, prot.threshold.get(), tempfile.mkdtemp())
        except Exception as exc:  # the engine's one-sentence error, shown to the user
            form.showError(str(exc))
            return
        title = f"{result['picks']} picks above {result['cutoff']:.3f}"
        pngPlotter(result["picks_png"], title).show()
        pngPlotter(result["histogram_png"], "score histogram").show()

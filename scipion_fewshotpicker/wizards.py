"""Wizards: fill in the box size from the exemplars."""
from pwem.wizards import EmWizard

from .protocols import FewShotProtTrain


class FewShotBoxSizeWizard(EmWizard):
    """Box size = the box of the exemplar coordinates, in pixels of the input micrographs."""
    _targets = [(FewShotProtTrain, ["boxSize"])]

    def show(self, form, *args):
        prot = form.protocol
        coords = prot.inputCoordinates.get()
        if coords is None or not coords.getBoxSize():
            form.showWarning("Select exemplar coordinates that carry a box size first.")
            return
        form.setVar("boxSize", int(round(coords.getBoxSize() * prot.getScale())))


"""Scipion objects of this plugin (objects defined elsewhere come back from the database broken)."""
import os

import pyworkflow.object as pwobj
from pwem.objects import EMObject


class FewShotModel(EMObject):
    """A trained engine model: a folder holding ``model.pt`` (and, after fine-tuning,
    the exemplar feature bank), with what is needed to reuse it.

    Attributes
    ----------
    _path : folder of the engine run that produced the model.
    _kind : 'pretrained', 'finetuned', 'pruner' or 'tomo'.
    _modelSize : named size ('tiny', 'small', 'base').
    _boxSize : box in pixels of the micrographs it was trained on (0 = any).
    _samplingRate : Å / px of those micrographs.
    """

    def __init__(self, path=None, kind=None, modelSize=None, boxSize=0, samplingRate=0.0,
                 **kwargs):
        EMObject.__init__(self, **kwargs)
        self._path = pwobj.String(path)
        self._kind = pwobj.String(kind)
        self._modelSize = pwobj.String(modelSize)
        self._boxSize = pwobj.Integer(boxSize)
        self._samplingRate = pwobj.Float(samplingRate)

    def getPath(self):
        return self._path.get()

    def setPath(self, path):
        self._path.set(path)

    def getCheckpoint(self):
        """Path of the checkpoint file inside the model folder."""
        return os.path.join(self.getPath(), "model.pt")

    def getKind(self):
        return self._kind.get()

    def getModelSize(self):
        return self._modelSize.get()

    def getBoxSize(self):
        return self._boxSize.get()

    def getSamplingRate(self):
        return self._samplingRate.get()

    def __str__(self):
        return (f"FewShotModel ({self.getKind()}, {self.getModelSize()}, "
                f"box {self.getBoxSize()} px, {self.getSamplingRate()} Å/px)")

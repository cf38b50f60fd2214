"""FewShotProtImportModel: bring a model trained elsewhere (another project, the CLI) into a project."""
import json
import os
import shutil

import pyworkflow.protocol.params as params
from pwem.protocols import EMProtocol

from ..objects import FewShotModel
from .protocol_base import FewShotProtBase


class FewShotProtImportModel(EMProtocol, FewShotProtBase):
    """Import a pretrained or fine-tuned model (a run folder or its model.pt) so it can be
    reused: a pretrained model for new exemplars, a fine-tuned one to pick new data of
    the same sample. The checkpoint is checked by the engine and copied into the
    project; the original is left untouched.
    """
    _label = "import model"
    _possibleOutputs = {"outputModel": FewShotModel}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("modelPath", params.PathParam, important=True, label="Model",
                      help="A folder written by pretrain/train (holding model.pt), "
                           "or the model.pt file itself.")
        form.addParam("samplingRate", params.FloatParam, default=0.0, label="Pixel size (Å/px)",
                      help="Of the micrographs the model was trained on; 0 = what the model "
                           "records (unknown if it records none). Picking micrographs of "
                           "another pixel size rescales the model's box to them.")

    def _insertAllSteps(self):
        self._insertFunctionStep(self.importStep.__name__)
        self._insertFunctionStep(self.createOutputStep.__name__)

    def _source(self):
        path = self.modelPath.get()
        return os.path.join(path, "model.pt") if os.path.isdir(path) else path

    def importStep(self):
        os.makedirs(self._modelFolder(), exist_ok=True)
        tmp = os.path.join(self._modelFolder(), "model.pt.tmp")
        shutil.copyfile(self._source(), tmp)
        os.replace(tmp, os.path.join(self._modelFolder(), "model.pt"))
        self.runEngine("inspect", None, f"--model {self.quote([self._modelFolder()])} "
                                      f"--out {self.quote([self._getExtraPath('model.json')])}")

    def createOutputStep(self):
        with open(self._getExtraPath("model.json")) as fh:
            info = json.load(fh)
        model = FewShotModel(path=self._modelFolder(), kind=info["kind"], modelSize=info["size"],
                             boxSize=int(round(info["box"])),
                             samplingRate=self.samplingRate.get() or info.get("pixel_size")
                             or 0.0)
        self._defineOutputs(outputModel=model)

    def _validate(self):
        source = self._source() if self.modelPath.get() else ""
        if not source or not os.path.isfile(source):
            return [f"{source or 'The model path'}: no model.pt there."]
        return []

    def _summary(self):
        if self.hasAttribute("outputModel"):
            return [str(self.outputModel)]
        return [f"Model to import: {self.modelPath.get()}"]

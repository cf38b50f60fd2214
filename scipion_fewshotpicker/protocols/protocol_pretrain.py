"""FewShotProtPretrain: self-supervised MAE pretraining on unlabeled micrograph regions."""
import os

import pyworkflow.protocol.params as params
from pwem.protocols import EMProtocol

from ..constants import MODEL_PRETRAINED
from ..objects import FewShotModel
from ..convert import linkMicrographs, listReasons, readJsonOrEmpty, reasonsByMicrograph
from .protocol_base import MODEL_SIZES, FewShotProtBase


class FewShotProtPretrain(EMProtocol, FewShotProtBase):
    """Pretrain a masked autoencoder (MAE) on random regions of one or more sets of
    micrographs, without any labels. The result is the starting point of the
    exemplar fine-tuning (FewShotProtTrain). Pretrain once per kind of data
    (sample, detector, pixel size); reuse the model for every picking job.
    """
    MODEL_FOLDER = "pretrain"
    _label = "pretrain"
    _possibleOutputs = {"outputModel": FewShotModel}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputMicrographs", params.MultiPointerParam,
                      pointerClass="SetOfMicrographs", important=True,
                      label="Micrographs",
                      help="One or more sets of micrographs; regions are drawn from all, "
                           "or, when they would give more than 20000 regions (the paper "
                           "pretrained on 21000; they stay in memory), from a seeded draw "
                           "of micrographs that gives that many.")
        form.addParam("boxSize", params.IntParam, default=64, validators=[params.Positive],
                      label="Box size (px)",
                      help="Side of the regions in micrograph pixels: best the particle box "
                           "you will pick with (about 1.2-1.5 particle diameters).")
        form.addParam("modelSize", params.EnumParam, choices=MODEL_SIZES, default=0,
                      label="Model size",
                      help="tiny: CPU-friendly; small/base (ViT-B, the paper's): GPU.")
        form.addParam("epochs", params.IntParam, default=20, validators=[params.Positive],
                      label="Epochs",
                      help="Passes over all regions. The steps are micrographs x regions per "
                           "micrograph x epochs / batch size; on real micrographs the tiny "
                           "encoder was weak after 400 steps and good after 3200, and a run "
                           "of fewer than 1000 says so in its log.")
        form.addParam("regionsPerMicrograph", params.IntParam, default=32,
                      validators=[params.Positive], label="Regions per micrograph",
                      expertLevel=params.LEVEL_ADVANCED,
                      help="Random regions cut from each micrograph.")
        form.addParam("batchSize", params.IntParam, default=128, validators=[params.Positive],
                      label="Batch size", expertLevel=params.LEVEL_ADVANCED,
                      help="Regions per optimisation step.")
        self._defineSeedParam(form)
        self._defineDeviceParams(form)

    def _insertAllSteps(self):
        self._insertEngineSteps(self.pretrainStep)

    def _setFolders(self):
        """One folder of micrograph links per input set: links are named by the
        micrograph's id, and ids repeat from one set to the next."""
        return [os.path.join(self._micFolder(), "set_%d" % i)
                for i in range(1, len(self.inputMicrographs) + 1)]

    def convertInputStep(self):
        for pointer, folder in zip(self.inputMicrographs, self._setFolders()):
            linkMicrographs(pointer.get().iterItems(), folder)

    def pretrainStep(self):
        gpus = self.trainingGpus()  # several: one process per GPU, each batch split among them
        config = self.writeEngineConfig("pretrain", {
            "model": MODEL_SIZES[self.modelSize.get()], "box": float(self.boxSize.get()),
            "epochs": self.epochs.get(), "regions_per_micrograph": self.regionsPerMicrograph.get(),
            "batch_size": self.batchSize.get(), "seed": self.seed.get(),
            "device": "cuda" if gpus else self.getDeviceSpec(single=True)})
        # a rerun (continue) resumes from the engine's last checkpoint
        self.runEngine("pretrain", config, f"--micrographs {self.quote(self._setFolders())} "
                                           f"--out {self.quote([self._modelFolder()])}",
                       gpus=gpus)

    def createOutputStep(self):
        first = self.inputMicrographs[0].get()
        model = FewShotModel(path=self._modelFolder(), kind=MODEL_PRETRAINED,
                             modelSize=MODEL_SIZES[self.modelSize.get()],
                             boxSize=self.boxSize.get(), samplingRate=first.getSamplingRate())
        self._defineOutputs(outputModel=model)
        for pointer in self.inputMicrographs:
            self._defineSourceRelation(pointer, model)

    def _validate(self):
        errors = self.validateDevice()
        for pointer in self.inputMicrographs:
            mics = pointer.get()
            if mics is None or mics.getSize() == 0:
                errors.append("An input set of micrographs is empty.")
                continue
            x, y, _ = mics.getDim() or (0, 0, 0)
            if x and min(x, y) < self.boxSize.get():
                errors.append(f"The box ({self.boxSize.get()} px) is larger than the "
                              f"micrographs of {mics.getNameId()} ({x} x {y} px).")
        return errors

    def _summary(self):
        n = sum(p.get().getSize() for p in self.inputMicrographs if p.get() is not None)
        lines = [f"Regions of {self.boxSize.get()} px from {n} micrographs, "
                 f"{MODEL_SIZES[self.modelSize.get()]} model, {self.epochs.get()} epochs."]
        regions = readJsonOrEmpty(os.path.join(self._modelFolder(), "summary.json")).get(
            "regions")
        if regions:
            lines.append(f"{regions} regions trained on.")
        skipped = self.skippedMicrographs()
        if skipped:
            lines.append(f"{len(skipped)} unreadable micrograph(s) skipped: "
                         f"{listReasons(skipped)}")
        return self._withModelLine(lines)

    def skippedMicrographs(self):
        """``{micrograph file name: reason}`` of the micrographs the engine could not read
        (its summary's ``skipped``, keyed by the linked names)."""
        reasons = readJsonOrEmpty(os.path.join(self._modelFolder(), "summary.json")).get(
            "skipped") or {}
        skipped = {}
        for pointer, folder in zip(self.inputMicrographs, self._setFolders()):
            mine = {link: reason for link, reason in reasons.items()
                    if os.path.basename(os.path.dirname(link)) == os.path.basename(folder)}
            skipped.update(reasonsByMicrograph(mine, pointer.get().iterItems()))
        return skipped

    def _methods(self):
        return [f"A {MODEL_SIZES[self.modelSize.get()]} masked autoencoder [He2022MAE] was "
                f"pretrained on {self.regionsPerMicrograph.get()} random {self.boxSize.get()} px "
                f"regions per micrograph for {self.epochs.get()} epochs, as in CryoMAE "
                f"[Xu2024CryoMAE]."]

    def _citations(self):
        return ["He2022MAE", "Xu2024CryoMAE"]

"""FewShotProtPrune: remove false positives from any picker's coordinates (nnPU classifier)."""
import json

import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from pwem.objects import SetOfCoordinates
from pwem.protocols import EMProtocol

from ..constants import MODEL_FINETUNED, MODEL_PRETRAINED, PRUNE_SCORE_ATTR
from ..convert import linkMicrographs, readPruneDecisions, writeCoordinateStar
from .protocol_base import MODEL_SIZES, FewShotProtBase

MIN_EXEMPLARS = 3
PRIORS = ["auto", "given"]
THRESHOLDS = ["auto", "bayes", "fixed"]


class FewShotProtPrune(EMProtocol, FewShotProtBase):
    """Clean the picks of any picker (Topaz, crYOLO, template matching, this plugin):
    a classifier on the pretrained MAE encoder learns from the exemplars (positive)
    and the picks themselves (unlabeled) with the non-negative PU risk, and every
    pick gets a probability of being a particle. Picks above the threshold go to
    the output set, the others to a rejected set, both keeping their own attributes.
    Check the gallery of rejected and borderline crops before trusting it.
    """
    MODEL_FOLDER = "prune"
    _label = "prune picks"
    _possibleOutputs = {"outputCoordinates": SetOfCoordinates,
                        "outputCoordinatesRejected": SetOfCoordinates}

    def _defineParams(self, form):
        form.addSection(label="Input")
        form.addParam("inputMicrographs", params.PointerParam, pointerClass="SetOfMicrographs",
                      important=True, label="Micrographs",
                      help="The micrographs the picks and the exemplars lie on.")
        form.addParam("inputCoordinates", params.PointerParam, pointerClass="SetOfCoordinates",
                      important=True, label="Picks to prune",
                      help="Coordinates from any picker. Their own attributes (scores, "
                           "classes) are kept in both outputs.")
        form.addParam("exemplarCoordinates", params.PointerParam,
                      pointerClass="SetOfCoordinates", important=True,
                      label="Exemplar coordinates",
                      help="About 15 good particles (e.g. the exemplars of FewShotProtTrain "
                           "or a few manual picks): the positives. A different pixel size is "
                           "rescaled.")
        form.addParam("confirmedCoordinates", params.PointerParam,
                      pointerClass="SetOfCoordinates", allowsNull=True,
                      expertLevel=params.LEVEL_ADVANCED, label="Confirmed picks (optional)",
                      help="More positives: picks a user checked by eye.")
        form.addParam("inputModel", params.PointerParam, pointerClass="FewShotModel",
                      allowsNull=True, label="Model",
                      help="A pretrained or fine-tuned model (FewShotProtPretrain or "
                           "FewShotProtTrain): its encoder is the classifier's backbone. "
                           "Empty: an untrained encoder (works, but judges worse).")
        form.addParam("modelSize", params.EnumParam, choices=MODEL_SIZES, default=0,
                      condition="not inputModel", label="Model size",
                      help="Only used without a model.")
        form.addParam("boxSize", params.IntParam, default=0, label="Box size (px)",
                      help="Particle box in pixels of the input micrographs. 0: the box of "
                           "the picks to prune.")
        form.addSection(label="Classifier")
        form.addParam("priorMode", params.EnumParam, choices=PRIORS, default=0,
                      label="Share of particles",
                      help="auto: estimated from how similar the picks are to the exemplars "
                           "compared with the exemplars among themselves; given: the value "
                           "below.")
        form.addParam("prior", params.FloatParam, default=0.7, condition="priorMode == 1",
                      label="Share of particles (0-1)",
                      help="The fraction of the picks you expect to be particles.")
        form.addParam("thresholdMode", params.EnumParam, choices=THRESHOLDS, default=0,
                      label="Threshold",
                      help="auto: a two-class mixture of the classifier's scores decides "
                           "where to cut, when the two classes are cleanly apart; one class, "
                           "or two that overlap: everything is kept. bayes: probability "
                           "0.5; fixed: the value below.")
        form.addParam("threshold", params.FloatParam, default=0.5,
                      condition="thresholdMode == 2", label="Probability to keep",
                      help="Picks with at least this probability are kept.")
        form.addParam("steps", params.IntParam, default=300, validators=[params.Positive],
                      label="Training steps", help="Optimisation steps of the classifier.")
        form.addParam("trainBlocks", params.IntParam, default=1,
                      expertLevel=params.LEVEL_ADVANCED, label="Encoder blocks trained",
                      help="The last blocks of the encoder trained with the head.")
        self._defineSeedParam(form)
        self._defineDeviceParams(form)

    # --------------------------- steps ---------------------------------------
    def _insertAllSteps(self):
        self._insertEngineSteps(self.pruneStep)

    def getInputMicrographs(self):
        return self.inputMicrographs.get()

    def getBoxSize(self):
        if self.boxSize.get():
            return self.boxSize.get()
        coords = self.inputCoordinates.get()
        return int(round(coords.getBoxSize() * self.coordinateScale(coords)))

    def _paths(self):
        return {name: self._getExtraPath(name + ".star")
                for name in ("picks", "exemplars", "confirmed")}

    def _pickRows(self):
        return self.coordinateRows(self.inputCoordinates.get())

    def _positiveRows(self):
        rows = self.coordinateRows(self.exemplarCoordinates.get())
        if self.confirmedCoordinates.get() is not None:
            rows += self.coordinateRows(self.confirmedCoordinates.get())
        return rows

    def convertInputStep(self):
        linkMicrographs(self.getInputMicrographs().iterItems(), self._micFolder())
        paths = self._paths()
        picks = self._pickRows()
        writeCoordinateStar(picks, self._micFolder(), paths["picks"])
        writeCoordinateStar(self._positiveRows(), self._micFolder(), paths["exemplars"])
        with open(self._getExtraPath("pick_ids.json"), "w") as fh:
            json.dump([r[0] for r in picks], fh)

    def _engineValues(self):
        values = {"box": float(self.getBoxSize()), "steps": self.steps.get(),
                  "train_blocks": self.trainBlocks.get(),
                  "prior": "auto" if self.priorMode.get() == 0 else str(self.prior.get()),
                  "threshold": THRESHOLDS[self.thresholdMode.get()]
                  if self.thresholdMode.get() < 2 else str(self.threshold.get()),
                  "device": self.getDeviceSpec(single=True), "seed": self.seed.get()}
        if self.inputModel.get() is not None:
            values["model"] = self.inputModel.get().getPath()
        else:
            values["model_size"] = MODEL_SIZES[self.modelSize.get()]
        return values

    def pruneStep(self):
        config = self.writeEngineConfig("prune", self._engineValues())
        paths = self._paths()
        self.runEngine("prune", config,
                       f"--micrographs {self.quote([self._micFolder()])} "
                       f"--picks {self.quote([paths['picks']])} "
                       f"--exemplars {self.quote([paths['exemplars']])} "
                       f"--out {self.quote([self._modelFolder()])}")

    def _decisions(self):
        """``{objId: (probability, kept)}`` from the engine's scores (same order as written)."""
        with open(self._getExtraPath("pick_ids.json")) as fh:
            ids = json.load(fh)
        return dict(zip(ids, readPruneDecisions(self._getExtraPath("prune", "scores.star"))))

    def _copyPicks(self, decisions, keep, suffix):
        inputCoords = self.inputCoordinates.get()
        # the positions are copied as they are, in the pixels of the micrographs they were
        # picked on: the output stays on those (the input micrographs may be others, of
        # another pixel size, converted for the engine only)
        micrographs = inputCoords.getMicrographs() or self.getInputMicrographs()
        output = self._createSetOfCoordinates(micrographs, suffix=suffix)
        output.copyInfo(inputCoords)
        output.setBoxSize(inputCoords.getBoxSize())

        def decide(coord, row):
            decision = decisions.get(coord.getObjId())
            if decision is None or decision[1] != keep:
                coord._appendItem = False
            else:
                setattr(coord, PRUNE_SCORE_ATTR, pwobj.Float(decision[0]))

        output.copyItems(inputCoords, updateItemCallback=decide)
        return output

    def createOutputStep(self):
        decisions = self._decisions()
        kept = self._copyPicks(decisions, True, "")
        rejected = self._copyPicks(decisions, False, "_rejected")
        self._defineOutputs(outputCoordinates=kept, outputCoordinatesRejected=rejected)
        for output in (kept, rejected):
            self._defineSourceRelation(self.inputCoordinates, output)
            self._defineSourceRelation(self.exemplarCoordinates, output)

    # --------------------------- info ----------------------------------------
    def _validate(self):
        errors = self.validateDevice()
        mics, picks = self.getInputMicrographs(), self.inputCoordinates.get()
        if mics is None or mics.getSize() == 0:
            return ["The input set of micrographs is empty."]
        if picks is None or picks.getSize() == 0:
            return ["The set of picks to prune is empty."]
        if not self._pickRows():
            errors.append("None of the picks lies on the input micrographs (matched by "
                          "micrograph name).")
        n = len(self._positiveRows()) if self.exemplarCoordinates.get() is not None else 0
        if n < MIN_EXEMPLARS:
            errors.append(f"Only {n} exemplar(s) lie on the input micrographs; at least "
                          f"{MIN_EXEMPLARS} are needed (about 15 work best).")
        if not self.getBoxSize():
            errors.append("Set the box size: the picks carry none.")
        model = self.inputModel.get()
        if model is not None and model.getKind() not in (MODEL_PRETRAINED, MODEL_FINETUNED):
            errors.append(f"The model is a '{model.getKind()}' model; a pretrained or "
                          f"fine-tuned picking model is needed as the backbone.")
        if self.priorMode.get() == 1 and not 0 < self.prior.get() < 1:
            errors.append("The share of particles must lie between 0 and 1.")
        if self.thresholdMode.get() == 2 and not 0 < self.threshold.get() < 1:
            errors.append("The probability to keep must lie between 0 and 1.")
        return errors

    def _warnings(self):
        if self.inputModel.get() is None:
            return ["No model: the classifier starts from an untrained encoder; a pretrained "
                    "or fine-tuned model judges picks far better."]
        return []

    def _summary(self):
        result = self.engineSummary()
        if result is None:
            return ["Not run yet."]
        return [f"{result['picks']} picks: {result['kept']} kept, {result['rejected']} "
                f"rejected.",
                f"Threshold: probability {result['threshold']:.3f} ({result['threshold_rule']}); "
                f"share of particles {result['prior']:.2f} ({result['prior_rule']}).",
                f"Gallery of rejected and borderline picks: {result['files']['gallery']}"]

    def _methods(self):
        result = self.engineSummary()
        if result is None:
            return []
        return [f"{result['picks']} picks were judged by a positive-unlabeled classifier "
                f"(non-negative risk [Kiryo2017nnPU], as in Topaz [Bepler2019Topaz]) on the "
                f"encoder of a masked autoencoder [He2022MAE], trained with "
                f"{result['positives']} exemplars as positives, after PickerOptimizer "
                f"[Li2022PickerOptimizer]; {result['kept']} were kept (probability >= "
                f"{result['threshold']:.2f})."]

    def _citations(self):
        return ["Li2022PickerOptimizer", "Kiryo2017nnPU", "He2022MAE"]

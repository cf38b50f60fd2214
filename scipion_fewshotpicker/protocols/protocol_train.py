"""FewShotProtTrain: fine-tune on about 15 exemplar particles (CryoMAE's PU-weighted SCS loss)."""
import pyworkflow.protocol.params as params
from pwem.protocols import ProtParticlePicking

from ..constants import MODEL_FINETUNED, MODEL_PRETRAINED
from ..convert import linkMicrographs, writeCoordinateStar
from ..objects import FewShotModel
from .protocol_base import MODEL_SIZES, FewShotProtBase

MIN_EXEMPLARS = 3
FEW_EXEMPLARS = 15  # the engine's: below it pick's automatic cutoff misses more particles
STUDENT_PRECISIONS = ["fp32", "auto", "bf16"]  # the engine's device.PRECISIONS, default first


class FewShotProtTrain(ProtParticlePicking, FewShotProtBase):
    """Fine-tune a pretrained MAE on a handful of exemplar particles (about 15 from one
    micrograph, picked by hand or imported). The exemplars' features become the bank
    that FewShotProtPick compares every window with. Micrographs without exemplars
    are used as unlabeled data (positive-unlabeled learning).
    """
    MODEL_FOLDER = "train"
    _label = "train"
    _possibleOutputs = {"outputModel": FewShotModel}

    def _defineParams(self, form):
        ProtParticlePicking._defineParams(self, form)
        form.addParam("inputCoordinates", params.PointerParam, pointerClass="SetOfCoordinates",
                      important=True, label="Exemplar coordinates",
                      help="About 15 particles, e.g. from manual picking or an imported STAR "
                           "file. They may lie on another set of micrographs of the same "
                           "data (matched by micrograph name); a different pixel size is "
                           "rescaled.")
        form.addParam("inputModel", params.PointerParam, pointerClass="FewShotModel",
                      allowsNull=True, label="Pretrained model",
                      help="From FewShotProtPretrain (recommended). Empty: train from scratch.")
        form.addParam("boxSize", params.IntParam, default=0, label="Box size (px)",
                      help="Particle box in pixels of the input micrographs. 0: the box size "
                           "of the exemplar coordinates (rescaled to these micrographs).")
        form.addParam("modelSize", params.EnumParam, choices=MODEL_SIZES, default=0,
                      condition="not inputModel", label="Model size",
                      help="Only used without a pretrained model.")
        form.addParam("steps", params.IntParam, default=300, validators=[params.Positive],
                      label="Training steps",
                      help="Optimisation steps; 300 suits the tiny model.")
        form.addParam("prior", params.FloatParam, default=0.018, expertLevel=params.LEVEL_ADVANCED,
                      label="Class prior (pi)",
                      help="Probability that an unlabeled region holds a particle "
                           "(0 = plain SCS loss).")
        form.addParam("exemplarsPerStep", params.IntParam, default=64,
                      validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Exemplars per step",
                      help="With more exemplars than this, each training step uses this many, "
                           "drawn afresh each step, so that hundreds of hand-picked particles "
                           "do not make every step hundreds of times slower. 0: all of them "
                           "every step.")
        form.addParam("studentSteps", params.IntParam, default=300,
                      validators=[params.GE(0)], expertLevel=params.LEVEL_ADVANCED,
                      label="Student training steps",
                      help="After fine-tuning, a small convolutional network (the student) "
                           "learns the model's own score maps of these micrographs; picking "
                           "with 'student cascade' scoring then runs the model on a fiftieth "
                           "of the windows. On two CPU cores 1-3 min (163 s for 1024 x 1024 "
                           "micrographs with a 40 px box). Training reads at most 16 of the "
                           "input micrographs: those holding exemplars and a seeded draw of "
                           "the others. 0 = no student.")
        form.addParam("studentPrecision", params.EnumParam, choices=STUDENT_PRECISIONS,
                      default=0, condition="studentSteps > 0",
                      expertLevel=params.LEVEL_ADVANCED, label="Student precision",
                      help="Arithmetic of the student's convolutions (its last layer always "
                           "runs in fp32). fp32: the measured default. auto: bf16 on GPUs and "
                           "on CPUs with native bf16, fp32 elsewhere. bf16: always. On two "
                           "CPU cores with native bf16 it took 52-66% of fp32's time for "
                           "F1 0.006-0.010 lower on three test sets.")
        form.addParam("inputSize", params.IntParam, default=0, validators=[params.GE(0)],
                      expertLevel=params.LEVEL_ADVANCED, label="Model input size (px)",
                      help="Side in pixels that a particle box is scaled to for the model, "
                           "in fine-tuning and picking. 0: the pretrained model's (224 for "
                           "base, 64 for tiny). Three quarters of it (160 for base, 48 for "
                           "tiny) about halves the cost of scoring every window, for some "
                           "accuracy (tiny model on EMPIAR-10028: F1 0.831 against 0.848; half "
                           "the input lost 0.08). A multiple of the patch size (16 for base and "
                           "small, 8 for tiny).")
        self._defineSeedParam(form)
        self._defineDeviceParams(form)

    # --------------------------- steps ---------------------------------------
    def _insertAllSteps(self):
        self._insertEngineSteps(self.trainStep)

    def _exemplarStar(self):
        return self._getExtraPath("exemplars.star")

    def getBoxSize(self):
        """The box in pixels of the input micrographs."""
        if self.boxSize.get():
            return self.boxSize.get()
        coords = self.inputCoordinates.get()
        return int(round(coords.getBoxSize() * self.coordinateScale(coords)))

    def _exemplarRows(self):
        return self.coordinateRows(self.inputCoordinates.get())

    def convertInputStep(self):
        linkMicrographs(self.getInputMicrographs().iterItems(), self._micFolder())
        writeCoordinateStar(self._exemplarRows(), self._micFolder(), self._exemplarStar())

    def trainStep(self):
        values = {"box": float(self.getBoxSize()), "steps": self.steps.get(),
                  "prior": self.prior.get(), "student_steps": self.studentSteps.get(),
                  "input_size": self.inputSize.get(),
                  "exemplars_per_step": self.exemplarsPerStep.get(),
                  "student_precision": STUDENT_PRECISIONS[self.studentPrecision.get()],
                  "pixel_size": self.getInputMicrographs().getSamplingRate() or 0.0,
                  "device": self.getDeviceSpec(single=True),
                  "seed": self.seed.get()}
        if self.inputModel.get() is not None:
            values["pretrained"] = self.inputModel.get().getPath()
        else:
            values["model"] = MODEL_SIZES[self.modelSize.get()]
        config = self.writeEngineConfig("train", values)
        self.runEngine("train", config,
                       f"--micrographs {self.quote([self._micFolder()])} "
                       f"--exemplars {self.quote([self._exemplarStar()])} "
                       f"--out {self.quote([self._modelFolder()])}")

    def createOutputStep(self):
        model = FewShotModel(path=self._modelFolder(), kind=MODEL_FINETUNED,
                             modelSize=self._modelSizeName(),
                             boxSize=self.getBoxSize(),
                             samplingRate=self.getInputMicrographs().getSamplingRate())
        self._defineOutputs(outputModel=model)
        self._defineSourceRelation(self.inputMicrographs, model)
        self._defineSourceRelation(self.inputCoordinates, model)

    # --------------------------- info ----------------------------------------
    def _validate(self):
        errors = self.validateDevice()
        mics, coords = self.getInputMicrographs(), self.inputCoordinates.get()
        if mics is None or mics.getSize() == 0:
            return ["The input set of micrographs is empty."]
        if coords is None or coords.getSize() == 0:
            return ["The exemplar coordinates are empty."]
        n = len(self._exemplarRows())
        if n < MIN_EXEMPLARS:
            errors.append(f"Only {n} exemplar(s) lie on the input micrographs; at least "
                          f"{MIN_EXEMPLARS} are needed (about 15 work best).")
        box = self.getBoxSize()
        x, y, _ = mics.getDim() or (0, 0, 0)
        if not box:
            errors.append("Set the box size: the exemplar coordinates carry none.")
        elif x and box > min(x, y):
            errors.append(f"The box ({box} px) is larger than the micrographs ({x} x {y} px).")
        model = self.inputModel.get()
        if model is not None and model.getKind() not in (MODEL_PRETRAINED, MODEL_FINETUNED):
            errors.append(f"The model is a '{model.getKind()}' model; a pretrained (or "
                          f"fine-tuned) picking model is needed.")
        size = self.inputSize.get()
        patch = 8 if self._modelSizeName() in ("tiny", "micro") else 16  # the engine's
        if size and (size % patch or size < 2 * patch):
            errors.append(f"The model input size {size} px must be a multiple of the "
                          f"{self._modelSizeName()} model's {patch} px patch and at least two "
                          f"patches.")
        return errors

    def _modelSizeName(self):
        return self.inputModel.get().getModelSize() if self.inputModel.get() else \
            MODEL_SIZES[self.modelSize.get()]

    def _warnings(self):
        warnings = []
        model = self.inputModel.get()
        if model is not None and model.getBoxSize() and \
                abs(model.getBoxSize() - self.getBoxSize()) > 0.25 * self.getBoxSize():
            warnings.append(f"The model was pretrained with {model.getBoxSize()} px regions, "
                            f"the box here is {self.getBoxSize()} px; features work best at "
                            f"the same scale.")
        ready = self.inputCoordinates.get() is not None and self.getInputMicrographs()
        n = len(self._exemplarRows()) if ready else 0
        if MIN_EXEMPLARS <= n < FEW_EXEMPLARS:
            warnings.append(f"Only {n} exemplars: with fewer than {FEW_EXEMPLARS} the picks "
                            f"are ranked about as well, but the automatic cutoff misses more "
                            f"particles (on EMPIAR-10028 F1 0.797 with 5, 0.825 with 10, "
                            f"0.845 with 15). Add exemplars if you can, or check the pick's "
                            f"summary for micrographs with too few picks.")
        return warnings

    def _summary(self):
        if self.inputCoordinates.get() is None:
            return ["No exemplars yet."]
        lines = [f"{len(self._exemplarRows())} exemplars, box {self.getBoxSize()} px, "
                 f"{self.steps.get()} steps."]
        return self._withModelLine(lines)

    def _methods(self):
        return [f"The encoder was fine-tuned on {len(self._exemplarRows())} exemplar particles "
                f"for {self.steps.get()} steps with the masked reconstruction loss plus the "
                f"positive-unlabeled self-cross similarity loss of CryoMAE [Xu2024CryoMAE] "
                f"(class prior {self.prior.get()}) [Kiryo2017nnPU]."]

    def _citations(self):
        return ["Xu2024CryoMAE", "Kiryo2017nnPU"]

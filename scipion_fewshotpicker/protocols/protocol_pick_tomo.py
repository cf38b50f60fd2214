"""FewShotProtPickTomo: pick tomograms from a few labelled particles (3D heatmap detector)."""
import os

import pyworkflow.object as pwobj
import pyworkflow.protocol.params as params
from tomo.objects import SetOfCoordinates3D
from tomo.protocols import ProtTomoPicking

from ..constants import SCORE_ATTR
from ..convert import readTomoPicks, tomoKey, writeTomoLabels
from .protocol_base import MODEL_SIZES, FewShotProtBase

MIN_LABELS = 2
THRESHOLDS = ["auto", "fixed"]
SPECIES_RULES = ["profile", "network"]


class FewShotProtPickTomo(ProtTomoPicking, FewShotProtBase):
    """Pick particles in tomograms from a few labelled ones: a compact 3D U-Net learns
    a heatmap (a Gaussian at each particle centre) from the labels, and a teacher (the
    moving average of the network) turns unlabelled regions into pseudo-labels that
    must agree across flips and rotations. Unlabelled regions are treated as
    unlabelled, not as background. Peaks at least a particle radius apart are kept
    above a cutoff chosen per tomogram.
    """
    MODEL_FOLDER = "pick3d"
    _label = "pick tomograms"
    _possibleOutputs = {"output3DCoordinates": SetOfCoordinates3D}

    def _defineParams(self, form):
        ProtTomoPicking._defineParams(self, form)
        form.addParam("inputCoordinates", params.PointerParam,
                      pointerClass="SetOfCoordinates3D", important=True,
                      label="Labelled particles",
                      help="A few particle centres on some of the input tomograms (manual "
                           "picks or imported 3D coordinates), matched by tilt-series id. "
                           "Most particles may stay unlabelled: they are not taken as "
                           "background. Several species: give each coordinate its species "
                           "as group id (1, 2, ...).")
        form.addParam("boxSize", params.IntParam, default=0, label="Particle diameter (voxels)",
                      help="0: the box size of the labelled coordinates.")
        form.addParam("semi", params.BooleanParam, default=True,
                      label="Teacher-student (pseudo-labels)?",
                      help="Yes: learn from unlabelled regions too, with pseudo-labels from "
                           "an averaged teacher. On simulated tomograms with one label per "
                           "species it was F1 0.10 ahead of No with the tiny network and level "
                           "with the small one (three draws each); with two per species level "
                           "(small) or 0.18 behind (tiny; one draw each; docs/benchmarks.md). "
                           "No: train on the labels alone, in less than half the time.")
        form.addParam("modelSize", params.EnumParam, choices=MODEL_SIZES, default=1,
                      label="Network width",
                      help="tiny (8 channels) runs on a CPU; small (16) and base (32) need a "
                           "GPU for real tomograms. On the simulated benchmark (600 steps) "
                           "tiny picked better than small, in half the time; real tomograms "
                           "were not tried.")
        form.addParam("steps", params.IntParam, default=600, validators=[params.Positive],
                      label="Training steps", help="Optimisation steps of the detector.")
        form.addParam("thresholdMode", params.EnumParam, choices=THRESHOLDS, default=0,
                      label="Cutoff",
                      help="auto: per tomogram, where the top class of a mixture of the "
                           "candidates' scores ends; fixed: the probability below.")
        form.addParam("threshold", params.FloatParam, default=0.5,
                      condition="thresholdMode == 1", label="Probability to keep",
                      help="Peaks with at least this probability become picks.")
        form.addParam("speciesBy", params.EnumParam, choices=SPECIES_RULES, default=0,
                      expertLevel=params.LEVEL_ADVANCED, label="Species from",
                      help="Only with labels of several species (their group ids). profile: "
                           "each pick gets the species whose labelled particles' radial "
                           "density profile is nearest (works from one label per species). "
                           "network: the detector's most probable species channel.")
        self._defineSeedParam(form)
        self._defineDeviceParams(form)

    # --------------------------- steps ---------------------------------------
    def _insertAllSteps(self):
        self._insertEngineSteps(self.pickStep)

    def _tomoFolder(self):
        return self._getExtraPath("tomograms")

    def _tomosByTsId(self):
        return {t.getTsId(): t.clone() for t in self.inputTomograms.get().iterItems()}

    def getBoxSize(self):
        return self.boxSize.get() or int(round(self.inputCoordinates.get().getBoxSize() or 0))

    def convertInputStep(self):
        folder = self._tomoFolder()
        os.makedirs(folder, exist_ok=True)
        for tomo in self.inputTomograms.get().iterItems():
            link = os.path.join(folder, tomoKey(tomo) + ".mrc")
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(tomo.getFileName()), link)
        writeTomoLabels(self.inputCoordinates.get(), self._tomosByTsId(),
                        self._getExtraPath("labels.star"))

    def pickStep(self):
        values = {"box": float(self.getBoxSize()), "steps": self.steps.get(),
                  "semi": bool(self.semi.get()), "size": MODEL_SIZES[self.modelSize.get()],
                  "threshold": "auto" if self.thresholdMode.get() == 0 else
                  str(self.threshold.get()),
                  "species_by": SPECIES_RULES[self.speciesBy.get()],
                  "device": self.getDeviceSpec(single=True), "seed": self.seed.get()}
        config = self.writeEngineConfig("pick3d", values)
        self.runEngine("pick3d", config,
                       f"--tomograms {self.quote([self._tomoFolder()])} "
                       f"--labels {self.quote([self._getExtraPath('labels.star')])} "
                       f"--out {self.quote([self._modelFolder()])}")

    def createOutputStep(self):
        from tomo.constants import BOTTOM_LEFT_CORNER
        from tomo.objects import Coordinate3D
        tomos = self.inputTomograms.get()
        picks = readTomoPicks(os.path.join(self._modelFolder(), "picks3d_relion4.star"))
        coords = self._createSetOfCoordinates3D(tomos)
        coords.setBoxSize(self.getBoxSize())
        coords.setSamplingRate(tomos.getSamplingRate())
        for tomo in tomos.iterItems():
            for x, y, z, score, klass in picks.get(tomoKey(tomo), []):
                coord = Coordinate3D()
                coord.setVolume(tomo)
                coord.setPosition(x, y, z, BOTTOM_LEFT_CORNER)
                coord.setScore(score)
                coord.setGroupId(klass)
                setattr(coord, SCORE_ATTR, pwobj.Float(score))
                coords.append(coord)
        self._defineOutputs(output3DCoordinates=coords)
        self._defineSourceRelation(self.inputTomograms, coords)
        self._defineSourceRelation(self.inputCoordinates, coords)

    # --------------------------- info ----------------------------------------
    def _validate(self):
        errors = self.validateDevice()
        tomos, labels = self.inputTomograms.get(), self.inputCoordinates.get()
        if tomos is None or tomos.getSize() == 0:
            return ["The input set of tomograms is empty."]
        if labels is None or labels.getSize() == 0:
            return ["The labelled coordinates are empty."]
        ids = set(self._tomosByTsId())
        n = sum(1 for c in labels.iterItems() if c.getTomoId() in ids)
        if n < MIN_LABELS:
            errors.append(f"Only {n} label(s) lie on the input tomograms (matched by tilt-series "
                          f"id); at least {MIN_LABELS} are needed.")
        if not self.getBoxSize():
            errors.append("Set the particle diameter: the labels carry no box size.")
        if self.thresholdMode.get() == 1 and not 0 < self.threshold.get() < 1:
            errors.append("The probability to keep must lie between 0 and 1.")
        return errors

    def _summary(self):
        result = self.engineSummary()
        if result is None:
            return ["Not run yet."]
        per = result["per_tomogram"]
        return [f"{result['picks']} picks in {len(per)} tomogram(s) "
                f"({'teacher-student' if result['semi'] else 'supervised only'}), "
                f"{result['seconds_per_tomogram']:.1f} s per tomogram.",
                "Cutoffs: " + ", ".join(f"{k} {v['cutoff']:.2f}" for k, v in per.items())]

    def _methods(self):
        result = self.engineSummary()
        if result is None:
            return []
        return [f"Particles were picked in {len(result['per_tomogram'])} tomograms with a 3D "
                f"heatmap detector trained on {self.inputCoordinates.get().getSize()} labelled "
                f"particles with a teacher-student scheme and multi-view pseudo-labels after "
                f"SemiETPicker [Wang2025SemiETPicker]; {result['picks']} particles were found."]

    def _citations(self):
        return ["Wang2025SemiETPicker"]

"""FewShotProtPick: pick every micrograph with a fine-tuned model, in streaming."""
import json
import os
import shutil
import subprocess

import pyworkflow.protocol.params as params
import pyworkflow.utils as pwutils
from pwem.protocols import ProtParticlePickingAuto

from .. import Plugin
from ..constants import MODEL_FINETUNED
from ..convert import (addPicks, itemAt, linkMicrographs, listReasons, micKey, modelScale,
                       readJsonOrEmpty, readPicks, reasonsByMicrograph, summarisePickCounts)
from .protocol_base import FewShotProtBase

# appended, never reordered: saved projects store the index
THRESHOLDS = ["auto", "otsu2", "density", "fixed", "gmm"]
SCORING = ["every window", "coarse to fine", "student cascade"]


class FewShotProtPick(ProtParticlePickingAuto, FewShotProtBase):
    """Pick particles: every window of each micrograph is scored against the exemplar
    bank of a fine-tuned model (FewShotProtTrain), peaks at least a particle radius
    apart are kept above a cutoff chosen per micrograph. Works in streaming: new
    micrographs are picked in batches as they arrive. Micrographs of another pixel
    size than the model's are picked at the model's scale (its box rescaled to them).
    The figure of merit travels to RELION and cryoSPARC with the coordinates.
    """
    _label = "pick"

    def _defineParams(self, form):
        ProtParticlePickingAuto._defineParams(self, form)
        form.addParam("inputModel", params.PointerParam, pointerClass="FewShotModel",
                      important=True, label="Fine-tuned model",
                      help="The output of FewShotProtTrain (or an imported fine-tuned model).")
        form.addParam("thresholdMode", params.EnumParam, choices=THRESHOLDS, default=0,
                      label="Cutoff",
                      help="auto: where a mixture of 2 to 4 classes of each micrograph's "
                           "scores stops favouring the particle class, the mixture chosen "
                           "whose particle class lies where the exemplars score each other "
                           "(recommended); otsu2: two-level Otsu; density: CryoMAE's "
                           "density-based cutoff; fixed: one score for all micrographs; gmm: "
                           "a 2- or 3-class mixture chosen by BIC (the automatic cutoff of "
                           "earlier versions).")
        form.addParam("threshold", params.FloatParam, default=0.5,
                      condition="thresholdMode == 3", label="Score cutoff",
                      help="Cosine similarity (-1..1) a pick must exceed.")
        form.addParam("stride", params.FloatParam, default=0.0, label="Stride (px)",
                      expertLevel=params.LEVEL_ADVANCED,
                      help="Pixels between scored windows; 0 = a fifth of the box.")
        form.addParam("scoring", params.EnumParam, choices=SCORING, default=0,
                      label="Scoring",
                      help="every window: the model scores every window (slowest, the "
                           "reference). coarse to fine: every second window in each direction "
                           "first, then the skipped ones only around that coarse map's peaks: "
                           "55-57% of the windows, F1 within 0.01 except on very noisy "
                           "micrographs. student cascade: the student trained with the model "
                           "scores the whole micrograph in one pass and the model re-scores the "
                           "best 40% of its peaks: about 2% of the windows, F1 within 0.02 on "
                           "the benchmark (docs/benchmarks.md); needs a model trained with student steps.")
        form.addParam("studentShare", params.FloatParam, default=0.4,
                      condition="scoring == 2", expertLevel=params.LEVEL_ADVANCED,
                      validators=[params.Range(0.01, 1.0)], label="Share re-scored",
                      help="Share of the student's peaks, the best by its score, that the "
                           "model re-scores; only those can become picks. 0.4 measured best "
                           "(0.3 lost particles on crowded micrographs, 0.6 let more noise "
                           "through at low SNR).")
        form.addParam("studentCheck", params.BooleanParam, default=True,
                      condition="scoring != 2 and thresholdMode == 0",
                      expertLevel=params.LEVEL_ADVANCED, label="Check the cutoff with the student?",
                      help="With the automatic cutoff and a model trained with student steps: "
                           "fit the cutoff also to the student cascade's candidates and keep the "
                           "lower of the two. A mixture fit now and then splits the particles "
                           "into two classes and cuts between them (2 of 17 benchmark runs, "
                           "recall about 0.8); the two fits seldom split at once. About 2% more "
                           "windows. No: the model's own fit alone.")
        form.addParam("minDistance", params.FloatParam, default=0.0,
                      expertLevel=params.LEVEL_ADVANCED, label="Minimum distance (px)",
                      help="Between two picks; 0 = the particle radius (half the box).")
        form.addParam("shoulderReach", params.FloatParam, default=1.5,
                      expertLevel=params.LEVEL_ADVANCED, label="Shoulder reach (boxes)",
                      help="A score peak on the flank of a higher one closer than this many "
                           "boxes is dropped, unless the score falls by 40% of its height "
                           "between the two (two particles side by side always have such a "
                           "valley: the window between them is centred on neither). Removes "
                           "the second, off-centre pick on one particle. 0 = off.")
        form.addParam("maxContrast", params.FloatParam, default=2.5,
                      expertLevel=params.LEVEL_ADVANCED, label="Max. contrast (x exemplars)",
                      help="A score peak whose window's standard deviation (before the model's "
                           "per-window normalisation) exceeds this many times the exemplars' "
                           "median is dropped: ice crystals, carbon edges and aggregates, "
                           "which the model can mistake for particles. RELION's 'max stddev "
                           "noise', set by the exemplars. 0 = off.")
        form.addParam("surround", params.FloatParam, default=0.5,
                      validators=[params.Range(0, 10)], expertLevel=params.LEVEL_ADVANCED,
                      label="Rank against the surround (weight)",
                      help="The cutoff sets how many particles a micrograph gets; which ones "
                           "is decided by each score minus this weight times how far the "
                           "scores 0.75 box around it lie above the micrograph's usual level "
                           "(in Fisher z): a peak that stands out from its background ranks "
                           "above one in a region that scores high all over. The corrected "
                           "score is the figure of merit written out. 0 = off.")
        form.addParam("maxOverlap", params.FloatParam, default=0.01,
                      condition="thresholdMode != 3", validators=[params.Range(0, 1)],
                      expertLevel=params.LEVEL_ADVANCED, label="Max. share of overlapping picks",
                      help="Two picks whose centres lie closer than 0.75 box cannot both be "
                           "particles. When more than this share of a micrograph's picks (at "
                           "least one) overlaps a higher candidate, the automatic cutoff rises "
                           "until no more than that do: at low SNR the fitted cut can reach "
                           "into the background just beside the particles, and those "
                           "overlapping peaks are its trace. A fixed threshold is never "
                           "changed. 0 = off.")
        form.addParam("crowded", params.BooleanParam, default=False,
                      condition="thresholdMode != 3",
                      expertLevel=params.LEVEL_ADVANCED, label="Crowded micrographs?",
                      help="Yes when particles touch each other over much of the "
                           "micrographs. Touching particles score a little lower than lone "
                           "ones, and the automatic cutoff can take them for a class of "
                           "their own and leave them out. With Yes the cutoff may come down "
                           "to the valley above the background's scores, when the picks "
                           "that adds overlap (almost) no higher pick. Leave No otherwise: "
                           "on sparse micrographs it lets in some isolated non-particles.")
        form.addParam("edgeWindows", params.BooleanParam, default=False,
                      expertLevel=params.LEVEL_ADVANCED, label="Pick up to the edges?",
                      help="Yes: the micrograph is extended by reflection, as training extends "
                           "exemplars there, so particles whose box crosses the edge get a "
                           "window centred on them (7-9% more windows: 1024 px micrographs "
                           "with a 40 px box, 4096 px with 180 px). RELION extracts such boxes "
                           "by repeating the edge pixels. No (default): only windows wholly "
                           "inside, no pick within half a box of an edge.")
        form.addParam("excludeBorder", params.FloatParam, default=0.0,
                      expertLevel=params.LEVEL_ADVANCED, label="Keep picks from the edges (px)",
                      help="Drop picks closer than this to an edge of the micrograph. Half "
                           "the extraction box keeps only particles whose box lies wholly "
                           "inside, which is what cryoSPARC extracts (it leaves out boxes "
                           "that cross the edge) and what some labelled sets count "
                           "(EMPIAR-10028 in CryoPPP). 0 = no margin beyond the windows'.")
        form.addParam("batchSize", params.IntParam, default=0,
                      expertLevel=params.LEVEL_ADVANCED, label="Windows per batch",
                      help="Encoder batch; 0 = automatic (1024 windows on a GPU, 128 on a "
                           "CPU, where small batches stay in cache and run about 1.5x "
                           "faster). Halves by itself when the GPU runs out of memory.")
        form.addParam("compileEncoder", params.BooleanParam, default=False,
                      expertLevel=params.LEVEL_ADVANCED, label="Compile the encoder (GPU)?",
                      help="Compile the encoder's normalisation steps before picking (5-10 s "
                           "once per batch of micrographs, less once cached). On an H200 the "
                           "base model then scores a 4096 x 4096 micrograph in 1.45 s instead "
                           "of 1.67 s, so it pays off from about 40 micrographs per batch. "
                           "Ignored on the CPU.")
        self._defineDeviceParams(form)
        self._defineStreamingParams(form)
        form.getParam("streamingBatchSize").setDefault(16)

    # --------------------------- steps ---------------------------------------
    def getBoxSize(self):
        """The model's box in pixels of these micrographs: rescaled when the two pixel sizes
        are known and more than 2% apart (the engine then picks at the model's scale)."""
        model = self.inputModel.get()
        return int(round(model.getBoxSize() * self._modelScale()))

    def _modelScale(self):
        return modelScale(self.inputModel.get().getSamplingRate(),
                          self.getInputMicrographs().getSamplingRate())

    def _createSetOfCoordinates(self, micSet, suffix=""):
        coordSet = ProtParticlePickingAuto._createSetOfCoordinates(self, micSet, suffix=suffix)
        coordSet.setBoxSize(self.getBoxSize())
        return coordSet

    def getCoordsDir(self):
        return self._getExtraPath("picks")

    def _pickMicrograph(self, mic, *args):
        self._pickMicrographList([mic], *args)

    def _pickMicrographList(self, micList, *args):
        if not micList:
            return
        # a batch the run was stopped in (tmp/ outlives a failed or killed run) keeps the
        # micrographs it finished: the engine picks only the others (--only-unfinished)
        batch = self._getTmpPath("batch_%s" % micKey(micList[0]))
        pwutils.cleanPath(os.path.join(batch, "micrographs"))  # this batch's links only
        linkMicrographs(micList, os.path.join(batch, "micrographs"))
        config = self.writeEngineConfig("pick", self._pickValues())
        try:
            self.runEngine("pick", config, f"--micrographs {self.quote([batch + '/micrographs'])} "
                                           f"--out {self.quote([batch + '/picks'])} "
                                           "--only-unfinished")
        except Exception:
            # a batch of unreadable micrographs does not stop a streaming run; anything else
            # (a wrong model, say) stops it with the engine's sentence
            if len(self._batchFailures(batch, micList)) != len(micList):
                raise
            self.warning("None of this batch's micrographs could be read; they get no picks "
                         "and the run goes on (see the summary).")
        self._collect(batch, micList)

    def _batchFailures(self, batch, micList):
        """``{micrograph file name: reason}`` from the engine's summary of ``batch``."""
        summary = readJsonOrEmpty(os.path.join(batch, "picks", "summary.json"))
        return reasonsByMicrograph(summary.get("failed"), micList)

    def _pickValues(self):
        mode = THRESHOLDS[self.thresholdMode.get()]
        return {"model": self.inputModel.get().getPath(), "stride": self.stride.get(),
                "coarse": 2 if SCORING[self.scoring.get()] == "coarse to fine" else 1,
                "student": self.studentShare.get()
                if SCORING[self.scoring.get()] == "student cascade" else 0.0,
                "student_check": self.studentCheck.get(),
                "min_distance": self.minDistance.get(),
                "shoulder_reach": self.shoulderReach.get(),
                "max_contrast": self.maxContrast.get(),
                "surround": self.surround.get(),
                "max_overlap": self.maxOverlap.get(),
                "crowded": self.crowded.get(),
                "edge_windows": self.edgeWindows.get(),
                "exclude_border": self.excludeBorder.get(),
                "pixel_size": self.getInputMicrographs().getSamplingRate() or 0.0,
                "model_pixel_size": self.inputModel.get().getSamplingRate() or 0.0,
                "threshold": str(self.threshold.get()) if mode == "fixed" else mode,
                "batch_size": self.batchSize.get(), "device": self.getDeviceSpec(),
                "compile": self.compileEncoder.get(), "plots": True}

    def _collect(self, batch, micList):
        """Move each micrograph's STAR file and threshold record into extra/ (atomic
        renames), so readCoordsFromMics finds them and a continue never repeats them."""
        for sub, suffix in (("picks", "_autopick.star"), ("picks/thresholds", ".json"),
                            ("picks/thresholds", ".png"), ("picks/thresholds", "_picks.png")):
            dest = self._getExtraPath(sub.replace("picks/", ""))
            os.makedirs(dest, exist_ok=True)
            for mic in micList:
                src = os.path.join(batch, sub, micKey(mic) + suffix)
                if os.path.exists(src):
                    shutil.move(src, os.path.join(dest, micKey(mic) + suffix))
        failed = self._batchFailures(batch, micList)
        if failed:  # kept for the summary
            self.writeExtraJson("failed", {**self.failedMicrographs(), **failed})
        self._updateCounts(micList)

    def _updateCounts(self, micList):
        """Add this batch's picks and cutoffs to ``extra/counts.json`` and draw
        ``extra/summary.png`` over every micrograph picked so far; the micrographs with
        unusually many or few picks among them go to ``extra/unusual.json`` (the engine
        decides which: in a streaming run its own summary sees one batch only)."""
        counts = self.pickCounts()
        for mic in micList:
            record = readJsonOrEmpty(self._getExtraPath("thresholds", micKey(mic) + ".json"))
            if record:
                counts[micKey(mic)] = {"name": os.path.basename(mic.getFileName()),
                                       "picks": record["picks"], "cutoff": record["cutoff"],
                                       "dropped": record.get("dropped_for_contrast") or 0}
        self.writeExtraJson("counts", counts)
        self.writeExtraJson("unusual", summarisePickCounts(
            counts, self._getExtraPath("summary.png"), len(self.failedMicrographs())))

    def pickCounts(self):
        """``{micKey: {"name", "picks", "cutoff", "dropped"}}`` of the micrographs picked so
        far, in the order picked."""
        return readJsonOrEmpty(self._getExtraPath("counts.json"))

    def unusualMicrographs(self):
        """File names of the picked micrographs with unusually many or few picks (more than
        4 robust standard deviations from the median; none before 5 are picked)."""
        return readJsonOrEmpty(self._getExtraPath("unusual.json")) or []

    def failedMicrographs(self):
        """``{micrograph file name: reason}`` of the micrographs the engine could not pick."""
        return readJsonOrEmpty(self._getExtraPath("failed.json"))

    def previewPicks(self, micIndex, threshold, outDir):
        """Pick one micrograph (its position in the input set, from 1) at a cutoff, now and
        outside the protocol's run (for the threshold wizard).

        Returns the engine's figures and counts: ``{"picks_png", "histogram_png",
        "picks", "cutoff"}``.
        """
        mic = itemAt(self.getInputMicrographs(), micIndex)
        linkMicrographs([mic], os.path.join(outDir, "micrographs"))
        values = dict(self._pickValues(), threshold=str(threshold), device="cpu")
        config = os.path.join(outDir, "preview.json")
        with open(config, "w") as fh:
            json.dump(values, fh)
        cmd = (f"{Plugin.getEngineProgram()} pick --config {self.quote([config])} "
               f"--micrographs {self.quote([outDir + '/micrographs'])} "
               f"--out {self.quote([outDir + '/picks'])}")
        done = subprocess.run(cmd, shell=True, env=Plugin.getEnviron(), capture_output=True,
                              text=True)
        if done.returncode:
            raise RuntimeError((done.stderr.strip().splitlines() or ["engine failed"])[-1])
        folder = os.path.join(outDir, "picks", "thresholds")
        with open(os.path.join(folder, micKey(mic) + ".json")) as fh:
            record = json.load(fh)
        return {"picks_png": os.path.join(folder, micKey(mic) + "_picks.png"),
                "histogram_png": os.path.join(folder, micKey(mic) + ".png"),
                "picks": record["picks"], "cutoff": record["cutoff"]}

    def readCoordsFromMics(self, outputDir, micDoneList, outputCoords):
        for mic in micDoneList:
            star = os.path.join(self.getCoordsDir(), micKey(mic) + "_autopick.star")
            addPicks(outputCoords, mic, readPicks(star))

    # --------------------------- info ----------------------------------------
    def _validate(self):
        errors = self.validateDevice()
        model, mics = self.inputModel.get(), self.getInputMicrographs()
        if model is None:
            return ["A fine-tuned model is required."]
        if model.getKind() != MODEL_FINETUNED:
            errors.append(f"The model is a '{model.getKind()}' model; picking needs a "
                          f"fine-tuned one (FewShotProtTrain).")
        if mics is not None and mics.getSize():
            x, y, _ = mics.getDim() or (0, 0, 0)
            if x and self.getBoxSize() > min(x, y):
                errors.append(f"The model's box ({self.getBoxSize()} px here) is larger than "
                              f"the micrographs ({x} x {y} px).")
            if x and not 0 <= self.excludeBorder.get() < min(x, y) / 2:
                errors.append(f"Keep picks from the edges: {self.excludeBorder.get()} px must "
                              f"be 0 or more and leave room inside the {x} x {y} px "
                              f"micrographs.")
        return errors

    def _summary(self):
        if not self.hasAttribute("outputCoordinates"):
            return ["No picks yet."]
        coords = self.outputCoordinates
        lines = [f"{coords.getSize()} particles picked, box {coords.getBoxSize()} px, "
                 f"cutoff {THRESHOLDS[self.thresholdMode.get()]}."]
        if self._modelScale() != 1.0:
            lines.append(f"Picked at the model's scale: it was trained at "
                         f"{self.inputModel.get().getSamplingRate():.3f} Å/px, these "
                         f"micrographs are at {self.getInputMicrographs().getSamplingRate():.3f}"
                         f" Å/px.")
        dropped = self.droppedForContrast()
        if dropped:
            lines.append(f"{dropped} score peaks dropped as more contrasted than "
                         f"{self.maxContrast.get():g}x the exemplars (ice, carbon, aggregates).")
        failed = self.failedMicrographs()
        if failed:
            lines.append(f"{len(failed)} micrograph(s) could not be picked (reasons in "
                         f"extra/failed.json): {listReasons(failed)}")
        unusual = self.unusualMicrographs()
        if unusual:
            lines.append(f"{len(unusual)} micrograph(s) with unusually many or few picks (an "
                         f"empty square, thick ice, a broken exposure?; see the 'picks per "
                         f"micrograph' view): {', '.join(unusual[:5])}"
                         + (" ..." if len(unusual) > 5 else ""))
        return lines

    def droppedForContrast(self):
        """Score peaks the engine dropped as too contrasted, over the micrographs picked so
        far."""
        return sum(entry["dropped"] for entry in self.pickCounts().values())

    def _methods(self):
        return [f"Particles were picked by scoring every window (stride "
                f"{self.stride.get() or 'a fifth of the box'} px) against the exemplar features "
                f"of the fine-tuned encoder, keeping peaks above a per-micrograph "
                f"{THRESHOLDS[self.thresholdMode.get()]} cutoff, following CryoMAE "
                f"[Xu2024CryoMAE]."]

    def _citations(self):
        return ["Xu2024CryoMAE"]

"""The few-shot workflow in real headless Scipion projects (CPU, tiny model, simulated data).

import micrographs -> import exemplar coordinates -> pretrain -> train -> pick, then the
output SetOfCoordinates is checked against the simulator's ground truth; the picks
are exported with scipion-em-relion and the model is reused in a second project.
"""
import glob
import json
import os

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pwem")
pytest.importorskip("relion")

from pwem.protocols import ProtImportCoordinates, ProtImportMicrographs  # noqa: E402
from pyworkflow.tests import BaseTest, setupTestProject  # noqa: E402

from fewshotpicker.config import MicrographSimConfig  # noqa: E402
from fewshotpicker.data.synthetic import simulate_dataset  # noqa: E402
from fewshotpicker.evaluate import evaluate_all  # noqa: E402
from fewshotpicker.io.coordinates import (micrograph_key, read_coordinates,  # noqa: E402
                                          write_coordinate_table)
from scipion_fewshotpicker.constants import SCORE_ATTR  # noqa: E402
from scipion_fewshotpicker.convert import linkMicrographs, micKey  # noqa: E402
from scipion_fewshotpicker.protocols import (FewShotProtImportModel, FewShotProtPick,  # noqa
                                             FewShotProtPretrain, FewShotProtTrain)

pytestmark = pytest.mark.scipion

SIM = MicrographSimConfig(n_micrographs=3, shape=(320, 320), crowding=0.3, snr=1.0,
                          ice_crystals=0.5, aggregates=0.5, carbon_edge=0.0, seed=11)


def coordinates_table(coords, mics):
    """A SetOfCoordinates as the engine's table (micrograph key, x, y, score)."""
    names = {mic.getObjId(): micrograph_key(mic.getFileName()) for mic in mics}
    rows = [(names[c.getMicId()], c.getX(), c.getY(), getattr(c, SCORE_ATTR).get())
            for c in coords.iterItems()]
    return pd.DataFrame(rows, columns=["micrograph", "x", "y", "score"])


class TestFewShotWorkflow(BaseTest):
    """The whole chain once (class set-up), then one assertion group per test."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.data = cls.getOutputPath("simulated")
        cls.meta = simulate_dataset(SIM, cls.data)
        cls.truth = read_coordinates(f"{cls.data}/truth.star")
        cls.mics = cls._importMicrographs()
        cls.exemplars = cls._importExemplars()
        cls.pretrain = cls._launch(FewShotProtPretrain, inputMicrographs=[cls.mics],
                                   boxSize=int(cls.meta["box_px"]), epochs=20,
                                   regionsPerMicrograph=128, batchSize=64, useGpu=False)
        cls.train = cls._launch(FewShotProtTrain, inputMicrographs=cls.mics,
                                inputCoordinates=cls.exemplars,
                                inputModel=cls.pretrain.outputModel, steps=100, useGpu=False)
        cls.pick = cls._launch(FewShotProtPick, inputMicrographs=cls.mics,
                               inputModel=cls.train.outputModel, useGpu=False)

    @classmethod
    def _launch(cls, protClass, **kwargs):
        pointers = {k: v for k, v in kwargs.items() if hasattr(v, "getObjId") or
                    isinstance(v, list)}
        prot = cls.newProtocol(protClass, **{k: v for k, v in kwargs.items()
                                             if k not in pointers})
        for key, value in pointers.items():
            if isinstance(value, list):
                for item in value:
                    getattr(prot, key).append(item)
            else:
                getattr(prot, key).set(value)
        cls.launchProtocol(prot)
        return prot

    @classmethod
    def _importMicrographs(cls):
        prot = cls.newProtocol(ProtImportMicrographs, filesPath=f"{cls.data}/micrographs",
                               filesPattern="mic_*.mrc", samplingRate=SIM.pixel_size,
                               voltage=300.0, sphericalAberration=2.7, amplitudeContrast=0.07)
        cls.launchProtocol(prot)
        return prot.outputMicrographs

    @classmethod
    def _importExemplars(cls):
        prot = cls.newProtocol(ProtImportCoordinates,
                               importFrom=ProtImportCoordinates.IMPORT_FROM_RELION,
                               filesPath=cls.data, filesPattern="exemplars.star",
                               boxSize=cls.meta["box_px"])
        prot.inputMicrographs.set(cls.mics)
        cls.launchProtocol(prot)
        return prot.outputCoordinates

    def test_models_carry_kind_size_box_and_pixel_size(self):
        pre, ft = self.pretrain.outputModel, self.train.outputModel
        self.assertEqual((pre.getKind(), pre.getModelSize()), ("pretrained", "tiny"))
        self.assertEqual(ft.getKind(), "finetuned")
        self.assertEqual(ft.getBoxSize(), self.meta["box_px"])  # from the exemplars' box
        self.assertAlmostEqual(ft.getSamplingRate(), SIM.pixel_size)
        self.assertTrue(os.path.exists(ft.getCheckpoint()))

    def test_picks_match_the_simulated_truth(self):
        coords = self.pick.outputCoordinates
        self.assertEqual(coords.getBoxSize(), self.meta["box_px"])
        picks = coordinates_table(coords, self.mics)
        n_truth = len(self.truth)
        self.assertTrue(0.6 * n_truth <= len(picks) <= 1.4 * n_truth, (len(picks), n_truth))
        report = evaluate_all(picks, self.truth, self.meta["box_px"], ("cryomae",),
                              micrographs=[m.getFileName() for m in self.mics])
        f1 = report["conventions"]["cryomae"]["pooled"]["f1"]
        self.assertGreater(f1, 0.6, report["conventions"]["cryomae"]["pooled"])
        self.assertTrue(((picks["score"] > -1) & (picks["score"] <= 1)).all())
        # every micrograph picked exactly once
        self.assertEqual(len(glob.glob(self.pick._getExtraPath("picks", "*_autopick.star"))),
                         self.mics.getSize())
        # the contrast check ran with the limit the trained model's exemplars set, and the
        # student cascade checked the cutoff (more windows than the grid holds)
        with open(self.pick._getExtraPath("pick.json")) as fh:
            config = json.load(fh)
        self.assertEqual((config["max_contrast"], config["student_check"], config["surround"],
                          config["max_overlap"], config["crowded"]), (2.5, True, 0.5, 0.01, False))
        self.assertGreater(self._windowsScored(self.pick), 1.0)
        dropped = 0
        for path in glob.glob(self.pick._getExtraPath("thresholds", "*.json")):
            with open(path) as fh:
                record = json.load(fh)
            self.assertGreater(record["contrast_limit"], 0.0)
            dropped += record["dropped_for_contrast"]
        self.assertEqual(self.pick.droppedForContrast(), dropped)
        # every micrograph's count and cutoff, for the whole run's figure and summary
        counts = self.pick.pickCounts()
        self.assertEqual(sorted(c["name"] for c in counts.values()),
                         sorted(os.path.basename(m.getFileName()) for m in self.mics))
        self.assertEqual(sum(c["picks"] for c in counts.values()), coords.getSize())
        self.assertGreater(os.path.getsize(self.pick._getExtraPath("summary.png")), 1000)
        self.assertEqual(self.pick.unusualMicrographs(), [])

    def _f1(self, prot):
        picks = coordinates_table(prot.outputCoordinates, self.mics)
        report = evaluate_all(picks, self.truth, self.meta["box_px"], ("cryomae",),
                              micrographs=[m.getFileName() for m in self.mics])
        return report["conventions"]["cryomae"]["pooled"]["f1"]

    def _windowsScored(self, prot):
        record = glob.glob(prot._getExtraPath("thresholds", "*.json"))[0]
        with open(record) as fh:
            return json.load(fh)["windows_scored"]

    def test_fast_scoring_finds_the_same_particles(self):
        fast = self._launch(FewShotProtPick, inputMicrographs=self.mics,
                            inputModel=self.train.outputModel, scoring=1, useGpu=False,
                            compileEncoder=True, studentCheck=False)
        with open(fast._getExtraPath("pick.json")) as fh:
            config = json.load(fh)
        # compiling is asked for and passed on; the engine ignores it on the CPU; the
        # cutoff is the model's own fit, without the student's check
        self.assertEqual((config["coarse"], config["compile"], config["student_check"]),
                         (2, True, False))
        self.assertLess(self._windowsScored(fast), 0.8)
        f1 = {"full": self._f1(self.pick), "fast": self._f1(fast)}
        self.assertGreater(f1["fast"], max(0.6, f1["full"] - 0.05), f1)

    def test_student_cascade_finds_the_same_particles_with_few_windows(self):
        cascade = self._launch(FewShotProtPick, inputMicrographs=self.mics,
                               inputModel=self.train.outputModel, scoring=2, useGpu=False)
        with open(cascade._getExtraPath("pick.json")) as fh:
            config = json.load(fh)
        self.assertEqual((config["student"], config["coarse"]), (0.4, 1))
        self.assertLess(self._windowsScored(cascade), 0.2)
        f1 = {"full": self._f1(self.pick), "cascade": self._f1(cascade)}
        self.assertGreater(f1["cascade"], max(0.6, f1["full"] - 0.05), f1)

    def test_micrographs_at_half_the_pixel_size_are_picked_at_the_models_scale(self):
        from fewshotpicker.io.mrc import read_image, write_mrc
        fine = self.getOutputPath("fine")
        for mic in self.mics:  # each pixel split in four: pixel x is 2x + 0.5 there
            write_mrc(os.path.join(fine, os.path.basename(mic.getFileName())),
                      np.kron(read_image(mic.getFileName()).data, np.ones((2, 2))),
                      pixel_size=SIM.pixel_size / 2)
        imported = self.newProtocol(ProtImportMicrographs, filesPath=fine,
                                    filesPattern="mic_*.mrc", samplingRate=SIM.pixel_size / 2,
                                    voltage=300.0, sphericalAberration=2.7,
                                    amplitudeContrast=0.07)
        self.launchProtocol(imported)
        mics = imported.outputMicrographs
        picked = self._launch(FewShotProtPick, inputMicrographs=mics,
                              inputModel=self.train.outputModel, scoring=2, useGpu=False)
        with open(picked._getExtraPath("pick.json")) as fh:
            config = json.load(fh)
        self.assertEqual((config["pixel_size"], config["model_pixel_size"]),
                         (SIM.pixel_size / 2, SIM.pixel_size))
        box = 2 * self.meta["box_px"]
        self.assertEqual(picked.outputCoordinates.getBoxSize(), box)
        self.assertIn("Picked at the model's scale", " ".join(picked.summary()))
        picks = coordinates_table(picked.outputCoordinates, mics)
        truth = self.truth.assign(x=2 * self.truth["x"] + 0.5, y=2 * self.truth["y"] + 0.5)
        f1 = evaluate_all(picks, truth, box, ("cryomae",),
                          micrographs=[m.getFileName() for m in mics])[
            "conventions"]["cryomae"]["pooled"]["f1"]
        self.assertGreater(f1, max(0.6, self._f1(self.pick) - 0.1), f1)

    def test_picks_keep_the_asked_distance_from_the_edges(self):
        wide = self.newProtocol(FewShotProtPick, excludeBorder=200.0, useGpu=False)
        wide.inputMicrographs.set(self.mics)
        wide.inputModel.set(self.train.outputModel)
        self.assertIn("Keep picks from the edges: 200.0 px must be 0 or more and leave room "
                      "inside the 320 x 320 px micrographs.", wide.validate())
        margin = float(self.meta["box_px"])
        kept = self._launch(FewShotProtPick, inputMicrographs=self.mics,
                            inputModel=self.train.outputModel, scoring=2,
                            excludeBorder=margin, useGpu=False)
        with open(kept._getExtraPath("pick.json")) as fh:
            self.assertEqual(json.load(fh)["exclude_border"], margin)

        def edge_distance(prot):
            picks = coordinates_table(prot.outputCoordinates, self.mics)
            xy = picks[["x", "y"]].to_numpy(float)
            return np.minimum(xy, np.array(SIM.shape[::-1]) - 1 - xy).min(axis=1)

        self.assertTrue((edge_distance(self.pick) < margin).any())  # the margin has work
        near = edge_distance(kept)
        self.assertGreater(len(near), 0.3 * len(self.truth))
        self.assertGreaterEqual(near.min(), margin - 1)

    def test_a_micrograph_that_cannot_be_picked_is_named_and_the_others_are_picked(self):
        from fewshotpicker.io.mrc import write_mrc
        folder = self.getOutputPath("with_blank")
        os.makedirs(folder, exist_ok=True)
        good = os.path.join(folder, "mic_a.mrc")
        os.symlink(os.path.abspath(f"{self.data}/micrographs/mic_000.mrc"), good)
        write_mrc(os.path.join(folder, "mic_b.mrc"), np.zeros(SIM.shape, np.float32))
        imp = self.newProtocol(ProtImportMicrographs, filesPath=folder, filesPattern="mic_*.mrc",
                               samplingRate=SIM.pixel_size, voltage=300.0,
                               sphericalAberration=2.7, amplitudeContrast=0.07)
        self.launchProtocol(imp)
        pick = self._launch(FewShotProtPick, inputMicrographs=imp.outputMicrographs,
                            inputModel=self.train.outputModel, scoring=2, useGpu=False)
        picks = coordinates_table(pick.outputCoordinates, imp.outputMicrographs)
        self.assertEqual(set(picks["micrograph"]), {"mic_a"})
        self.assertGreater(len(picks), 0.5 * (self.truth["micrograph"].map(micrograph_key)
                                              == "mic_000").sum())
        self.assertEqual(list(pick.failedMicrographs()), ["mic_b.mrc"])
        self.assertIn("1 micrograph(s) could not be picked (reasons in extra/failed.json): "
                      "mic_b.mrc: every pixel holds the same value (0); a blank exposure, not a "
                      "micrograph.", pick.summary())
        # one micrograph per batch, as in streaming: the blank one's batch fails on its own
        # and the run goes on
        single = self._launch(FewShotProtPick, inputMicrographs=imp.outputMicrographs,
                              inputModel=self.train.outputModel, scoring=2,
                              streamingBatchSize=1, useGpu=False)
        again = coordinates_table(single.outputCoordinates, imp.outputMicrographs)
        self.assertEqual(len(again), len(picks))
        self.assertEqual(list(single.failedMicrographs()), ["mic_b.mrc"])
        counts = single.pickCounts()  # over the whole run, not the last batch
        self.assertEqual([c["name"] for c in counts.values()], ["mic_a.mrc"])
        self.assertEqual(counts[micKey(next(iter(imp.outputMicrographs)))]["picks"], len(again))
        # pretraining skips it too, and says so; of two sets, whose micrographs' ids
        # repeat (1, 2 and 1, 2, 3), it reads all four readable micrographs
        pre = self._launch(FewShotProtPretrain, inputMicrographs=[imp.outputMicrographs,
                                                                  self.mics],
                           boxSize=int(self.meta["box_px"]), epochs=1,
                           regionsPerMicrograph=16, batchSize=16, useGpu=False)
        self.assertIn("64 regions trained on.", pre.summary())
        self.assertIn("1 unreadable micrograph(s) skipped: mic_b.mrc: every pixel holds the "
                      "same value (0); a blank exposure, not a micrograph.", pre.summary())

    def test_a_model_trained_at_a_smaller_input_picks_the_same_particles(self):
        smaller = self.newProtocol(FewShotProtTrain, steps=100, inputSize=20, studentSteps=0,
                                   useGpu=False)
        smaller.inputMicrographs.set(self.mics)
        smaller.inputCoordinates.set(self.exemplars)
        smaller.inputModel.set(self.pretrain.outputModel)
        self.assertIn("The model input size 20 px must be a multiple of the tiny model's "
                      "8 px patch and at least two patches.", smaller.validate())
        smaller = self._launch(FewShotProtTrain, inputMicrographs=self.mics,
                               inputCoordinates=self.exemplars,
                               inputModel=self.pretrain.outputModel, steps=100, inputSize=48,
                               studentSteps=0, studentPrecision=2, useGpu=False)
        with open(os.path.join(smaller.outputModel.getPath(), "config.json")) as fh:
            config = json.load(fh)["config"]
        self.assertEqual((config["input_size"], config["exemplars_per_step"],
                          config["student_precision"]), (48, 64, "bf16"))
        pick = self._launch(FewShotProtPick, inputMicrographs=self.mics,
                            inputModel=smaller.outputModel, useGpu=False)
        f1 = {"full": self._f1(self.pick), "smaller input": self._f1(pick)}
        self.assertGreater(f1["smaller input"], max(0.6, f1["full"] - 0.1), f1)

    def test_fewer_than_fifteen_exemplars_are_warned_about(self):
        self.assertEqual(self.train.warnings(), [])  # the simulated 15
        five = read_coordinates(f"{self.data}/exemplars.star").iloc[:5]
        os.makedirs(f"{self.data}/five", exist_ok=True)
        write_coordinate_table(five, f"{self.data}/five/exemplars.star")
        prot = self.newProtocol(ProtImportCoordinates,
                                importFrom=ProtImportCoordinates.IMPORT_FROM_RELION,
                                filesPath=f"{self.data}/five", filesPattern="exemplars.star",
                                boxSize=self.meta["box_px"])
        prot.inputMicrographs.set(self.mics)
        self.launchProtocol(prot)
        few = self.newProtocol(FewShotProtTrain, useGpu=False)
        few.inputMicrographs.set(self.mics)
        few.inputCoordinates.set(prot.outputCoordinates)
        few.inputModel.set(self.pretrain.outputModel)
        self.assertEqual(few.validate(), [])
        (warning,) = few.warnings()
        self.assertTrue(warning.startswith("Only 5 exemplars: with fewer than 15 the picks are "
                                           "ranked about as well"), warning)

    def test_box_size_wizard_reads_the_exemplars_box(self):
        from scipion_fewshotpicker.wizards import FewShotBoxSizeWizard
        prot = self.newProtocol(FewShotProtTrain)
        prot.inputMicrographs.set(self.mics)
        prot.inputCoordinates.set(self.exemplars)

        class Form:
            protocol, values = prot, {}

            def setVar(self, key, value):
                self.values[key] = value

        form = Form()
        FewShotBoxSizeWizard().show(form)
        self.assertEqual(form.values, {"boxSize": self.meta["box_px"]})

    def test_threshold_preview_counts_fewer_picks_at_a_higher_cutoff(self):
        low = self.pick.previewPicks(2, 0.5, self.getOutputPath("preview_low"))
        high = self.pick.previewPicks(2, 0.95, self.getOutputPath("preview_high"))
        self.assertEqual((low["cutoff"], high["cutoff"]), (0.5, 0.95))
        second = sorted(mic.getObjId() for mic in self.mics)[1]  # the second, not the last
        self.assertTrue(low["picks_png"].endswith("mic_%06d_picks.png" % second))
        self.assertGreater(low["picks"], high["picks"])
        for result in (low, high):
            self.assertTrue(os.path.getsize(result["picks_png"]) > 10000)
            self.assertTrue(os.path.getsize(result["histogram_png"]) > 5000)

    def test_viewers_show_the_figures_the_engine_drew(self):
        from pyworkflow.gui.plotter import Plotter
        from scipion_fewshotpicker.viewers import FewShotCurvesViewer, FewShotPicksViewer
        Plotter.setBackend("Agg")
        curves = FewShotCurvesViewer(project=self.proj)._visualize(self.train)
        self.assertGreater(curves[0].getFigure().axes[0].images[0].get_array().shape[0], 100)
        viewer = FewShotPicksViewer(project=self.proj)
        viewer.setProtocol(self.pick)  # what the GUI does before showing the form
        viewer.micIndex.set(2)
        ids = [mic.getObjId() for mic in self.pick.getInputMicrographs().iterItems(orderBy="id")]
        self.assertEqual(len(set(ids)), 3)
        self.assertTrue(viewer.figurePath("_picks.png").endswith(
            "mic_%06d_picks.png" % ids[1]))
        for name in ("doShowPicks", "doShowHistogram", "doShowCounts"):
            plot = viewer._getVisualizeDict()[name]()[0]
            self.assertGreater(plot.getFigure().axes[0].images[0].get_array().shape[1], 100)

    def test_relion_export_keeps_our_scores_as_figure_of_merit(self):
        from relion.protocols import ProtRelionExportCoordinates
        import starfile
        prot = self.newProtocol(ProtRelionExportCoordinates)
        prot.inputCoordinates.set(self.pick.outputCoordinates)
        self.launchProtocol(prot)
        ours = coordinates_table(self.pick.outputCoordinates, self.mics)
        exported = []
        for path in sorted(glob.glob(os.path.join(prot._getPath("Export"), "*_coords.star"))):
            table = starfile.read(path)
            exported.append(table.assign(micrograph=micrograph_key(path).replace("_coords", "")))
        exported = pd.concat(exported, ignore_index=True)
        self.assertEqual(len(exported), len(ours))
        got = exported.sort_values(["micrograph", "rlnCoordinateX", "rlnCoordinateY"])
        want = ours.sort_values(["micrograph", "x", "y"])
        np.testing.assert_allclose(got["rlnAutopickFigureOfMerit"].to_numpy(),
                                   want["score"].to_numpy(), atol=1e-5)
        np.testing.assert_allclose(got["rlnCoordinateX"].to_numpy(), want["x"].to_numpy())

    def test_model_is_reused_in_another_project_through_import(self):
        from pyworkflow.project import Manager
        # as a user would browse to it: the absolute path of the first project's run folder
        source = os.path.join(self.proj.path, self.train.outputModel.getPath())
        before = os.path.getmtime(os.path.join(source, "model.pt"))
        first = coordinates_table(self.pick.outputCoordinates, self.mics).sort_values(
            ["micrograph", "x"])
        other = Manager().createProject(f"FewShotReuse{os.getpid()}")
        os.chdir(other.path)  # Scipion resolves a project's run folders from the cwd
        self.addCleanup(os.chdir, self.proj.path)

        def run(prot):
            other.launchProtocol(prot, wait=True)
            self.assertTrue(prot.isFinished(), prot.getRunName())
            return prot

        mics = run(other.newProtocol(
            ProtImportMicrographs, filesPath=f"{self.data}/micrographs", filesPattern="mic_*.mrc",
            samplingRate=SIM.pixel_size, voltage=300.0, sphericalAberration=2.7,
            amplitudeContrast=0.07)).outputMicrographs
        model = run(other.newProtocol(FewShotProtImportModel, modelPath=source,
                                      samplingRate=SIM.pixel_size)).outputModel
        self.assertEqual((model.getKind(), model.getModelSize(), model.getBoxSize()),
                         ("finetuned", "tiny", self.meta["box_px"]))
        self.assertTrue(os.path.exists(os.path.join(other.path, model.getCheckpoint())))
        self.assertNotEqual(os.path.join(other.path, model.getPath()), source)  # a copy
        self.assertEqual(os.path.getmtime(os.path.join(source, "model.pt")), before)
        pick = other.newProtocol(FewShotProtPick, useGpu=False)
        pick.inputMicrographs.set(mics)
        pick.inputModel.set(model)
        run(pick)
        again = coordinates_table(pick.outputCoordinates, mics).sort_values(["micrograph", "x"])
        self.assertEqual(len(again), len(first))
        np.testing.assert_allclose(again["score"].to_numpy(), first["score"].to_numpy(),
                                   atol=1e-4)

    def test_continuing_a_run_stopped_in_a_batch_keeps_the_micrographs_it_finished(self):
        import starfile
        from pyworkflow.protocol.constants import MODE_RESUME
        from fewshotpicker.cli.main import main as engine
        pick = self.newProtocol(FewShotProtPick, useGpu=False)
        pick.inputMicrographs.set(self.mics)
        pick.inputModel.set(self.train.outputModel)
        self.proj.saveProtocol(pick)
        # what a run killed after the batch's first micrograph leaves in tmp/ (kept by
        # Scipion when a run fails or is stopped): that micrograph's files, written by the
        # engine with the protocol's own settings
        mics = [mic.clone() for mic in self.mics.iterItems(orderBy="id")]
        batch = os.path.abspath(pick._getTmpPath("batch_" + micKey(mics[0])))
        linkMicrographs(mics[:1], os.path.join(batch, "micrographs"))
        os.makedirs(pick._getExtraPath(), exist_ok=True)
        config = pick.writeEngineConfig("pick", pick._pickValues())
        self.assertEqual(engine(["pick", "--config", config, "--micrographs",
                                 f"{batch}/micrographs", "--out", f"{batch}/picks"]), 0)
        # marked, so that keeping it shows: its STAR file now holds its first 3 picks only
        star = os.path.join(batch, "picks", micKey(mics[0]) + "_autopick.star")
        planted = starfile.read(star).head(3)
        starfile.write(planted, star, overwrite=True)
        pick.runMode.set(MODE_RESUME)  # Scipion's "Continue"
        self.launchProtocol(pick)
        picks = coordinates_table(pick.outputCoordinates, self.mics)
        first = picks[picks["micrograph"] == micrograph_key(mics[0].getFileName())]
        np.testing.assert_allclose(first[["x", "y"]].to_numpy(),
                                   planted[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(),
                                   atol=0.5)  # a Scipion coordinate holds whole pixels
        whole = coordinates_table(self.pick.outputCoordinates, self.mics)
        for mic in mics[1:]:  # picked in this run, as the uninterrupted run picked them
            key = micrograph_key(mic.getFileName())
            self.assertEqual((picks["micrograph"] == key).sum(),
                             (whole["micrograph"] == key).sum())

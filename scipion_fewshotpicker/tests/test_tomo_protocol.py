"""FewShotProtPickTomo in a real headless Scipion project (CPU, tiny network, small volumes).

import tomograms -> import a few 3D labels (text files) -> pick; the output
SetOfCoordinates3D is checked against the simulator's truth in Scipion's convention
(positions relative to the tomogram centre) and its tilt-series ids.
"""
import os

import numpy as np
import pytest

pytest.importorskip("tomo")

from pyworkflow.tests import BaseTest, setupTestProject  # noqa: E402
from tomo.constants import SCIPION  # noqa: E402
from tomo.protocols import ProtImportCoordinates3D, ProtImportTomograms  # noqa: E402

from fewshotpicker.config import TomogramSimConfig  # noqa: E402
from fewshotpicker.data.synthetic3d import simulate_tomograms  # noqa: E402
from fewshotpicker.io.coordinates import micrograph_key, read_coordinates  # noqa: E402
from scipion_fewshotpicker.constants import SCORE_ATTR  # noqa: E402
from scipion_fewshotpicker.protocols import FewShotProtPickTomo  # noqa: E402

pytestmark = pytest.mark.scipion

SIM = TomogramSimConfig(n_tomograms=2, shape=(32, 96, 96), n_species=1, diameters_A=(160.0,),
                        crowding=0.1, snr=1.0, seed=2)
DIAMETER = 16  # voxels: 160 Å at 10 Å / voxel


class TestFewShotPickTomo(BaseTest):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        data = cls.getOutputPath("simulated")
        simulate_tomograms(SIM, data)
        cls.truth = read_coordinates(f"{data}/truth3d.star")
        labels_dir = cls.getOutputPath("labels")
        os.makedirs(labels_dir)
        for key, group in cls.truth.groupby(cls.truth["micrograph"].map(micrograph_key)):
            np.savetxt(f"{labels_dir}/{key}.txt", group[["x", "y", "z"]].to_numpy()[:3],
                       fmt="%.1f")  # 3 labels per tomogram, the rest unlabelled
        tomos = cls.newProtocol(ProtImportTomograms, filesPath=f"{data}/tomograms",
                                filesPattern="tomo_*.mrc", samplingRate=SIM.voxel_size)
        cls.launchProtocol(tomos)
        cls.tomos = tomos.Tomograms
        labels = cls.newProtocol(ProtImportCoordinates3D, filesPath=labels_dir,
                                 filesPattern="*.txt", boxSize=DIAMETER)
        labels.importTomograms.set(cls.tomos)
        cls.launchProtocol(labels)
        cls.labels = labels.outputCoordinates
        pick = cls.newProtocol(FewShotProtPickTomo, modelSize=0, steps=30, useGpu=False)
        pick.inputTomograms.set(cls.tomos)
        pick.inputCoordinates.set(cls.labels)
        cls.launchProtocol(pick)
        cls.pick = pick

    def test_labels_carry_their_species_from_group_ids(self):
        from scipion_fewshotpicker.convert import writeTomoLabels
        tomos = {t.getTsId(): t.clone() for t in self.tomos.iterItems()}

        class Labels:  # the labels as imported, given species 1, 2, 1, 2, ...
            def __init__(self, items):
                self.items = items

            def iterItems(self):
                return iter(self.items)

        plain = [c.clone() for c in self.labels.iterItems()]
        for coord in plain:
            coord.setGroupId(None)
        out = self.getOutputPath("plain.star")
        self.assertEqual(writeTomoLabels(Labels(plain), tomos, out), 6)
        with open(out) as f:
            self.assertNotIn("rlnClassNumber", f.read())  # one species
        grouped = [c.clone() for c in self.labels.iterItems()]
        for i, coord in enumerate(grouped):
            coord.setGroupId(1 + i % 2)
        out = self.getOutputPath("grouped.star")
        writeTomoLabels(Labels(grouped), tomos, out)
        self.assertEqual(read_coordinates(out)["class"].tolist(), [1, 2] * 3)

    def test_picks_lie_on_the_truth_in_scipion_convention_with_tsids(self):
        coords = self.pick.output3DCoordinates
        self.assertEqual(coords.getBoxSize(), DIAMETER)
        self.assertAlmostEqual(coords.getSamplingRate(), SIM.voxel_size)
        n_truth = len(self.truth)
        self.assertTrue(0.5 * n_truth <= coords.getSize() <= 1.5 * n_truth,
                        (coords.getSize(), n_truth))
        d, h, w = SIM.shape
        tsids = {t.getTsId() for t in self.tomos.iterItems()}
        hits = 0
        for coord in coords.iterItems():
            self.assertIn(coord.getTomoId(), tsids)
            mine = self.truth[self.truth["micrograph"].map(micrograph_key) == coord.getTomoId()]
            # Scipion stores positions from the tomogram centre (voxels)
            centred = mine[["x", "y", "z"]].to_numpy() - np.array([w, h, d]) / 2.0
            dist = np.linalg.norm(centred - np.array(coord.getPosition(SCIPION)), axis=1)
            hits += dist.min() <= DIAMETER / 4  # CZII: within half a radius
            self.assertTrue(0.0 <= getattr(coord, SCORE_ATTR).get() <= 1.0)
        self.assertGreaterEqual(hits / coords.getSize(), 0.6)
        # picks on both tomograms, each carrying its own tsId
        self.assertEqual({c.getTomoId() for c in coords.iterItems()}, tsids)

    def test_summary_and_slices_figure(self):
        summary = " ".join(self.pick.summary())
        self.assertIn(f"{self.pick.output3DCoordinates.getSize()} picks in 2 tomogram(s)",
                      summary)
        slices = os.listdir(self.pick._getExtraPath("pick3d", "slices"))
        self.assertEqual(len(slices), 2)

    def test_viewers_show_the_slices_and_the_loss_curves(self):
        from pyworkflow.gui.plotter import Plotter
        from scipion_fewshotpicker.viewers import FewShotCurvesViewer, FewShotTomoPicksViewer
        Plotter.setBackend("Agg")
        viewer = FewShotTomoPicksViewer(project=self.proj)
        viewer.setProtocol(self.pick)
        viewer.tomoIndex.set(1)  # the first of two: a set's iterator refills one object
        ids = [tomo.getObjId() for tomo in self.tomos.iterItems(orderBy="id")]
        self.assertEqual(len(set(ids)), len(ids))
        self.assertTrue(viewer.figurePath().endswith("tomo_%06d.png" % ids[0]))
        plot = viewer._getVisualizeDict()["doShowSlices"]()[0]
        self.assertGreater(plot.getFigure().axes[0].images[0].get_array().shape[1], 100)
        curves = FewShotCurvesViewer(project=self.proj)._visualize(self.pick)
        self.assertGreater(curves[0].getFigure().axes[0].images[0].get_array().shape[0], 100)

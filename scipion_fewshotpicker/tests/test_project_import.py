"""A real headless Scipion project: import simulated micrographs and their truth coordinates.

The data come from the engine's simulator; the sets are built by pwem's own
import protocols (coordinates through scipion-em-relion's STAR reader), run as
subprocesses exactly as in the GUI.
"""
import numpy as np
import pytest

pytest.importorskip("pwem")
pytest.importorskip("relion")

from pwem.protocols import ProtImportCoordinates, ProtImportMicrographs  # noqa: E402
from pyworkflow.tests import BaseTest, setupTestProject  # noqa: E402

from fewshotpicker.config import MicrographSimConfig  # noqa: E402
from fewshotpicker.data.synthetic import simulate_dataset  # noqa: E402
from fewshotpicker.io.coordinates import micrograph_key, read_coordinates  # noqa: E402

pytestmark = pytest.mark.scipion


class TestImportSimulated(BaseTest):
    """Import -> import coordinates; the sets hold the simulated truth."""

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.data = cls.getOutputPath("simulated")
        cfg = MicrographSimConfig(n_micrographs=2, shape=(256, 320), crowding=0.2, seed=7)
        cls.meta = simulate_dataset(cfg, cls.data)
        cls.truth = read_coordinates(f"{cls.data}/truth.star")

    def _import_micrographs(self):
        prot = self.newProtocol(ProtImportMicrographs, filesPath=f"{self.data}/micrographs",
                                filesPattern="mic_*.mrc", samplingRate=5.0, voltage=300.0,
                                sphericalAberration=2.7, amplitudeContrast=0.07)
        self.launchProtocol(prot)
        return prot.outputMicrographs

    def test_import_micrographs_and_truth_coordinates(self):
        mics = self._import_micrographs()
        self.assertEqual(mics.getSize(), 2)
        self.assertAlmostEqual(mics.getSamplingRate(), 5.0)
        self.assertEqual(tuple(mics.getFirstItem().getDim()[:2]), (320, 256))  # x, y

        prot = self.newProtocol(ProtImportCoordinates,
                                importFrom=ProtImportCoordinates.IMPORT_FROM_RELION,
                                filesPath=self.data, filesPattern="truth.star",
                                boxSize=self.meta["box_px"])
        prot.inputMicrographs.set(mics)
        self.launchProtocol(prot)
        coords = prot.outputCoordinates
        self.assertEqual(coords.getSize(), len(self.truth))
        self.assertEqual(coords.getBoxSize(), self.meta["box_px"])

        names = {mic.getObjId(): micrograph_key(mic.getMicName()) for mic in mics}
        got = {}
        for coord in coords:
            got.setdefault(names[coord.getMicId()], []).append((coord.getX(), coord.getY()))
        for key, rows in self.truth.groupby(self.truth["micrograph"].map(micrograph_key)):
            # Scipion stores integer pixels and its import truncates (Integer(float))
            expected = sorted(map(tuple, np.floor(rows[["x", "y"]].to_numpy()).astype(int)))
            self.assertEqual(sorted(got[key]), expected, key)

"""FewShotProtPick in streaming: micrographs arrive while it runs; each is picked exactly once.

A streaming ProtImportMicrographs watches a folder; the first micrograph is there
at the start, the others are copied in while the picking protocol already runs.
The model is trained with the engine directly (the protocol chain itself is
covered by test_protocols) and brought in through FewShotProtImportModel.
"""
import glob
import os
import shutil
import time

import pytest

pytest.importorskip("pwem")

from pwem.protocols import ProtImportMicrographs  # noqa: E402
from pyworkflow.tests import BaseTest, setupTestProject  # noqa: E402

from fewshotpicker.config import MicrographSimConfig, PretrainConfig, TrainConfig  # noqa: E402
from fewshotpicker.data.synthetic import simulate_dataset  # noqa: E402
from fewshotpicker.io.coordinates import read_coordinates  # noqa: E402
from fewshotpicker.training.finetune import finetune  # noqa: E402
from fewshotpicker.training.pretrain import pretrain  # noqa: E402
from scipion_fewshotpicker.protocols import FewShotProtImportModel, FewShotProtPick  # noqa

pytestmark = pytest.mark.scipion

SIM = MicrographSimConfig(n_micrographs=3, shape=(256, 256), crowding=0.3, snr=1.0,
                          ice_crystals=0.5, aggregates=0.5, carbon_edge=0.0, seed=5)


class TestPickStreaming(BaseTest):

    @classmethod
    def setUpClass(cls):
        setupTestProject(cls)
        cls.data = cls.getOutputPath("simulated")
        meta = simulate_dataset(SIM, cls.data)
        mics = sorted(glob.glob(f"{cls.data}/micrographs/*.mrc"))
        box = float(meta["box_px"])
        pretrain(PretrainConfig(model="tiny", box=box, epochs=5, regions_per_micrograph=64,
                                batch_size=64, device="cpu"), mics, f"{cls.data}/pre")
        # no student: streaming is under test here, the student cascade in test_protocols
        finetune(TrainConfig(box=box, pretrained=f"{cls.data}/pre", steps=20, student_steps=0,
                             device="cpu"),
                 mics, read_coordinates(f"{cls.data}/exemplars.star"), f"{cls.data}/ft")
        cls.mics = mics

    def _wait(self, prot, done, limit=600):
        start = time.time()
        while time.time() - start < limit:
            self.proj._updateProtocol(prot)  # reloads its state and outputs in place
            if prot.isFailed():
                self.printLastLogLines(prot)
                self.fail(f"{prot.getRunName()} failed")
            if done(prot):
                return prot
            time.sleep(2)
        self.fail(f"{prot.getRunName()} did not finish in {limit} s")

    def test_micrographs_arriving_while_picking_are_each_picked_once(self):
        model = self.newProtocol(FewShotProtImportModel, modelPath=f"{self.data}/ft",
                                 samplingRate=SIM.pixel_size)
        self.launchProtocol(model)

        incoming = self.getOutputPath("incoming")
        os.makedirs(incoming)
        shutil.copy(self.mics[0], incoming)
        imp = self.newProtocol(ProtImportMicrographs, filesPath=incoming, filesPattern="*.mrc",
                               samplingRate=SIM.pixel_size, voltage=300.0,
                               sphericalAberration=2.7, amplitudeContrast=0.07,
                               dataStreaming=True, timeout="20", fileTimeout="1")
        self.proj.launchProtocol(imp, wait=False)
        imp = self._wait(imp, lambda p: p.hasAttribute("outputMicrographs"))

        pick = self.newProtocol(FewShotProtPick, useGpu=False, streamingBatchSize=1)
        pick.inputMicrographs.set(imp)
        pick.inputMicrographs.setExtended("outputMicrographs")
        pick.inputModel.set(model.outputModel)
        self.proj.launchProtocol(pick, wait=False)
        for path in self.mics[1:]:  # arrive while the picker runs
            time.sleep(4)
            shutil.copy(path, incoming)

        imp = self._wait(imp, lambda p: p.isFinished())
        pick = self._wait(pick, lambda p: p.isFinished())
        coords = pick.outputCoordinates
        self.assertEqual(imp.outputMicrographs.getSize(), 3)
        per_mic = {}
        for c in coords.iterItems():
            per_mic[c.getMicId()] = per_mic.get(c.getMicId(), 0) + 1
        self.assertEqual(set(per_mic), {m.getObjId() for m in imp.outputMicrographs})
        stars = glob.glob(pick._getExtraPath("picks", "*_autopick.star"))
        self.assertEqual(len(stars), 3)
        # no micrograph twice: the set holds exactly the rows of the three STAR files
        self.assertEqual(coords.getSize(), sum(len(read_coordinates(s)) for s in stars))
        self.assertEqual(len(glob.glob(pick._getExtraPath("DONE", "mic_*.TXT"))), 3)

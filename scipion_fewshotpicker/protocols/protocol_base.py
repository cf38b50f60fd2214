"""What every protocol of this plugin shares: devices, engine configs, engine runs."""
import json
import os
import shutil

import pyworkflow.protocol.params as params

from .. import Plugin
from ..convert import coordinateRows

MODEL_SIZES = ["tiny", "small", "base"]


class FewShotProtBase:
    """Mixin: GPU/CPU parameters, ``config.json`` writing and engine calls.

    A protocol using it builds a dict of engine parameters, writes it with
    :meth:`writeEngineConfig` and runs the engine with :meth:`runEngine`; the
    numbers are all computed by the engine.
    """

    MODEL_FOLDER = "model"  # the engine run's folder under extra/

    def _micFolder(self):
        """Where the input micrographs are linked for the engine."""
        return self._getExtraPath("micrographs")

    def _modelFolder(self):
        return self._getExtraPath(self.MODEL_FOLDER)

    def _insertEngineSteps(self, runStep):
        """convertInputStep -> the engine run -> createOutputStep."""
        for step in (self.convertInputStep, runStep, self.createOutputStep):
            self._insertFunctionStep(step.__name__)

    def engineSummary(self):
        """The engine run's ``summary.json`` as a dict, or None before it has run."""
        path = os.path.join(self._modelFolder(), "summary.json")
        if not os.path.exists(path):
            return None
        with open(path) as fh:
            return json.load(fh)

    def _withModelLine(self, lines):
        """Summary lines, plus where the output model lies once there is one."""
        if self.hasAttribute("outputModel"):
            lines.append(f"Model: {self.outputModel.getPath()}")
        return lines

    def coordinateScale(self, coords):
        """Pixels of the input micrographs per pixel of the micrographs ``coords`` were
        picked on (1 when either pixel size is unknown)."""
        coordMics = coords.getMicrographs()
        mine = self.getInputMicrographs().getSamplingRate()
        return coordMics.getSamplingRate() / mine if coordMics is not None and mine else 1.0

    def coordinateRows(self, coords):
        """``(objId, micKey, x, y)`` of the coordinates lying on the input micrographs, in
        their pixels."""
        mics = {mic.getMicName(): mic.clone() for mic in self.getInputMicrographs()}
        return coordinateRows(coords, mics, self.coordinateScale(coords))

    def _defineSeedParam(self, form):
        form.addParam("seed", params.IntParam, default=0, expertLevel=params.LEVEL_ADVANCED,
                      label="Random seed",
                      help="Seeds every random choice; the same seed and inputs give the same "
                           "model.")

    def _defineDeviceParams(self, form):
        form.addHidden(params.USE_GPU, params.BooleanParam, default=True,
                       label="Use GPU?",
                       help="Run on the GPUs of the list below; if No, on the CPU "
                            "(slow for the base model; fine for tiny).")
        form.addHidden(params.GPU_LIST, params.StringParam, default="0",
                       label="GPU IDs",
                       help="GPUs to use, e.g. '0' or '0 1'. Picking shares the micrographs "
                            "among all of them; pretraining splits every batch among them "
                            "(one process per GPU, started by torchrun); fine-tuning uses "
                            "the first. Where a queue gives the job some GPUs "
                            "(CUDA_VISIBLE_DEVICES), the ids count within those: 0 is the "
                            "first GPU the job was given.")

    def getDeviceSpec(self, single=False):
        """The engine's --device value: 'cpu', or GPU ids such as '0,1'."""
        if not self.useGpu.get():
            return "cpu"
        gpus = [str(g) for g in self.getGpuList()] or ["0"]
        return gpus[0] if single else ",".join(gpus)

    def trainingGpus(self):
        """The GPU ids a multi-GPU pretraining runs on (none: one process)."""
        gpus = [str(g) for g in self.getGpuList()] if self.useGpu.get() else []
        return gpus if len(gpus) > 1 else []

    def validateDevice(self):
        """Errors about the device: GPUs asked for on a machine without any (unless the
        job goes to a queue, whose nodes may have them)."""
        if self.useGpu.get() and not self.useQueue() and shutil.which("nvidia-smi") is None:
            return ["No NVIDIA GPU found on this machine (nvidia-smi is missing): set "
                    "'Use GPU' to No to run on the CPU, or send the job to a GPU queue."]
        return []

    def writeEngineConfig(self, name, values):
        """Write engine parameters to ``extra/<name>.json``; returns its path."""
        return self.writeExtraJson(name, values)

    def writeExtraJson(self, name, values):
        """Write ``values`` to ``extra/<name>.json`` atomically; returns its path."""
        path = self._getExtraPath(name + ".json")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(values, fh, indent=1)
        os.replace(tmp, path)
        return path

    def runEngine(self, command, configPath, extraArgs="", gpus=None):
        Plugin.runEngine(self, command, configPath, extraArgs, gpus=gpus)

    @staticmethod
    def quote(paths):
        import shlex
        return " ".join(shlex.quote(str(p)) for p in paths)

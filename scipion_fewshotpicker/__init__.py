"""Scipion plugin for few-shot particle picking (the ``fewshotpicker`` engine).

The plugin never imports torch: its protocols write a ``config.json`` and run
the engine as a subprocess through :meth:`Plugin.runEngine`, in the
environment named by ``FEWSHOTPICKER_ENV_ACTIVATION``, else the one that
``scipion3 installb fewshotpicker`` made, else Scipion's own.
"""
import os
import shlex
import sys

import pwem
import pyworkflow.utils as pwutils

from .constants import (DEFAULT_ENV_ACTIVATION, ENGINE_INSTALLED, ENGINE_PACKAGE,
                        ENGINE_PROGRAM, ENGINE_VENV, FEWSHOTPICKER_ENV_ACTIVATION)

__version__ = "0.1.0"
_logo = ""
_references = ["Xu2024CryoMAE", "Li2022PickerOptimizer", "Wang2025SemiETPicker",
               "MasoumzadehTork2019HydraPicker"]


class Plugin(pwem.Plugin):
    # Keep _pathVars empty: Scipion refuses to run any protocol when a listed path is missing.
    _pathVars = []
    _supportedVersions = [__version__]
    _url = "https://github.com/scipion-em/scipion-em-fewshotpicker"

    @classmethod
    def _defineVariables(cls):
        cls._defineVar(FEWSHOTPICKER_ENV_ACTIVATION, DEFAULT_ENV_ACTIVATION)

    @classmethod
    def getActivation(cls):
        """The shell command that activates the engine's environment: the variable's when
        set; else that of the environment ``scipion3 installb fewshotpicker`` made, once
        its installation finished; else '' (Scipion's own environment)."""
        chosen = (cls.getVar(FEWSHOTPICKER_ENV_ACTIVATION) or "").strip()
        if chosen:
            return chosen
        home = cls.getEngineEnvHome()
        if os.path.exists(os.path.join(home, ENGINE_INSTALLED)):
            return ". " + shlex.quote(os.path.join(home, ENGINE_VENV, "bin", "activate"))
        return ""

    @classmethod
    def getEngineEnvHome(cls):
        """The folder ``scipion3 installb fewshotpicker`` installs into:
        ``EM_ROOT/fewshotpicker-<version>``."""
        return os.path.join(pwem.Config.EM_ROOT, f"{ENGINE_PACKAGE}-{__version__}")

    @classmethod
    def getEngineProgram(cls, processes=1):
        """The engine command line prefix: activation + ``fewshotpicker``.

        With no activation, the console script beside this interpreter is used,
        so the engine runs in the same environment as Scipion. With ``processes`` > 1
        the command is started that many times by ``torchrun`` on this node (one
        process per GPU; the engine's pretraining splits each batch among them).
        """
        activation = cls.getActivation()
        if processes > 1:
            options = f"--standalone --nproc-per-node {int(processes)} -m fewshotpicker"
            if activation:
                return f"{activation} && torchrun {options}"
            return f"{shlex.quote(sys.executable)} -m torch.distributed.run {options}"
        if activation:
            return f"{activation} && {ENGINE_PROGRAM}"
        local = os.path.join(os.path.dirname(sys.executable), ENGINE_PROGRAM)
        return local if os.path.exists(local) else f"{shlex.quote(sys.executable)} -m fewshotpicker"

    @classmethod
    def getEnviron(cls, gpus=None):
        """Environment for the engine: Scipion's, without its PYTHONPATH when another
        environment is activated (it would shadow that environment's packages); with
        ``gpus`` (ids), only those GPUs visible, so that process ``i`` of a torchrun
        launch takes the ``i``-th of them (see ``visibleGpus``)."""
        environ = pwutils.Environ(os.environ)
        if cls.getActivation() and "PYTHONPATH" in environ:
            del environ["PYTHONPATH"]
        environ.setdefault("FEWSHOTPICKER_NO_PROGRESS", "1")
        if gpus:
            environ["CUDA_VISIBLE_DEVICES"] = ",".join(
                cls.visibleGpus(gpus, environ.get("CUDA_VISIBLE_DEVICES")))
        return environ

    @staticmethod
    def visibleGpus(gpus, visible=None):
        """The ``CUDA_VISIBLE_DEVICES`` entries for GPU ids ``gpus``.

        Where a queue has already restricted the job to some GPUs (``visible``, e.g.
        ``"4,6"`` or UUIDs), the ids count within those, as torch's and RELION's do:
        ids 0 1 are GPUs 4 and 6; otherwise they are the machine's own ids.
        """
        ids = [str(g).strip() for g in gpus]
        if visible is None:
            return ids
        granted = [v.strip() for v in visible.split(",") if v.strip()]
        if not granted:
            raise ValueError("This job was given no GPU (CUDA_VISIBLE_DEVICES is empty); "
                             "set 'Use GPU' to No or send it to a GPU queue.")
        chosen = []
        for gpu in ids:
            if not gpu.isdigit() or int(gpu) >= len(granted):
                raise ValueError(
                    f"GPU id {gpu} is not among the {len(granted)} GPU(s) this job was given "
                    f"(CUDA_VISIBLE_DEVICES={visible}); GPU ids count from 0 within those.")
            chosen.append(granted[int(gpu)])
        return chosen

    @classmethod
    def runEngine(cls, protocol, command, configPath, extraArgs="", cwd=None, gpus=None):
        """Run ``fewshotpicker <command> [--config <configPath>] [extraArgs]`` as a protocol job.

        ``gpus``: for pretraining on several GPUs, their ids; the command then runs once
        per GPU under torchrun. The engine's stdout/stderr go to the protocol's logs; a
        non-zero exit fails the step with the engine's one-sentence error in the log.
        """
        config = f"--config {shlex.quote(str(configPath))} " if configPath else ""
        args = f"{command} {config}{extraArgs}".strip()
        protocol.runJob(cls.getEngineProgram(len(gpus or [])), args,
                        env=cls.getEnviron(gpus), cwd=cwd, numberOfMpi=1, numberOfThreads=1)

    @staticmethod
    def engineInstallCommand(python, source, pipOptions=""):
        """The shell line that installs the engine into ``./venv`` of the current folder.

        ``python``: the interpreter that makes the venv (Scipion's, 3.9-3.12);
        ``source``: what pip installs (this plugin's source folder as ``-e DIR``, a
        wheel, or a requirement). The marker file is written only after the engine in
        the new venv has answered, so an installation that failed half way is not used
        and ``installb`` tries again. Scipion's ``PYTHONPATH`` is dropped first: through
        it pip would find the dependencies already installed, and the engine would answer
        here and then fail where the protocols run it (without that path).
        """
        venv = os.path.join(ENGINE_VENV, "bin", "python")
        steps = ["unset PYTHONPATH", f"{shlex.quote(python)} -m venv {ENGINE_VENV}",
                 " ".join(filter(None, [venv, "-m pip install", pipOptions, source])),
                 f"{venv} -m {ENGINE_PACKAGE} --version",
                 f"touch {ENGINE_INSTALLED}"]
        return " && ".join(steps)

    @staticmethod
    def engineSource():
        """What ``installb`` installs: this plugin's own source folder (editable) when it is
        a checkout (``installp --devel``), else this version from the package index."""
        folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if os.path.exists(os.path.join(folder, "setup.py")):
            return "-e " + shlex.quote(folder)
        return f"scipion-em-fewshotpicker=={__version__}"

    @classmethod
    def defineBinaries(cls, env):
        """``scipion3 installb fewshotpicker``: a venv beside the other EM packages holding
        the engine and its torch (pip's default Linux wheel, built for CUDA), which the
        protocols then use (see :meth:`getActivation`). Optional: the plugin's own
        installation already puts the engine into Scipion's environment; this keeps its
        torch and numpy apart from the packages Scipion pins."""
        env.addPackage(ENGINE_PACKAGE, version=__version__, tar="void.tgz",
                       commands=[(cls.engineInstallCommand(sys.executable, cls.engineSource()),
                                  ENGINE_INSTALLED)],
                       neededProgs=[], default=False)

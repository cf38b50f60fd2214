"""The plugin is registered in Scipion and its pieces load (no project needed)."""
import os
import sys

import pytest

pwem = pytest.importorskip("pwem")


def test_plugin_is_discovered_by_scipion():
    from pyworkflow.plugin import Domain
    plugin = Domain.getPlugin("scipion_fewshotpicker")
    from scipion_fewshotpicker import Plugin
    assert plugin.Plugin is Plugin


def test_engine_program_runs_in_this_environment_by_default():
    from scipion_fewshotpicker import Plugin
    assert Plugin.getActivation() == ""
    program = Plugin.getEngineProgram()
    assert program.endswith("fewshotpicker")
    assert os.path.dirname(sys.executable) in program or sys.executable in program
    assert Plugin._pathVars == []


def test_bibtex_cites_the_method_papers():
    from pyworkflow.utils import parseBibTex
    from scipion_fewshotpicker import _references, bibtex
    entries = parseBibTex(bibtex.__doc__)
    for key in _references:
        assert key in entries
    assert entries["Li2022PickerOptimizer"]["doi"] == "10.1089/cmb.2022.0101"


def test_fewshot_model_object_round_trips_its_attributes():
    from scipion_fewshotpicker.objects import FewShotModel
    model = FewShotModel(path="/runs/ft", kind="finetuned", modelSize="tiny", boxSize=40,
                         samplingRate=5.0)
    copy = FewShotModel()
    copy.copy(model)
    assert copy.getCheckpoint() == "/runs/ft/model.pt"
    assert (copy.getKind(), copy.getModelSize(), copy.getBoxSize(), copy.getSamplingRate()) \
        == ("finetuned", "tiny", 40, 5.0)


def test_protocols_are_registered_and_listed_under_picking():
    import configparser
    import json
    from pyworkflow.plugin import Domain
    import scipion_fewshotpicker
    names = {"FewShotProtPretrain", "FewShotProtTrain", "FewShotProtPick",
             "FewShotProtImportModel", "FewShotProtPrune"}
    assert names <= set(Domain.getProtocols())
    conf = configparser.ConfigParser()
    conf.optionxform = str
    conf.read(os.path.join(os.path.dirname(scipion_fewshotpicker.__file__), "protocols.conf"))
    tree = json.loads(conf["PROTOCOLS"]["Protocols SPA"])
    picking = tree[0]["children"][0]
    assert (tree[0]["text"], picking["text"]) == ("Particles", "Picking")
    assert {p["value"] for p in picking["children"]} == names
    tomo = json.loads(conf["PROTOCOLS"]["Tomography"])[0]["children"][0]
    assert [p["value"] for p in tomo["children"]] == ["FewShotProtPickTomo"]
    assert "FewShotProtPickTomo" in Domain.getProtocols()


def test_every_protocol_parameter_has_help():
    from scipion_fewshotpicker.protocols import (FewShotProtImportModel, FewShotProtPick,
                                                 FewShotProtPickTomo, FewShotProtPretrain,
                                                 FewShotProtPrune, FewShotProtTrain)
    for cls in (FewShotProtPretrain, FewShotProtTrain, FewShotProtPick, FewShotProtImportModel,
                FewShotProtPrune, FewShotProtPickTomo):
        prot = cls()
        ours = [name for name, param in prot.iterDefinitionAttributes()
                if name[0].islower() and not name.startswith("streaming") and
                name not in ("inputMicrographs", "inputTomograms", "hostName", "numberOfThreads", "numberOfMpi",
                             "runName", "runMode", "comment", "useQueue", "queueParams")]
        for name in ours:
            param = prot.getParam(name)
            assert param.help.get(), f"{cls.__name__}.{name} has no help"


def test_train_protocol_offers_the_engines_student_precisions_with_its_default_first():
    from fewshotpicker.config import TrainConfig
    from fewshotpicker.device import PRECISIONS
    from scipion_fewshotpicker.protocols import FewShotProtTrain
    from scipion_fewshotpicker.protocols.protocol_train import STUDENT_PRECISIONS

    assert sorted(STUDENT_PRECISIONS) == sorted(PRECISIONS)
    assert STUDENT_PRECISIONS[FewShotProtTrain().studentPrecision.get()] == \
        TrainConfig().student_precision


def test_coordinate_rows_are_rescaled_and_matched_by_micrograph_name():
    from types import SimpleNamespace as NS
    from scipion_fewshotpicker.convert import coordinateRows
    coords = [NS(getObjId=lambda: 3, getMicName=lambda: "a.mrc", getX=lambda: 10,
                 getY=lambda: 20),
              NS(getObjId=lambda: 4, getMicName=lambda: "elsewhere.mrc", getX=lambda: 1,
                 getY=lambda: 1)]
    mics = {"a.mrc": NS(getObjId=lambda: 7)}
    rows = coordinateRows(NS(iterItems=lambda: iter(coords)), mics, scale=2.5)
    assert rows == [(3, "mic_000007", 25.0, 50.0)]  # picked at 2.5x this pixel size


def test_the_pick_protocols_box_follows_the_engines_rescaling_rule():
    from scipion_fewshotpicker.convert import modelScale
    assert modelScale(5.0, 2.5) == 2.0 and modelScale(2.0, 4.0) == 0.5  # box x 2, box / 2
    assert modelScale(5.0, 5.05) == 1.0  # within the engine's 2 %: not rescaled there either
    assert modelScale(0.0, 2.5) == 1.0 and modelScale(5.0, 0.0) == 1.0  # unknown


def test_asking_for_a_gpu_on_a_machine_without_one_is_refused(monkeypatch):
    from scipion_fewshotpicker.protocols import FewShotProtPick, protocol_base
    monkeypatch.setattr(protocol_base.shutil, "which", lambda name: None)
    prot = FewShotProtPick()
    prot.useGpu.set(True)
    errors = prot.validateDevice()
    assert len(errors) == 1 and "set 'Use GPU' to No" in errors[0]
    prot.useGpu.set(False)
    assert prot.validateDevice() == [] and prot.getDeviceSpec() == "cpu"
    monkeypatch.setattr(protocol_base.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    prot.useGpu.set(True)
    prot.gpuList.set("0 1")
    assert prot.validateDevice() == [] and prot.getDeviceSpec() == "0,1"


def test_pick_counts_name_the_unusual_micrographs_and_draw_the_summary(tmp_path):
    from scipion_fewshotpicker.convert import summarisePickCounts
    counts = {f"mic_{i:06d}": {"name": f"exp_{i}.mrc", "picks": p, "cutoff": 0.9}
              for i, p in enumerate([100, 98, 103, 101, 99, 0, 97])}
    counts["mic_000007"] = {"name": "exp_0.mrc", "picks": 400, "cutoff": 0.5}  # same name
    png = tmp_path / "summary.png"
    assert summarisePickCounts(counts, str(png), failed=1) == ["exp_5.mrc", "mic_000007"]
    assert png.stat().st_size > 1000
    assert summarisePickCounts(dict(list(counts.items())[:4]), str(png)) == []  # too few


def test_pretraining_on_several_gpus_runs_the_engine_once_per_gpu_under_torchrun(
        tmp_path, monkeypatch):
    import subprocess
    from fewshotpicker.config import MicrographSimConfig
    from fewshotpicker.data.synthetic import simulate_dataset
    from scipion_fewshotpicker import Plugin
    from scipion_fewshotpicker.protocols import FewShotProtPretrain
    program = Plugin.getEngineProgram(2)
    assert program.endswith("-m torch.distributed.run --standalone --nproc-per-node 2 "
                            "-m fewshotpicker")
    assert Plugin.visibleGpus(["1", "3"]) == ["1", "3"]
    assert Plugin.visibleGpus(["0", "1"], "4,6") == ["4", "6"]  # a queue granted 4 and 6
    assert Plugin.visibleGpus(["1"], "GPU-a1, GPU-b2") == ["GPU-b2"]
    with pytest.raises(ValueError, match="GPU id 2 is not among the 2 GPU"):
        Plugin.visibleGpus(["0", "2"], "4,6")
    with pytest.raises(ValueError, match="given no GPU"):
        Plugin.visibleGpus(["0", "1"], "")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert Plugin.getEnviron(["1", "3"])["CUDA_VISIBLE_DEVICES"] == "1,3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    assert Plugin.getEnviron(["0", "2"])["CUDA_VISIBLE_DEVICES"] == "2,7"
    assert Plugin.getEnviron()["CUDA_VISIBLE_DEVICES"] == "2,5,7"  # untouched without gpus
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    prot = FewShotProtPretrain()
    prot.gpuList.set("0 2")
    assert prot.trainingGpus() == ["0", "2"]
    prot.gpuList.set("1")
    assert prot.trainingGpus() == []  # one GPU: one process, as before
    prot.gpuList.set("0 2")
    prot.useGpu.set(False)
    assert prot.trainingGpus() == []
    # the command line the protocol runs works as given (on the CPU here: gloo)
    simulate_dataset(MicrographSimConfig(n_micrographs=1, shape=(128, 128), seed=1), tmp_path)
    args = (f"pretrain --micrographs {tmp_path / 'micrographs'} --out {tmp_path / 'pre'} "
            f"--model micro --box 40 --regions 8 --epochs 1 --batch-size 4 --device cpu")
    run = subprocess.run(f"{program} {args}", shell=True, capture_output=True, text=True,
                         env={**Plugin.getEnviron(), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 processes" in run.stderr
    assert (tmp_path / "pre" / "model.pt").exists()


class RecordingEnv:
    """Stands in for scipion-app's install Environment: records ``addPackage`` calls."""
    def __init__(self):
        self.packages = []

    def addPackage(self, name, **kwargs):
        self.packages.append((name, kwargs))


def build_wheel(tmp_path):
    """This checkout's distribution as a wheel (no network): ``tmp_path/wheels/*.whl``."""
    import shutil
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(root, name), src / name)
    for name in ("fewshotpicker", "scipion_fewshotpicker"):
        shutil.copytree(os.path.join(root, name), src / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(src)],
                   check=True)
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    return root, wheel


def test_installb_makes_a_venv_that_the_protocols_use_only_once_it_works(tmp_path, monkeypatch):
    import glob
    import subprocess
    from scipion_fewshotpicker import Plugin, __version__
    from scipion_fewshotpicker.constants import ENGINE_INSTALLED, FEWSHOTPICKER_ENV_ACTIVATION
    monkeypatch.setattr(pwem.Config, "EM_ROOT", str(tmp_path / "em"))
    root, wheel = build_wheel(tmp_path)
    env = RecordingEnv()
    Plugin.defineBinaries(env)
    ((name, kw),) = env.packages
    assert (name, kw["version"], kw["tar"], kw["default"]) == (
        "fewshotpicker", __version__, "void.tgz", False)
    ((command, target),) = kw["commands"]
    assert target == ENGINE_INSTALLED
    assert command.startswith(f"unset PYTHONPATH && {sys.executable} -m venv venv && "
                              f"venv/bin/python -m pip install -e {root} && ")  # editable

    # scipion3 installb runs the command in EM_ROOT/fewshotpicker-<version>; here offline,
    # with this checkout's wheel and without its dependencies, so the engine cannot answer
    home = Plugin.getEngineEnvHome()
    assert home == str(tmp_path / "em" / f"fewshotpicker-{__version__}")
    os.makedirs(home)
    command = Plugin.engineInstallCommand(sys.executable, str(wheel), "--no-index --no-deps")
    import numpy
    scipions = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(numpy.__file__))}
    done = subprocess.run(command, shell=True, cwd=home, capture_output=True, text=True,
                          env=scipions)  # numpy there would have answered for the venv
    assert done.returncode != 0 and "No module named" in done.stderr
    assert glob.glob(os.path.join(home, "venv/lib/python*/site-packages/fewshotpicker/models/"
                                        "mae.py"))  # every package of the engine, in a wheel
    assert not os.path.exists(os.path.join(home, ENGINE_INSTALLED))
    assert Plugin.getActivation() == ""  # a half-made installation is not used

    open(os.path.join(home, ENGINE_INSTALLED), "w").close()  # as if the engine had answered
    activation = Plugin.getActivation()
    assert activation == f". {home}/venv/bin/activate"
    assert Plugin.getEngineProgram() == f"{activation} && fewshotpicker"
    shell = f"{activation} && command -v fewshotpicker && python -c 'import sys; print(sys.prefix)'"
    monkeypatch.setenv("PYTHONPATH", root)
    found = subprocess.run(shell, shell=True, env=Plugin.getEnviron(), capture_output=True,
                           text=True, check=True).stdout.split()
    assert found == [f"{home}/venv/bin/fewshotpicker", f"{home}/venv"]
    assert "PYTHONPATH" not in Plugin.getEnviron()  # Scipion's packages would shadow the venv's
    monkeypatch.setitem(Plugin._vars, FEWSHOTPICKER_ENV_ACTIVATION, "conda activate mine")
    assert Plugin.getActivation() == "conda activate mine"  # the user's choice comes first

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

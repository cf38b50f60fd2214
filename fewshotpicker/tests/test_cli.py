"""The command line, run in-process on toy data: outputs, run records, and bad input."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from fewshotpicker.cli.main import main
from fewshotpicker.errors import InputError
from fewshotpicker.io.coordinates import (make_coordinates, micrograph_key, read_coordinates,
                                          write_coordinate_table)
from fewshotpicker.io.mrc import write_mrc


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    assert main(["simulate", "--out", str(out), "--n", "2", "--shape", "256", "256",
                 "--seed", "4", "--snr", "0.1", "--crowding", "0.2"]) == 0
    return out


def test_simulate_writes_data_truth_preview_and_run_record(tiny):
    assert sorted(p.name for p in (tiny / "micrographs").iterdir()) == ["mic_000.mrc",
                                                                       "mic_001.mrc"]
    for name in ("truth.star", "exemplars.star", "lures.star", "meta.json", "preview.png"):
        assert (tiny / name).exists(), name
    record = json.loads((tiny / "config.json").read_text())
    assert record["command"] == "simulate" and record["seed"] == 4
    assert record["config"]["shape"] == [256, 256] and record["config"]["snr"] == 0.1
    assert "--seed" in record["argv"] or record["argv"]


def test_simulate_tomograms(tmp_path, capsys):
    code, _, _ = run(capsys, "simulate", "--kind", "tomograms", "--out", str(tmp_path),
                     "--n", "1", "--shape", "32", "64", "64", "--seed", "1")
    assert code == 0
    truth = starfile.read(tmp_path / "truth3d.star")
    assert {"rlnTomoName", "rlnCoordinateZ", "rlnClassNumber"} <= set(truth.columns)
    assert (tmp_path / "tomograms" / "tomo_000.mrc").exists()
    assert (tmp_path / "preview.png").exists()


def test_config_file_then_flags_override(tmp_path, capsys):
    (tmp_path / "run.json").write_text(json.dumps({"n_micrographs": 1, "shape": [128, 128],
                                                   "seed": 9, "snr": 0.2}))
    code, _, _ = run(capsys, "simulate", "--out", str(tmp_path / "o"), "--config",
                     str(tmp_path / "run.json"), "--seed", "11")
    assert code == 0
    record = json.loads((tmp_path / "o" / "config.json").read_text())
    assert record["seed"] == 11 and record["config"]["snr"] == 0.2
    assert record["config"]["shape"] == [128, 128]


def test_dog_then_evaluate(tiny, tmp_path, capsys):
    meta = json.loads((tiny / "meta.json").read_text())
    code, _, _ = run(capsys, "dog", "--micrographs", str(tiny / "micrographs" / "*.mrc"),
                     "--diameter", str(meta["particle_diameter_px"]), "--out",
                     str(tmp_path / "picks"))
    assert code == 0 and (tmp_path / "picks" / "autopick.star").exists()
    code, out, _ = run(capsys, "evaluate", "--picks", str(tmp_path / "picks"), "--truth",
                       str(tiny / "truth.star"), "--box", str(meta["box_px"]),
                       "--per-micrograph")
    assert code == 0
    assert out.splitlines()[0].startswith("convention")
    assert sum(line.startswith("cryomae") for line in out.splitlines()) == 3  # all + 2 mics
    metrics = json.loads((tmp_path / "picks" / "evaluation" / "metrics.json").read_text())
    pooled = metrics["conventions"]["cryomae"]["pooled"]
    assert pooled["tp"] + pooled["fn"] == meta["n_particles"]
    assert pooled["tp"] >= 1
    assert pooled["f1"] == pytest.approx(2 * pooled["tp"] / (2 * pooled["tp"] + pooled["fp"]
                                                             + pooled["fn"]))


def test_dog_goes_past_an_unreadable_micrograph(tiny, tmp_path, capsys):
    meta = json.loads((tiny / "meta.json").read_text())
    good = tiny / "micrographs" / "mic_000.mrc"
    (tmp_path / "broken.mrc").write_bytes(b"\0" * 100)
    code, _, err = run(capsys, "dog", "--micrographs", str(good), str(tmp_path / "broken.mrc"),
                       "--diameter", str(meta["particle_diameter_px"]), "--out",
                       str(tmp_path / "picks"))
    assert code == 0 and "broken.mrc" in err
    summary = json.loads((tmp_path / "picks" / "summary.json").read_text())
    assert list(summary["failed"]) == [str(tmp_path / "broken.mrc")]
    assert str(tmp_path / "broken.mrc") in summary["failed"][str(tmp_path / "broken.mrc")]
    assert list(summary["micrographs"]) == [str(good)]
    picks = starfile.read(tmp_path / "picks" / "mic_000_autopick.star")
    assert summary["n_picks"] == summary["micrographs"][str(good)]["picks"] == len(picks) > 0
    index = starfile.read(tmp_path / "picks" / "autopick.star")
    assert list(index["rlnMicrographName"]) == [str(good)]


def test_bad_input_gives_one_sentence_and_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", "--picks", str(tmp_path / "none.star"), "--truth",
                       str(tmp_path / "t.star"), "--box", "40")
    assert code == 2
    assert err.strip() == f"fewshotpicker evaluate: error: {tmp_path / 'none.star'}: file not found."
    code, _, err = run(capsys, "dog", "--micrographs", str(tmp_path / "*.mrc"), "--diameter",
                       "20", "--out", str(tmp_path / "p"))
    assert code == 2 and "No micrographs found" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad.mrc").write_bytes(b"\0" * 100)
    code, _, err = run(capsys, "dog", "--micrographs", str(tmp_path / "bad.mrc"), "--diameter",
                       "20", "--out", str(tmp_path / "p"))
    assert code == 2 and "bad.mrc" in err and len(err.strip().splitlines()) == 1
    write_mrc(tmp_path / "stack.mrc", np.ones((2, 32, 32)))
    # one missing path among good ones is refused by name, not dropped
    code, _, err = run(capsys, "dog", "--micrographs", str(tmp_path / "stack.mrc"),
                       str(tmp_path / "typo.mrc"), "--diameter", "20", "--out", str(tmp_path / "p"))
    assert code == 2
    assert err.strip() == f"fewshotpicker dog: error: {tmp_path / 'typo.mrc'}: file not found."
    code, _, err = run(capsys, "dog", "--micrographs", str(tmp_path / "stack.mrc"),
                       str(tmp_path / "x_*.mrc"), "--diameter", "20", "--out", str(tmp_path / "p"))
    assert code == 2 and f"No micrographs found for {tmp_path / 'x_*.mrc'}." in err
    code, _, err = run(capsys, "dog", "--micrographs", str(tmp_path / "stack.mrc"),
                       "--diameter", "20", "--out", str(tmp_path / "p"))
    assert code == 2 and "stack or volume" in err
    write_coordinate_table(make_coordinates("m.mrc", [[10.0, 10.0]]), tmp_path / "c.star")
    code, _, err = run(capsys, "evaluate", "--picks", str(tmp_path / "c.star"), "--truth",
                       str(tmp_path / "c.star"), "--out", str(tmp_path / "e"))
    assert code == 2 and "box size (--box, px) is required" in err
    code, _, err = run(capsys, "dog", "--micrographs", str(tmp_path / "stack.mrc"), "--out",
                       str(tmp_path / "p"))
    assert code == 2 and "--diameter, px) is required" in err
    pick = ["pick", "--model", str(tmp_path), "--micrographs", str(tmp_path / "stack.mrc"),
            "--out", str(tmp_path / "q")]
    for flags, message in (
            (["--threshold", "median"], "Threshold 'median' is not"),
            (["--coarse", "0"], "--coarse 0: must be a whole number, 1 or more."),
            (["--batch-size", "-8"], "--batch-size -8: must be a whole number, 0 or more (0 = "
                                     "the device's default)."),
            (["--student", "1.5"], "--student 1.5: must be a share from 0 to 1 (0 = off)."),
            (["--shoulder-dip", "1.5"], "--shoulder-dip 1.5: must be a share above 0 and at most"),
            (["--shoulder-reach", "nan"], "--shoulder-reach nan: must be 0 or more, a finite"),
            (["--max-contrast", "0.5"], "--max-contrast 0.5: must be 0 (off) or at least 1"),
            (["--max-contrast", "nan"], "--max-contrast nan: must be 0 (off) or at least 1"),
            (["--surround", "-0.5"], "--surround -0.5: must be 0 (off) or a weight up to 10"),
            (["--surround", "nan"], "--surround nan: must be 0 (off) or a weight up to 10"),
            (["--max-overlap", "2"], "--max-overlap 2.0: must be a share from 0 to 1 (0 = off)."),
            (["--max-overlap", "nan"], "--max-overlap nan: must be a share from 0 to 1"),
            (["--pixel-size", "-1"], "--pixel-size -1.0: must be 0 or more, a finite number (0 "
                                    "= the headers')."),
            (["--model-pixel-size", "nan"], "--model-pixel-size nan: must be 0 or more"),
            (["--pixel-size", "inf"], "--pixel-size inf: must be 0 or more, a finite number"),
            (["--exclude-border", "-5"], "--exclude-border -5.0: must be 0 or more, a finite"),
            (["--stride", "nan"], "--stride nan: must be 0 or more, a finite number (0 = a "
                                  "fifth of the box)."),
            (["--threshold", "nan"], "Threshold nan: a fixed cutoff must be a finite number."),
            (["--quantile", "1.5"], "--quantile 1.5: must be a share from 0 to 1."),
            (["--k", "0"], "--k 0: must be a whole number, 1 or more.")):
        code, _, err = run(capsys, *pick, *flags)
        assert code == 2 and message in err, flags
    assert len(err.strip().splitlines()) == 1
    for flags, message in (
            (["pick-speed", "--input-size", "abc"], "--input-size 'abc': expected one or more "
                                                    "whole numbers separated by ','"),
            (["pick-speed", "--size", "4096"], "--size '4096': expected 2 whole numbers "
                                               "separated by 'x', such as 1x2."),
            (["tomo-memory", "--volume", "64x64"], "--volume '64x64': expected 3 whole"),
            (["tomo", "--fractions", "0.1,a"], "--fractions '0.1,a': expected one or more "
                                               "numbers")):
        code, _, err = run(capsys, "benchmark", *flags, "--work", str(tmp_path / "b"))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, flags
    code, _, err = run(capsys, *pick, "--coarse", "3")
    assert code == 2 and "--coarse 3: a grid that coarse misses the narrow score peaks" in err
    (tmp_path / "run.json").write_text(json.dumps({"snr": 0.1, "colour": "red"}))
    code, _, err = run(capsys, "simulate", "--out", str(tmp_path / "s"), "--config",
                       str(tmp_path / "run.json"))
    assert code == 2 and "Unknown parameter(s) colour" in err
    (tmp_path / "run.json").write_text(json.dumps({"snr": "high"}))
    code, _, err = run(capsys, "simulate", "--out", str(tmp_path / "s"), "--config",
                       str(tmp_path / "run.json"))
    assert code == 2 and err.strip().endswith(
        "run.json: snr of MicrographSimConfig must be a number, not 'high'.")


def test_demo_main_job_writes_picks_report_and_scores(tmp_path, capsys):
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path), "--n", "2", "--size", "256",
                       "--pretrain-epochs", "1", "--train-steps", "3", "--student-steps", "20",
                       "--device", "cpu")
    assert code == 0
    assert "| fewshot |" in out and "| dog |" in out and "| fewshot_student |" in out
    assert "Scores on the 1 micrographs that gave no exemplars" in (tmp_path / "report.md"
                                                                   ).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    truth = starfile.read(tmp_path / "data" / "truth.star")
    held_out = int((truth["rlnMicrographName"] == "micrographs/mic_001.mrc").sum())
    for label in ("fewshot", "fewshot_student", "dog"):
        assert summary[label]["tp"] + summary[label]["fn"] == held_out  # only mic_001 scored
    for path in ("picks/autopick.star", "picks_dog/autopick.star", "train/model.pt",
                 "picks_student/autopick.star",
                 "pretrain/model.pt", "train/losses.png", "picks_example.png",
                 "picks/thresholds/mic_001.png", "evaluation_fewshot/precision_recall.png",
                 "picks/summary.png"):
        assert (tmp_path / path).exists(), path
    # the fine-tuned model knows its exemplars, so the automatic cutoff can be anchored
    record = json.loads((tmp_path / "picks" / "thresholds" / "mic_001.json").read_text())
    assert -1.0 <= record["exemplar_anchor"] <= 1.0
    assert record["rule"] == ("anchored" if record["candidates"] >= 75 else "gmm")


def test_every_command_refuses_numbers_out_of_range_naming_the_flag(tiny, tmp_path, capsys):
    """NaN, infinities and negative counts used to reach the arithmetic (a ValueError
    traceback from the optimiser, 'cannot convert float NaN to integer' blamed on a
    micrograph, or a run that silently picked nothing); now they stop before any work."""
    mics, ex = str(tiny / "micrographs"), str(tiny / "exemplars.star")
    out = str(tmp_path / "o")
    for argv, message in (
            (["pretrain", "--micrographs", mics, "--lr", "nan"], "--lr nan: must be a finite "
                                                                 "number above 0."),
            (["pretrain", "--micrographs", mics, "--mask-ratio", "1"], "--mask-ratio 1.0: must "
                                                                       "be a share above 0"),
            (["pretrain", "--micrographs", mics, "--box", "-1"], "--box -1.0: must be 0 or more"),
            (["train", "--micrographs", mics, "--exemplars", ex, "--box", "40", "--tau", "0"],
             "--tau 0.0: must be a finite number above 0."),
            (["train", "--micrographs", mics, "--exemplars", ex, "--box", "40", "--seed", "-1"],
             "--seed -1: must be a whole number from 0 to 2^32 - 1."),
            (["train", "--micrographs", mics, "--exemplars", ex, "--box", "40",
              "--freeze-blocks", "-2"], "--freeze-blocks -2: must be -1 (half of a pretrained"),
            (["prune", "--micrographs", mics, "--picks", ex, "--exemplars", ex, "--lr", "-1"],
             "--lr -1.0: must be a finite number above 0."),
            (["prune", "--micrographs", mics, "--picks", ex, "--exemplars", ex,
              "--max-unlabeled", "-1"], "--max-unlabeled -1: must be a whole number, 1 or more."),
            (["pick3d", "--tomograms", mics, "--box", "10", "--views", "7"], "--views 7: must be "
                                                                            "from 1 to 6"),
            (["dog", "--micrographs", mics, "--diameter", "inf"], "--diameter inf: must be 0 or "
                                                                  "more, a finite number."),
            (["dog", "--micrographs", mics, "--diameter", "20", "--threshold", "nan"],
             "Threshold nan: a fixed cutoff must be a finite number.")):
        code, _, err = run(capsys, *argv, "--out", out)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, argv
        assert not (tmp_path / "o").exists(), argv  # refused before the run record
    code, _, err = run(capsys, "evaluate", "--picks", ex, "--truth", ex, "--box", "nan")
    assert code == 2 and "--box nan: must be 0 or more, a finite number." in err
    (tmp_path / "run.json").write_text(json.dumps({"warmup": 2.0}))
    code, _, err = run(capsys, "train", "--micrographs", mics, "--exemplars", ex, "--box", "40",
                       "--config", str(tmp_path / "run.json"), "--out", out)
    assert code == 2 and "warmup (in --config) 2.0: must be a share from 0 to 1." in err


def test_nan_in_any_numeric_flag_of_any_command_is_refused_naming_the_flag(tiny, tmp_path,
                                                                          capsys):
    """The probe of session 39 as a test: every float flag of every command that takes
    inputs, given NaN, stops before any work with one sentence naming that flag."""
    import argparse
    from fewshotpicker.cli.main import build_parser
    mics, ex = str(tiny / "micrographs"), str(tiny / "exemplars.star")
    bases = {"pick": ["--model", str(tmp_path), "--micrographs", mics],
             "dog": ["--micrographs", mics, "--diameter", "20"],
             "evaluate": ["--picks", ex, "--truth", ex, "--box", "40"],
             "prune": ["--micrographs", mics, "--picks", ex, "--exemplars", ex],
             "pretrain": ["--micrographs", mics],
             "train": ["--micrographs", mics, "--exemplars", ex, "--box", "40"],
             "pick3d": ["--tomograms", mics, "--box", "10"]}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    tried = 0
    for command, base in bases.items():
        for action in sub.choices[command]._actions:
            if action.type is not float:
                continue
            flag = action.option_strings[0]
            out = [] if command == "evaluate" else ["--out", str(tmp_path / "o")]
            code, _, err = run(capsys, command, *base, flag, "nan", *out)
            assert code == 2 and len(err.strip().splitlines()) == 1, (command, flag, err)
            assert f"{flag} nan" in err or "Threshold nan" in err, (command, flag, err)
            assert not (tmp_path / "o").exists(), (command, flag)
            tried += 1
    assert tried >= 30  # 35 when written


def test_an_output_that_cannot_be_a_folder_is_one_sentence(tiny, tmp_path, capsys):
    (tmp_path / "picks.star").write_text("data_\n")
    mics = str(tiny / "micrographs")
    code, _, err = run(capsys, "dog", "--micrographs", mics, "--diameter", "20", "--out",
                       str(tmp_path / "picks.star"))
    assert code == 2 and err.strip() == (f"fewshotpicker dog: error: {tmp_path / 'picks.star'}: "
                                         f"is a file; the output (--out) must be a folder.")
    code, _, err = run(capsys, "dog", "--micrographs", mics, "--diameter", "20", "--out",
                       str(tmp_path / "picks.star" / "sub"))
    assert code == 1 and err.strip() == (f"fewshotpicker dog: error: "
                                         f"{tmp_path / 'picks.star' / 'sub'}: Not a directory.")
    assert (tmp_path / "picks.star").read_text() == "data_\n"  # untouched


def test_inspect_describes_a_checkpoint_and_refuses_other_files(tmp_path, capsys):
    import torch
    from fewshotpicker.data.regions import Preprocess
    from fewshotpicker.io.checkpoint import save_checkpoint
    from fewshotpicker.models.mae import build_mae
    from fewshotpicker.training.common import model_payload
    save_checkpoint(tmp_path / "ft" / "model.pt",
                    model_payload(build_mae("micro"), "finetuned", Preprocess(box=24, img_size=32),
                                  {}, bank=torch.zeros(4, 64), n_exemplars=1))
    assert main(["inspect", "--model", str(tmp_path / "ft"), "--out",
                 str(tmp_path / "info.json")]) == 0
    info = json.loads((tmp_path / "info.json").read_text())
    assert (info["kind"], info["size"], info["box"], info["img_size"], info["exemplars"]) == \
        ("finetuned", "micro", 24.0, 32, 1)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    capsys.readouterr()
    assert main(["inspect", "--model", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "junk.pt: not a readable fewshotpicker checkpoint" in err and "\n" not in err


def test_expand_images_takes_folders_globs_and_odd_names_once(tmp_path):
    from fewshotpicker.cli.common import expand_images
    for name in ("a.mrc", "b.mrc", "c[1].mrc"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    got = expand_images([str(tmp_path), str(tmp_path / "a.mrc"), str(tmp_path / "c[1].mrc"),
                         str(tmp_path / "?.mrc")])
    assert [p.name for p in got] == ["a.mrc", "b.mrc", "c[1].mrc"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=f"No tomograms found for {empty}"):
        expand_images([str(tmp_path / "a.mrc"), str(empty)], "tomograms")


def relion_project(root: Path, micrographs) -> Path:
    """A RELION project folder: the micrographs under MotionCorr/job002/Movies/ and a CtfFind
    job's micrographs_ctf.star naming them relative to the project, as RELION does."""
    movies = root / "MotionCorr" / "job002" / "Movies"
    movies.mkdir(parents=True)
    names = []
    for mic in micrographs:
        (movies / mic.name).write_bytes(mic.read_bytes())
        names.append(f"MotionCorr/job002/Movies/{mic.name}")
    star = root / "CtfFind" / "job003" / "micrographs_ctf.star"
    star.parent.mkdir(parents=True)
    optics = {"rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1],
              "rlnMicrographPixelSize": [1.0]}
    table = {"rlnMicrographName": names, "rlnOpticsGroup": [1] * len(names),
             "rlnDefocusU": [15000.0] * len(names)}
    starfile.write({"optics": pd.DataFrame(optics), "micrographs": pd.DataFrame(table)}, star)
    return star


def test_dog_picks_the_micrographs_a_relion_star_lists_under_relions_names(
        tiny, tmp_path, capsys, monkeypatch):
    mics = sorted((tiny / "micrographs").glob("*.mrc"))
    project = tmp_path / "project"
    star = relion_project(project, mics)
    diameter = json.loads((tiny / "meta.json").read_text())["particle_diameter_px"]
    monkeypatch.chdir(project)  # RELION's way: commands run in the project folder
    code, _, _ = run(capsys, "dog", "--micrographs", "CtfFind/job003/micrographs_ctf.star",
                     "--diameter", str(diameter), "--out", "External/job004")
    assert code == 0
    index = starfile.read(project / "External" / "job004" / "autopick.star")
    assert list(index["rlnMicrographName"]) == [f"MotionCorr/job002/Movies/{m.name}"
                                                for m in mics]
    inside = read_coordinates(project / "External" / "job004")
    monkeypatch.chdir(tmp_path)  # elsewhere: names are found under the STAR's project
    code, _, _ = run(capsys, "dog", "--micrographs", str(star), "--diameter", str(diameter),
                     "--out", "outside")
    assert code == 0
    outside = read_coordinates(tmp_path / "outside")
    assert len(inside) == len(outside) > 0
    assert (inside["micrograph"].map(micrograph_key).value_counts().to_dict()
            == outside["micrograph"].map(micrograph_key).value_counts().to_dict())
    assert set(outside["micrograph"]) == {str(project / "MotionCorr" / "job002" / "Movies" /
                                              m.name) for m in mics}
    # RELION's own AutoPick index names per-micrograph files in a Movies/ folder, relative
    # to the project: read from elsewhere, they are found under the index's project.
    autopick = project / "AutoPick" / "job006"
    (autopick / "Movies").mkdir(parents=True)
    refs = []
    for m in mics:
        name = f"{m.stem}_autopick.star"
        (autopick / "Movies" / name).write_bytes((project / "External" / "job004" /
                                                  name).read_bytes())
        refs.append(f"AutoPick/job006/Movies/{name}")
    starfile.write({"coordinate_files": pd.DataFrame({
        "rlnMicrographName": list(index["rlnMicrographName"]),
        "rlnMicrographCoordinates": refs})}, autopick / "autopick.star")
    relion = read_coordinates(autopick / "autopick.star")
    assert relion[["micrograph", "x", "y"]].equals(inside[["micrograph", "x", "y"]])


def test_relion_lists_that_name_nothing_usable_are_refused_in_one_sentence(tiny, tmp_path):
    from fewshotpicker.cli.common import expand_images
    mics = sorted((tiny / "micrographs").glob("*.mrc"))
    star = relion_project(tmp_path / "project", mics)
    listed = expand_images([str(tmp_path / "project" / "CtfFind" / "*" / "*.star")])
    assert [p.name for p in listed] == [m.name for m in mics]  # a glob of lists, expanded
    (tmp_path / "project" / "MotionCorr" / "job002" / "Movies" / mics[1].name).unlink()
    with pytest.raises(InputError, match=f"{star}: lists image MotionCorr/job002/Movies/"
                                         f"{mics[1].name}, which is neither"):
        expand_images([str(star)])
    particles = tmp_path / "particles.star"
    starfile.write({"particles": {"rlnCoordinateX": [1.0], "rlnCoordinateY": [2.0]}}, particles)
    with pytest.raises(InputError, match="particles.star: lists no images .it has no "
                                         "rlnMicrographName or rlnTomoReconstructedTomogram"):
        expand_images([str(particles)])
    (tmp_path / "notes.star").write_text("just text\n")
    with pytest.raises(InputError, match="notes.star: not a STAR file"):
        expand_images([str(tmp_path / "notes.star")])


def test_two_micrographs_of_one_name_are_refused_before_their_picks_mix(tiny, tmp_path, capsys):
    """Picks are matched to micrographs by file name; a/m.mrc and b/m.mrc used to share one
    m_autopick.star holding both micrographs' picks, listed for each of them."""
    for folder, mic in zip("ab", sorted((tiny / "micrographs").glob("*.mrc"))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.mrc").write_bytes(mic.read_bytes())
    code, _, err = run(capsys, "dog", "--micrographs", str(tmp_path / "a" / "m.mrc"),
                       str(tmp_path / "b" / "m.mrc"), "--diameter", "20", "--out",
                       str(tmp_path / "picks"))
    assert code == 2 and not (tmp_path / "picks").exists()
    assert f"{tmp_path / 'a' / 'm.mrc'} and {tmp_path / 'b' / 'm.mrc'} have the same name (m)" \
        in err and len(err.strip().splitlines()) == 1
    from fewshotpicker.cli.common import expand_images
    same = expand_images([str(tmp_path / "a" / "m.mrc"), str(tmp_path / "a" / ".." / "a" /
                                                              "m.mrc")])
    assert same == [tmp_path / "a" / "m.mrc"]
    assert len(expand_images([str(tmp_path / "a"), str(tmp_path / "b")], "micrographs",
                             distinct_names=False)) == 2


def test_every_folder_of_modules_is_a_package_that_a_wheel_includes():
    """A folder without ``__init__.py`` works in an editable install and is left out of a wheel
    (as ``models/`` was until session 38: a non-editable install could not start)."""
    from setuptools import find_packages
    root = Path(__file__).resolve().parents[2]
    packages = set(find_packages(str(root), exclude=["build", "dist"]))
    folders = {".".join(py.parent.relative_to(root).parts)
               for top in ("fewshotpicker", "scipion_fewshotpicker")
               for py in (root / top).rglob("*.py") if "__pycache__" not in py.parts}
    assert "fewshotpicker.models" in folders and folders <= packages, folders - packages

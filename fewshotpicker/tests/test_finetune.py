"""Fine-tuning on simulated data (micro model, CPU, seconds): outputs and what features learn.

The data are easy (SNR 1) because what is tested is the mechanism; how well the
method does at realistic SNR is measured by the benchmarks, not asserted here.
"""
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fewshotpicker.cli.main import main
from fewshotpicker.config import MicrographSimConfig, PretrainConfig, TrainConfig
from fewshotpicker.benchmarks.features import Dataset, auroc, model_auroc
from fewshotpicker.data.synthetic import simulate_dataset
from fewshotpicker.errors import InputError
from fewshotpicker.io.coordinates import make_coordinates, read_coordinates
from fewshotpicker.models.mae import sincos_pos_embed
from fewshotpicker.io.checkpoint import load_checkpoint
import fewshotpicker.training.finetune as finetune_module
from fewshotpicker.training.common import load_mae
from fewshotpicker.training.finetune import finetune, warn_if_few
from fewshotpicker.training.pretrain import ENOUGH_STEPS, pretrain, warn_if_short

STEPS = 80


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """Three crowded micrographs (unlabeled crops often contain particles) and a micro
    MAE pretrained on them."""
    out = tmp_path_factory.mktemp("crowded")
    cfg = MicrographSimConfig(n_micrographs=3, shape=(320, 320), crowding=0.35, snr=1.0,
                              ice_crystals=0.5, aggregates=0.5, carbon_edge=0.0, seed=11)
    meta = simulate_dataset(cfg, out)
    mics = sorted((out / "micrographs").glob("*.mrc"))
    pretrain(PretrainConfig(model="micro", box=float(meta["box_px"]), regions_per_micrograph=128,
                            epochs=20, batch_size=64, lr=1e-3, device="cpu"), mics, out / "pre")
    return out, meta, mics


def _train(crowded, tmp_path, **kw):
    out, meta, mics = crowded
    cfg = TrainConfig(box=float(meta["box_px"]), pretrained=str(out / "pre"), steps=STEPS,
                      lr=3e-4, device="cpu", checkpoint_every=40, seed=1, **kw)
    summary = finetune(cfg, mics[:2], read_coordinates(out / "exemplars.star"), tmp_path)
    return summary


def held_out_auroc(model_dir, crowded) -> tuple:
    """AUROC and mean gap of max-cosine scores: particle crops vs background crops on the
    micrograph that training never saw."""
    out, meta, mics = crowded
    ds = Dataset("crowded", mics[:2], mics[2:], read_coordinates(out / "truth.star"),
                 read_coordinates(out / "exemplars.star"), float(meta["box_px"]))
    result = model_auroc(model_dir, ds)
    return result["auroc"], result["particle_score"] - result["background_score"]


@pytest.fixture(scope="module")
def trained(crowded, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ft")
    return out_dir, _train(crowded, out_dir, student_steps=40)


def test_auroc_hand_values():
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([2.0])) == 0.0
    assert auroc(np.array([1.0, 3.0]), np.array([2.0, 2.0])) == 0.5
    assert auroc(np.array([2.0]), np.array([2.0])) == 0.5  # ties count half


def test_finetune_writes_model_bank_curves(trained):
    out_dir, summary = trained
    payload = torch.load(out_dir / "model.pt", weights_only=True)
    assert payload["kind"] == "finetuned"
    assert payload["bank"].shape == (4 * summary["exemplars"], 64)  # 4 rotations, micro width
    history = json.loads((out_dir / "losses.json").read_text())
    assert len(history) == STEPS and {"mse", "scs", "s_self", "s_cross"} <= set(history[0])
    assert (out_dir / "losses.png").stat().st_size > 10000
    assert np.mean([h["scs"] for h in history[-10:]]) < np.mean([h["scs"] for h in history[:10]])
    contrast = payload["exemplar_contrast"]          # for pick's contrast gate
    assert contrast.shape == (summary["exemplars"],) and bool((contrast > 0).all())
    assert payload["pixel_size"] == pytest.approx(5.0)  # the simulator's header, for pick
    student = payload["student"]                     # the dense student for pick --student
    assert student["steps"] == 40 and np.isfinite(student["loss"]) and student["width"] == 64


def test_exemplar_features_stand_apart_from_background_on_unseen_micrograph(trained, crowded):
    out_dir, summary = trained
    assert summary["cos_gap"] > 0.1  # on the training micrographs
    auroc, gap = held_out_auroc(out_dir, crowded)
    assert gap > 0.05 and auroc > 0.65, (auroc, gap)


def test_pu_adjusted_loss_is_not_worse_than_plain(crowded, tmp_path):
    _train(crowded, tmp_path / "plain", prior=0.0, student_steps=0)
    _train(crowded, tmp_path / "pu", prior=0.1, student_steps=0)
    plain, _ = held_out_auroc(tmp_path / "plain", crowded)
    pu, _ = held_out_auroc(tmp_path / "pu", crowded)
    assert pu >= plain - 0.01, (pu, plain)


def test_too_few_exemplars_and_exemplars_outside(crowded, tmp_path):
    out, meta, mics = crowded
    cfg = TrainConfig(box=40.0, model="micro", steps=1, device="cpu")
    few = make_coordinates(str(mics[0]), [[50.0, 50.0], [100.0, 100.0]])
    with pytest.raises(InputError, match="at least 3 are needed"):
        finetune(cfg, mics[:1], few, tmp_path, "few.star")
    outside = make_coordinates(str(mics[0]), [[50.0, 50.0], [100.0, 100.0], [900.0, 10.0]])
    with pytest.raises(InputError, match=r"out\.star: 1 coordinate\(s\) lie outside"):
        finetune(cfg, mics[:1], outside, tmp_path, "out.star")


def test_fewer_than_fifteen_exemplars_are_warned_about_and_more_are_not(caplog):
    with caplog.at_level("WARNING", logger="fewshotpicker"):
        warn_if_few(10, "ex.star")
    assert "ex.star: 10 exemplars; with fewer than 15 the features rank particles about as well" \
        in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fewshotpicker"):
        warn_if_few(15, "ex.star")
    assert caplog.text == ""


def test_a_checkpoint_made_on_other_exemplars_is_not_resumed(crowded, tmp_path):
    out, meta, mics = crowded
    cfg = TrainConfig(box=float(meta["box_px"]), model="micro", steps=2, device="cpu",
                      student_steps=0)
    exemplars = read_coordinates(out / "exemplars.star")
    finetune(cfg, mics[:1], exemplars, tmp_path)
    finetune(cfg, mics[:1], exemplars.iloc[::-1], tmp_path)  # same exemplars: resumes
    moved = exemplars.assign(x=exemplars["x"] + np.r_[3.0, np.zeros(len(exemplars) - 1)])
    with pytest.raises(InputError, match="belongs to a run on other micrographs or coordinates"):
        finetune(cfg, mics[:1], moved, tmp_path)
    with pytest.raises(InputError, match="belongs to a run on other micrographs or coordinates"):
        finetune(cfg, mics[:2], exemplars, tmp_path)


def test_pretraining_learns_to_reconstruct(crowded):
    out, meta, mics = crowded
    history = json.loads((out / "pre" / "losses.json").read_text())
    assert len(history) == 20 * 6  # 384 regions / 64 a batch = 6 steps an epoch
    assert np.mean([h["loss"] for h in history[-6:]]) < 0.8 * history[0]["loss"]
    payload = torch.load(out / "pre" / "model.pt", weights_only=True)
    assert payload["kind"] == "pretrained" and payload["preprocess"]["box"] == meta["box_px"]


def test_from_scratch_warns_and_freezes_nothing(crowded, tmp_path, caplog):
    out, meta, mics = crowded
    ft = TrainConfig(box=float(meta["box_px"]), model="micro", steps=2, device="cpu",
                     student_steps=0)
    with caplog.at_level("INFO", logger="fewshotpicker"):
        result = finetune(ft, mics[:1], read_coordinates(out / "exemplars.star"), tmp_path)
    assert "from scratch" in caplog.text and "first 0 of 2 encoder blocks frozen" in caplog.text
    assert result["bank"] == 4 * result["exemplars"] and result["steps"] == 2


@pytest.mark.parametrize("freeze, frozen", [(None, 1), (0, 0), (2, 2)])
def test_fine_tuning_a_pretrained_model_freezes_half_unless_told_otherwise(
        crowded, tmp_path, caplog, freeze, frozen):
    out, meta, mics = crowded
    extra = {} if freeze is None else {"freeze_blocks": freeze}
    ft = TrainConfig(box=float(meta["box_px"]), pretrained=str(out / "pre"), steps=1,
                     device="cpu", student_steps=0, **extra)
    with caplog.at_level("INFO", logger="fewshotpicker"):
        finetune(ft, mics[:1], read_coordinates(out / "exemplars.star"), tmp_path)
    assert f"first {frozen} of 2 encoder blocks frozen" in caplog.text


def test_a_short_pretraining_is_warned_about_and_a_long_one_is_not(caplog):
    cfg = PretrainConfig(epochs=20, batch_size=64)
    with caplog.at_level("WARNING", logger="fewshotpicker"):
        warn_if_short(120, 384, cfg)
    assert "only 120 steps (384 regions, 20 epochs, batch 64)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="fewshotpicker"):
        warn_if_short(ENOUGH_STEPS, 384, cfg)
    assert caplog.text == ""


def test_cli_train_from_a_checkpoint_of_another_kind_is_refused(crowded, tmp_path, capsys):
    out, meta, mics = crowded
    torch.save({"kind": "resume", "state_dict": {}}, tmp_path / "weird.pt")
    code = main(["train", "--micrographs", str(mics[0]), "--exemplars",
                 str(out / "exemplars.star"), "--box", "40", "--pretrained",
                 str(tmp_path / "weird.pt"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "holds a 'resume' checkpoint" in err and len(err.strip().splitlines()) == 1


def test_cli_train_records_the_students_precision(crowded, tmp_path):
    out, meta, mics = crowded
    code = main(["train", "--micrographs", str(mics[0]), "--exemplars",
                 str(out / "exemplars.star"), "--box", str(meta["box_px"]), "--model", "micro",
                 "--steps", "2", "--student-steps", "3", "--student-precision", "bf16",
                 "--out", str(tmp_path), "--device", "cpu"])
    assert code == 0
    config = json.loads((tmp_path / "config.json").read_text())["config"]
    payload = load_checkpoint(tmp_path / "model.pt")
    assert config["student_precision"] == payload["config"]["student_precision"] == "bf16"
    assert payload["student"]["steps"] == 3


def test_fine_tuning_at_a_smaller_input_keeps_the_pretrained_positions(crowded, tmp_path):
    """--input-size 16 on the 32 px micro model: a box becomes 16 px, the 2 x 2 patch grid
    spans the pretrained 4 x 4 positions, and the features still separate particles."""
    summary = _train(crowded, tmp_path, input_size=16, student_steps=0)
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["model"]["img_size"] == 16 and payload["model"]["pos_span"] == 4
    assert payload["preprocess"]["img_size"] == 16
    model, _ = load_mae(tmp_path, "cpu")
    assert torch.allclose(model.pos_embed[0].double(),
                          torch.from_numpy(sincos_pos_embed(64, 2, span=4)), atol=1e-6)
    auroc, gap = held_out_auroc(tmp_path, crowded)
    assert summary["cos_gap"] > 0.05 and auroc > 0.6, (auroc, summary["cos_gap"])


def test_cli_train_refuses_an_input_size_off_the_patch_grid(crowded, tmp_path, capsys):
    out, meta, mics = crowded
    code = main(["train", "--micrographs", str(mics[0]), "--exemplars",
                 str(out / "exemplars.star"), "--box", "40", "--pretrained", str(out / "pre"),
                 "--input-size", "20", "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--input-size: model input 20 px must be a multiple of the 8 px" in err


def test_repeating_a_finished_run_keeps_its_student_and_other_settings_distil_again(
        crowded, tmp_path, monkeypatch):
    out, meta, mics = crowded
    exemplars = read_coordinates(out / "exemplars.star")
    cfg = TrainConfig(box=float(meta["box_px"]), model="micro", steps=4, device="cpu",
                      student_steps=5, seed=3)
    finetune(cfg, mics[:1], exemplars, tmp_path)
    first = load_checkpoint(tmp_path / "model.pt")["student"]

    def no_distilling(*args, **kwargs):
        raise AssertionError("distilled again")

    monkeypatch.setattr(finetune_module, "distil_student", no_distilling)
    finetune(cfg, mics[:1], exemplars, tmp_path)  # the same run again: nothing to redo
    kept = load_checkpoint(tmp_path / "model.pt")["student"]
    assert kept["state_dict"].keys() == first["state_dict"].keys()
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in first["state_dict"].items())
    # more steps, or another device: the weights or the run differ, so the student is made anew
    for changed in (replace(cfg, steps=6), replace(cfg, device="auto")):
        with pytest.raises(AssertionError, match="distilled again"):
            finetune(changed, mics[:1], exemplars, tmp_path)


def test_another_student_for_a_finished_run_is_distilled_without_fine_tuning_again(
        crowded, tmp_path, caplog):
    """The student's settings change after the run finished: the fine-tuned encoder and its
    bank are kept as they were, only the student is made anew with the new settings."""
    out, meta, mics = crowded
    exemplars = read_coordinates(out / "exemplars.star")
    cfg = TrainConfig(box=float(meta["box_px"]), model="micro", steps=3, device="cpu",
                      student_steps=4, student_precision="fp32", seed=2)
    finetune(cfg, mics[:1], exemplars, tmp_path)
    first = load_checkpoint(tmp_path / "model.pt")
    with caplog.at_level("INFO", logger="fewshotpicker"):
        finetune(replace(cfg, student_steps=6, student_precision="bf16"), mics[:1], exemplars,
                 tmp_path)
    assert "resuming from step 3" in caplog.text
    second = load_checkpoint(tmp_path / "model.pt")
    assert second["student"]["steps"] == 6 and first["student"]["steps"] == 4
    assert second["config"]["student_precision"] == "bf16"
    assert all(torch.equal(second["state_dict"][k], v) for k, v in first["state_dict"].items())
    assert torch.equal(second["bank"], first["bank"])
    changed = [k for k, v in first["student"]["state_dict"].items()
               if not torch.equal(second["student"]["state_dict"][k], v)]
    assert changed


def test_more_exemplars_than_a_step_takes_are_drawn_afresh_each_step(crowded, tmp_path,
                                                                      monkeypatch):
    """exemplars_per_step 4 of the set's exemplars: each step trains on 4 (x 4 turns) and
    twice as many unlabeled regions, not the same 4 every step; the run records the cap."""
    out, meta, mics = crowded
    exemplars = read_coordinates(out / "exemplars.star")
    assert len(exemplars) > 4
    seen, original = [], finetune_module.positive_views

    def recording(windows, *args):
        seen.append(windows.clone())
        return original(windows, *args)

    monkeypatch.setattr(finetune_module, "positive_views", recording)
    cfg = TrainConfig(box=float(meta["box_px"]), model="micro", steps=3, device="cpu",
                      student_steps=0, exemplars_per_step=4)
    finetune(cfg, mics[:1], exemplars, tmp_path)
    assert [len(w) for w in seen] == [4, 4, 4]
    assert not torch.equal(seen[0], seen[1]) or not torch.equal(seen[1], seen[2])
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["config"]["exemplars_per_step"] == 4
    # as many exemplars as the cap or fewer: all of them each step, recorded as 0 (all)
    seen.clear()
    finetune(replace(cfg, exemplars_per_step=64), mics[:1], exemplars, tmp_path / "all")
    assert [len(w) for w in seen] == [len(exemplars)] * 3
    assert load_checkpoint(tmp_path / "all" / "model.pt")["config"]["exemplars_per_step"] == 0


def test_a_run_saved_before_exemplars_per_step_and_student_precision_existed_resumes(
        crowded, tmp_path, caplog):
    out, meta, mics = crowded
    exemplars = read_coordinates(out / "exemplars.star")
    cfg = TrainConfig(box=float(meta["box_px"]), model="micro", steps=2, device="cpu",
                      student_steps=0, checkpoint_every=1)
    finetune(cfg, mics[:1], exemplars, tmp_path)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["config"]["exemplars_per_step"]  # as written by sessions before them
    del state["config"]["student_precision"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with caplog.at_level("INFO", logger="fewshotpicker"):
        finetune(replace(cfg, steps=3), mics[:1], exemplars, tmp_path)
    assert "resuming from step 2" in caplog.text
    # a cap below the exemplar count trains differently from that run: refused, named
    with pytest.raises(InputError, match="exemplars_per_step differ"):
        finetune(replace(cfg, steps=4, exemplars_per_step=3), mics[:1], exemplars, tmp_path)
    with pytest.raises(InputError, match="exemplars_per_step -1: must be a whole number, 0 or "
                                         "more .0 = all.."):
        finetune(replace(cfg, exemplars_per_step=-1), mics[:1], exemplars, tmp_path / "neg")
    with pytest.raises(InputError, match="--student-precision is 'fp16'; it must be one of"):
        finetune(replace(cfg, student_precision="fp16"), mics[:1], exemplars, tmp_path / "p")
    with pytest.raises(InputError, match=r"pixel_size inf: must be 0 or more, a finite number"):
        finetune(replace(cfg, pixel_size=float("inf")), mics[:1], exemplars, tmp_path / "p")
    assert not (tmp_path / "p").exists()       # refused before any work


def near_share(a, b, reach: float) -> float:
    """Share of the points ``a`` ``(n, 2)`` px with a point of ``b`` within ``reach`` px."""
    from scipy.spatial import cKDTree
    if not len(a) or not len(b):
        return 0.0
    return float(np.mean(cKDTree(b).query(a)[0] <= reach))


def test_micrographs_at_another_pixel_size_are_picked_at_the_models_scale_when_it_is_given(
        trained, crowded, tmp_path, capsys):
    from fewshotpicker.io.mrc import read_image, write_mrc
    out, meta, mics = crowded
    model_dir, _ = trained
    image = read_image(mics[2])
    assert image.pixel_size == pytest.approx(5.0)
    box = float(meta["box_px"])
    fine = write_mrc(tmp_path / "fine" / mics[2].name, np.kron(image.data, np.ones((2, 2))),
                     pixel_size=2.5)  # each pixel split in four: pixel x is 2x + 0.5 there
    h, w = image.data.shape
    binned = write_mrc(tmp_path / "binned" / mics[2].name,
                       image.data.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)), pixel_size=10.0)

    def pick(micrograph, name, *flags):
        assert main(["pick", "--model", str(model_dir), "--micrographs", str(micrograph),
                     "--out", str(tmp_path / name), "--device", "cpu", *flags]) == 0
        return read_coordinates(tmp_path / name / "autopick.star")[["x", "y"]].to_numpy()

    native = pick(mics[2], "native")
    assert len(native) > 10 and "pixel size" not in capsys.readouterr().err
    rescaled = (pick(fine, "rescaled", "--pixel-size", "2.5") - 0.5) / 2
    assert f"a box of {2 * box:.1f} px here (the model's {box:.0f})" in capsys.readouterr().err
    as_trained = (pick(fine, "as_trained") - 0.5) / 2
    assert "pick with --pixel-size 2.500" in capsys.readouterr().err  # the header says so
    # the same picks, where the model's box of micrograph pixels would see a quarter of a particle
    assert near_share(native, rescaled, box / 8) > 0.8 and near_share(rescaled, native, box / 8) \
        > 0.8, (len(native), len(rescaled))
    assert near_share(native, as_trained, box / 8) < 0.5
    # binned micrographs lose detail but are picked where the particles are, and at their scale
    truth = read_coordinates(out / "truth.star")
    truth = truth[truth["micrograph"].map(lambda m: m.endswith(mics[2].name))][["x", "y"]]
    half = (truth.to_numpy() - 0.5) / 2  # bin centres: pixels 2x and 2x + 1 become x
    found = near_share(half, pick(binned, "binned", "--pixel-size", "10"), box / 8)
    missed = near_share(half, pick(binned, "binned_as_trained"), box / 8)
    assert found > near_share(truth.to_numpy(), native, box / 4) - 0.2 and found > missed + 0.2, \
        (found, missed)


def test_training_reads_the_exemplars_micrographs_and_a_seeded_draw_of_the_rest():
    """A whole data set given to train (a RELION list, a Scipion set) is cut to the
    micrographs holding exemplars plus a seeded draw of others, max_micrographs in all."""
    from fewshotpicker.training.finetune import training_micrographs
    mics = [Path(f"mics/m{i:03d}.mrc") for i in range(40)]
    exemplars = pd.concat([make_coordinates("m007.mrc", [[10.0, 10.0]] * 8),
                           make_coordinates("other/m031.mrc", [[20.0, 20.0]] * 7)])
    cfg = TrainConfig(box=40.0, max_micrographs=16, seed=3)
    chosen = training_micrographs(mics, exemplars, cfg)
    assert len(chosen) == 16 and {mics[7], mics[31]} <= set(chosen)
    assert chosen == sorted(chosen)  # the given order
    assert training_micrographs(mics, exemplars, cfg) == chosen
    assert training_micrographs(mics, exemplars, replace(cfg, seed=4)) != chosen
    assert training_micrographs(mics, exemplars, replace(cfg, max_micrographs=0)) == mics
    assert training_micrographs(mics[:16], exemplars, cfg) == mics[:16]
    assert training_micrographs(mics, exemplars, replace(cfg, max_micrographs=1)) == \
        [mics[7], mics[31]]  # those holding exemplars are never left out

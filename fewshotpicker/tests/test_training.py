"""Training machinery: schedule, regions, checkpoints (weights_only), exact resume."""
import json

import numpy as np
import pytest
import torch

from fewshotpicker.data.regions import (Preprocess, check_inside, crop_windows,
                                        prepare_micrograph, random_centres, rotations90,
                                        standardise)
from fewshotpicker.errors import InputError
from fewshotpicker.io.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from fewshotpicker.losses import masked_mse
from fewshotpicker.models.mae import build_mae
from fewshotpicker.training.common import load_mae, model_payload
from fewshotpicker.training.loop import LoopSettings, learning_rate, step_generator, train

TEST = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def test_learning_rate_warmup_then_cosine():
    s = LoopSettings(steps=110, lr=1.0, min_lr=0.0, warmup_steps=10, weight_decay=0.0,
                     checkpoint_every=10)
    assert learning_rate(0, s) == pytest.approx(0.1)
    assert learning_rate(9, s) == pytest.approx(1.0)
    assert learning_rate(60, s) == pytest.approx(0.5)
    assert learning_rate(109, s) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.99)))


def test_crop_windows_are_centred_on_the_coordinate():
    img = torch.zeros(100, 120)
    img[30, 70] = 10.0  # y = 30, x = 70
    win = crop_windows(img, torch.tensor([[70.0, 30.0]]), 16)
    assert win.shape == (1, 1, 16, 16)
    y, x = np.unravel_index(int(torch.argmax(win)), (16, 16))
    assert (x, y) == (8, 8)
    assert win.mean().abs() < 1e-5 and abs(win.std().item() - 1) < 1e-3


def test_crop_windows_at_the_border_are_padded_not_shifted():
    img = torch.zeros(50, 50)
    img[2, 3] = 5.0
    win = crop_windows(img, torch.tensor([[3.0, 2.0]]), 16)
    # reflection may repeat the spike, but the window's centre is the coordinate itself
    assert win[0, 0, 8, 8] == win.max()
    assert win[0, 0, 8, 7] < win.max() and win[0, 0, 7, 8] < win.max()


def test_prepare_rescales_so_a_box_becomes_the_input_size():
    pre = Preprocess(box=40, img_size=64, highpass=0)
    out = prepare_micrograph(np.random.default_rng(0).normal(size=(200, 300)), pre)
    assert tuple(out.shape) == (320, 480)
    assert abs(float(out.median())) < 1e-4


def particles_on_noise(shape=(240, 260), seed=0):
    """Dark discs (radius 8 px, 0.8 noise sd deep) on unit noise, ``(h, w)`` float32."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    img = rng.normal(size=shape)
    for cx, cy in rng.uniform(20, min(shape) - 20, size=(12, 2)):
        img -= 0.8 * ((x - cx) ** 2 + (y - cy) ** 2 < 64)
    return img.astype(np.float32)


def test_prepare_does_not_see_the_scale_or_offset_of_the_values():
    img = particles_on_noise()
    pre = Preprocess(box=40, img_size=32)
    want = prepare_micrograph(img, pre)
    for other in (img * 1e-30, img * 1e30, img + 1e3):
        np.testing.assert_allclose(prepare_micrograph(other.astype(np.float32), pre), want,
                                   atol=2e-3)


def test_hot_and_dead_pixels_and_a_bad_column_are_repaired_before_filtering():
    img = particles_on_noise()
    bad = img.copy()
    rng = np.random.default_rng(1)
    ys, xs = rng.integers(0, 240, 60), rng.integers(0, 260, 60)
    bad[ys[:50], xs[:50]] = 1e20       # hot pixels
    bad[ys[50:], xs[50:]] = -3e38      # dead, as far as float32 goes
    bad[:, 77] = 3e38                  # a bad column
    z, clean = standardise(torch.from_numpy(bad)), standardise(torch.from_numpy(img))
    defect = np.zeros(img.shape, bool)
    defect[ys, xs] = defect[:, 77] = True
    assert torch.isfinite(z).all() and float(z[torch.from_numpy(defect)].abs().max()) < 4
    np.testing.assert_allclose(z[~defect], clean[~defect], atol=0.05)  # the MAD moves a hair
    pre = Preprocess(box=40, img_size=32)
    got, want = prepare_micrograph(bad, pre), prepare_micrograph(img, pre)
    # the repaired pixels hold their neighbours' mean, not the noise they lost: the prepared
    # images differ there by about the prepared noise (sd 1.1), and nowhere else
    assert float((got - want).abs().max()) < 2.5 and float((got - want).abs().mean()) < 0.02
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_dark_features_many_pixels_wide_are_kept_however_dark():
    img = particles_on_noise()
    y, x = np.indices(img.shape)
    img[(x - 130) ** 2 + (y - 120) ** 2 < 15 ** 2] -= 40.0   # ice, a gold bead
    img[200, 30] = 40.0                                    # beside it a hot pixel
    z = standardise(torch.from_numpy(img))
    assert float(z[120, 130]) < -35 and float(z[200, 30]) < 4


def test_standardise_falls_back_to_the_standard_deviation_when_most_pixels_agree():
    img = np.zeros((100, 100), np.float32)
    img[:30] = np.random.default_rng(0).normal(5.0, 2.0, size=(30, 100))  # 70% padding
    z = standardise(torch.from_numpy(img))
    assert torch.isfinite(z).all() and 1.0 < float(z.abs().max()) < 20


@pytest.mark.parametrize("sigma", [0.3, 1.9, 12.0, 40.0])
def test_fft_blur_equals_a_direct_reflect_padded_convolution(sigma):
    from fewshotpicker.data.blur import gaussian_blur
    img = torch.from_numpy(np.random.default_rng(1).normal(size=(90, 130)).astype(np.float32))
    radius = int(min(3 * sigma, (min(img.shape) - 1) // 2))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1.0) / sigma) ** 2)
    k = k / k.sum()
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(
        img[None, None], (radius, radius, radius, radius), mode="reflect"),
        k.view(1, 1, 1, -1) * k.view(1, 1, -1, 1))[0, 0]
    out = gaussian_blur(img, sigma)
    assert out.shape == img.shape
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=2e-6)


def test_rotations_give_four_views():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    r = rotations90(x)
    assert r.shape == (4, 1, 4, 4) and torch.equal(r[2], x[0].flip(-1).flip(-2))
    assert torch.equal(r[1, 0, 0], x[0, 0, :, -1])  # 90 degrees: last column on top


def test_check_inside_refuses_outside_and_flags_partial():
    with pytest.raises(InputError, match=r"ex\.star: 1 coordinate\(s\) lie outside the "
                                         r"120 x 100 px micrograph"):
        check_inside(np.array([[10.0, 10.0], [130.0, 50.0]]), (100, 120), 20, "ex.star")
    partial = check_inside(np.array([[5.0, 50.0], [60.0, 50.0]]), (100, 120), 20, "ex.star")
    assert partial.tolist() == [True, False]


def test_random_centres_avoid_points():
    rng = np.random.default_rng(0)
    avoid = np.array([[50.0, 50.0]])
    pts = random_centres((100, 100), 200, rng, margin=5, avoid=avoid, avoid_radius=20)
    assert len(pts) == 200
    assert np.min(np.linalg.norm(pts - avoid, axis=1)) > 20
    assert pts.min() >= 5 and pts.max() <= 95


def test_model_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(0)
    model = build_mae("tiny", **TEST)
    pre = Preprocess(box=30, img_size=32)
    save_checkpoint(tmp_path / "model.pt", model_payload(model, "finetuned", pre, {"seed": 1},
                                                        bank=torch.ones(4, 32)))
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["kind"] == "finetuned" and raw["version"]
    again, payload = load_mae(tmp_path, torch.device("cpu"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert payload["preprocess"]["box"] == 30 and payload["bank"].shape == (4, 32)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nothing\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(InputError, match=r"junk\.pt: not a readable fewshotpicker checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    # a checkpoint cut short anywhere (a full disk, a copy stopped half way); some cuts fail
    # in the zip reader's seek with a bare OSError, which used to end in a traceback
    save_checkpoint(tmp_path / "whole.pt", {"kind": "pretrained",
                                            "state_dict": build_mae("micro").state_dict()})
    data = (tmp_path / "whole.pt").read_bytes()
    for cut in (0, 10, 1000, 20000, len(data) // 3, len(data) // 2, len(data) - 1):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"cut\.pt: not a readable fewshotpicker checkpoint"):
            load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"other\.pt: is a torch file but not a fewshotpicker"):
        load_checkpoint(tmp_path / "other.pt")
    save_checkpoint(tmp_path / "resume.pt", {"kind": "resume", "state_dict": {}})
    with pytest.raises(InputError, match=r"holds a 'resume' checkpoint, but 'finetuned'"):
        load_checkpoint(tmp_path / "resume.pt", kinds=["finetuned"])


def test_checkpoint_from_another_model_is_refused(tmp_path):
    small = build_mae("tiny", **TEST)
    wider = build_mae("tiny", **{**TEST, "embed_dim": 64})
    with pytest.raises(InputError, match=r"m\.pt: the checkpoint is from another model than "
                                         r"the test model \(shape of"):
        load_state_strict(wider, small.state_dict(), tmp_path / "m.pt", "the test model")


def _toy_run(out_dir, steps, stop_after=None):
    """Train the test model on a fixed batch; optionally 'crash' after some steps."""
    torch.manual_seed(0)
    model = build_mae("tiny", **TEST)
    data = torch.randn(6, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    settings = LoopSettings(steps=steps, lr=1e-3, min_lr=1e-5, warmup_steps=2,
                            weight_decay=0.05, checkpoint_every=2)

    def step_fn(step):
        if stop_after is not None and step == stop_after:
            raise KeyboardInterrupt  # killed between steps
        pred, mask, _ = model(data, 0.75, step_generator(7, step, torch.device("cpu")))
        return masked_mse(pred, model.target(data), mask), {"mse": 0.0}

    train(model, step_fn, settings, out_dir, {"seed": 7, "steps": steps})
    return model


def test_interrupted_training_resumes_bit_for_bit(tmp_path):
    straight = _toy_run(tmp_path / "a", 8)
    with pytest.raises(KeyboardInterrupt):
        _toy_run(tmp_path / "b", 8, stop_after=5)  # last checkpoint after step 4
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and len(state["history"]) == 4
    resumed = _toy_run(tmp_path / "b", 8)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    history = json.loads((tmp_path / "b" / "losses.json").read_text())
    assert [h["step"] for h in history] == list(range(8))
    assert (tmp_path / "b" / "losses.png").exists()


def test_resume_with_other_settings_is_refused(tmp_path):
    _toy_run(tmp_path, 4)
    torch.manual_seed(0)
    model = build_mae("tiny", **TEST)
    settings = LoopSettings(4, 1e-3, 1e-5, 2, 0.0, 2)
    with pytest.raises(InputError, match=r"belongs to a run with other settings \(seed"):
        train(model, lambda s: (torch.zeros((), requires_grad=True), {}), settings, tmp_path,
              {"seed": 8, "steps": 4})


def test_inputs_fingerprint_ignores_order_and_old_checkpoints_still_resume(tmp_path):
    from fewshotpicker.training.loop import inputs_fingerprint
    assert inputs_fingerprint(["a", "b:1.0:2.0"]) == inputs_fingerprint(["b:1.0:2.0", "a"])
    assert inputs_fingerprint(["a", "b:1.0:2.0"]) != inputs_fingerprint(["a", "b:1.0:2.1"])
    _toy_run(tmp_path, 4)  # its checkpoint records no inputs (as before they were recorded)
    settings = LoopSettings(4, 1e-3, 1e-5, 2, 0.0, 2)
    model = build_mae("tiny", **TEST)
    history = train(model, lambda s: (torch.zeros((), requires_grad=True), {}), settings,
                    tmp_path, {"seed": 7, "steps": 4, "inputs": "abc"})
    assert len(history) == 4  # resumed at its end: nothing to run


def test_shifted_centres_lie_in_the_off_centre_ring():
    from fewshotpicker.training.finetune import shifted_centres
    centres = np.array([[100.0, 100.0], [300.0, 50.0]])
    off = shifted_centres(centres, box=40, shift_range=(0.35, 0.6), per_point=50,
                          rng=np.random.default_rng(0))
    assert off.shape == (100, 2)
    dist = np.linalg.norm(off - np.repeat(centres, 50, axis=0), axis=1)
    assert dist.min() >= 0.35 * 40 - 1e-9 and dist.max() <= 0.6 * 40 + 1e-9
    # beyond a third of the box: by the IoU 0.5 rule none of them is a centred particle
    assert dist.min() > 40 / 3


def test_train_speed_benchmark_prints_its_figures(capsys):
    from fewshotpicker.cli.main import main
    assert main(["benchmark", "train-speed", "--model", "micro", "--device", "cpu",
                 "--batch", "8", "--steps", "1"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()[:2]
    assert header.split()[:4] == ["model", "device", "batch", "pretrain_steps_per_s"]
    assert row.split()[:3] == ["micro", "cpu", "8"]
    assert float(row.split()[3]) > 0


def test_pretraining_skips_an_unreadable_micrograph_and_names_it(tmp_path):
    from fewshotpicker.config import PretrainConfig
    from fewshotpicker.io.mrc import write_mrc
    from fewshotpicker.training.pretrain import pretrain
    good = write_mrc(tmp_path / "good.mrc", np.random.default_rng(0).normal(size=(96, 96)))
    blank = write_mrc(tmp_path / "blank.mrc", np.zeros((96, 96)))
    cfg = PretrainConfig(model="micro", box=40, epochs=1, regions_per_micrograph=8,
                         batch_size=8, device="cpu")
    summary = pretrain(cfg, [blank, good], tmp_path / "run")
    assert summary["regions"] == 8 and summary["steps"] == 1
    assert summary["skipped"] == {str(blank): f"{blank}: every pixel holds the same value "
                                              f"(0); a blank exposure, not a micrograph."}
    with pytest.raises(InputError, match=r"None of the 1 micrographs could be read; the first "
                                         r"problem: .*blank\.mrc: every pixel"):
        pretrain(cfg, [blank], tmp_path / "none")


def test_pretraining_draws_micrographs_when_their_regions_would_pass_max_regions():
    from dataclasses import replace
    from pathlib import Path
    from fewshotpicker.config import PretrainConfig
    from fewshotpicker.training.pretrain import pretraining_micrographs
    mics = [Path(f"m{i:03d}.mrc") for i in range(100)]
    cfg = PretrainConfig(regions_per_micrograph=32, max_regions=320, seed=1)
    drawn = pretraining_micrographs(mics, cfg)
    assert len(drawn) == 10 and drawn == sorted(drawn) and set(drawn) <= set(mics)
    assert pretraining_micrographs(mics, cfg) == drawn
    assert pretraining_micrographs(mics, replace(cfg, seed=2)) != drawn
    assert pretraining_micrographs(mics, replace(cfg, max_regions=0)) == mics
    assert pretraining_micrographs(mics[:10], cfg) == mics[:10]
    assert len(pretraining_micrographs(mics, replace(cfg, max_regions=5))) == 1

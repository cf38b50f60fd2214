"""Tomogram picking: targets, views, pseudo-labels, NMS, EMA, tiles, and a short training."""
import numpy as np
import pytest
import torch

from fewshotpicker.tomo.data import tiles
from fewshotpicker.tomo.detect import suppress_across_classes, tomogram_cutoff
from fewshotpicker.tomo.targets import (VIEWS, agreed_pseudo_labels, apply_view, ema_update,
                                        gaussian_heatmap, invert_view, local_peaks,
                                        wedge_dropblock)
from fewshotpicker.tomo.train import focal_heatmap_loss
from fewshotpicker.tomo.unet3d import UNet3d, UNetConfig


def test_gaussian_heatmap_puts_a_unit_peak_per_centre_in_its_class_channel():
    centres = np.array([[10.0, 5.0, 3.0], [20.0, 12.0, 8.0]])  # x, y, z
    heat = gaussian_heatmap((12, 16, 24), centres, np.array([1, 2]), 2, sigma=1.5)
    assert heat.shape == (2, 12, 16, 24)
    assert heat[0, 3, 5, 10] == pytest.approx(1.0) and heat[1, 8, 12, 20] == pytest.approx(1.0)
    assert heat[1, 3, 5, 10] == 0.0  # the other species' channel is empty there
    assert heat[0, 3, 5, 11] == pytest.approx(np.exp(-1 / (2 * 1.5 ** 2)), rel=1e-5)


def test_local_peaks_recover_planted_centres_and_suppress_neighbours():
    rng = np.random.default_rng(0)
    planted = np.array([[8, 10, 6], [30, 12, 20], [18, 30, 14]])  # x, y, z
    heat = gaussian_heatmap((28, 40, 40), planted, np.ones(3, int), 1, sigma=2.0)
    heat += 0.05 * torch.from_numpy(rng.random(heat.shape).astype(np.float32))
    peaks = local_peaks(heat, radius=4, threshold=0.5).numpy()
    assert sorted(map(tuple, peaks[:, [3, 2, 1]])) == sorted(map(tuple, planted))
    assert (peaks[:, 0] == 0).all()


def test_every_view_is_inverted_exactly():
    x = torch.randn(2, 1, 4, 6, 6)
    for view in VIEWS:
        assert torch.equal(invert_view(apply_view(x, view), view), x)
    assert not torch.equal(apply_view(x, VIEWS[3]), x)


def test_multi_view_agreement_rejects_a_detection_one_view_misses():
    agreed = np.array([[10, 10, 8]])   # x, y, z: every view sees it
    only_one = np.array([[30, 28, 12]])  # a single view sees it
    base = gaussian_heatmap((20, 40, 40), agreed, np.ones(1, int), 1, 2.0)
    extra = gaussian_heatmap((20, 40, 40), only_one, np.ones(1, int), 1, 2.0)
    views = torch.stack([base * 0.9, torch.maximum(base * 0.8, extra), base * 0.95])
    found = agreed_pseudo_labels(views, radius=3, threshold=0.5).numpy()
    assert [tuple(p) for p in found[:, [3, 2, 1]]] == [(10, 10, 8)]


def test_ema_update_is_exact():
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    s0 = [p.detach().clone() for p in student.parameters()]
    ema_update(teacher, student, 0.9)
    for t, a, b in zip(teacher.parameters(), t0, s0):
        torch.testing.assert_close(t.detach(), 0.9 * a + 0.1 * b)


def test_wedge_dropblock_replaces_z_elongated_blocks_only():
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    out = wedge_dropblock(x, 1, 4, 2.0, torch.Generator().manual_seed(1))
    changed = (out != x)[0, 0].nonzero()
    extent = changed.max(0).values - changed.min(0).values + 1
    assert extent.tolist() == [8, 4, 4]  # z, y, x: twice as long along z


def test_tile_cores_partition_the_volume():
    shape, seen = (30, 70, 50), np.zeros((30, 70, 50), int)
    for lo, size, core_lo, core_hi in tiles(shape, 32, 8):
        assert (size % 4 == 0).all() and (lo == core_lo - 8).all()
        seen[core_lo[0]:core_hi[0], core_lo[1]:core_hi[1], core_lo[2]:core_hi[2]] += 1
    assert (seen == 1).all()


def test_focal_loss_rewards_the_right_heatmap_and_weights_the_background():
    target = gaussian_heatmap((8, 8, 8), np.array([[4.0, 4.0, 4.0]]), np.ones(1, int), 1,
                              1.0)[None]
    good = torch.where(target >= 0.999, 4.0, -4.0)
    bad = -good
    assert focal_heatmap_loss(good, target, 1.0) < focal_heatmap_loss(bad, target, 1.0)
    background_only = torch.full_like(target, 2.0)
    background_only[target >= 0.999] = 9.0  # the centre is right: only background counts
    full = focal_heatmap_loss(background_only, target, 1.0)
    assert focal_heatmap_loss(background_only, target, 0.25) == pytest.approx(
        0.25 * float(full), rel=1e-3)


def test_unet_keeps_the_shape_and_starts_near_no_particle():
    net = UNet3d(UNetConfig(width=4, n_classes=2))
    out = net(torch.randn(1, 1, 16, 24, 32))
    assert out.shape == (1, 2, 16, 24, 32)
    assert torch.sigmoid(out).mean() < 0.1


def test_cross_class_suppression_and_cutoff():
    import pandas as pd
    picks = pd.DataFrame({"x": [10.0, 12.0, 40.0], "y": [10.0, 10.0, 40.0],
                          "z": [5.0, 5.0, 5.0], "score": [0.9, 0.7, 0.8], "class": [1, 2, 2]})
    kept = suppress_across_classes(picks, 5.0)
    assert sorted(kept["score"]) == [0.8, 0.9]
    assert tomogram_cutoff(np.array([0.1, 0.9]), "0.3") == 0.3
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.02, 0.1, 200), rng.uniform(0.85, 0.99, 40)])
    assert 0.1 < tomogram_cutoff(scores, "auto") < 0.85


@pytest.fixture(scope="module")
def small_tomograms(tmp_path_factory):
    """Two 32 x 96 x 96 tomograms of one species (16 voxels across), with truth."""
    from fewshotpicker.config import TomogramSimConfig
    from fewshotpicker.data.synthetic3d import simulate_tomograms
    out = tmp_path_factory.mktemp("tomo")
    simulate_tomograms(TomogramSimConfig(n_tomograms=2, shape=(32, 96, 96), n_species=1,
                                         diameters_A=(160.0,), crowding=0.1, snr=1.0, seed=2),
                       out)
    return out


def test_short_training_picks_most_particles(small_tomograms, tmp_path):
    from fewshotpicker.config import Pick3dConfig
    from fewshotpicker.evaluate import evaluate_all
    from fewshotpicker.io.coordinates import read_coordinates, read_tomo_coordinates
    from fewshotpicker.tomo.run import pick3d
    truth = read_coordinates(small_tomograms / "truth3d.star")
    labels = truth.iloc[::5]  # a fifth of the particles labelled
    cfg = Pick3dConfig(box=16, size="tiny", steps=30, crop=32, batch_labeled=1,
                       batch_unlabeled=1, device="cpu")
    summary = pick3d(cfg, sorted((small_tomograms / "tomograms").glob("*.mrc")), labels,
                     tmp_path)
    picks = read_coordinates(tmp_path / "picks3d_relion4.star")
    assert summary["picks"] == len(picks) > 0
    pooled = evaluate_all(picks, truth, 16, ("czii",),
                          micrographs=sorted(set(truth["micrograph"])))["conventions"][
        "czii"]["pooled"]
    f1 = 2 * pooled["precision"] * pooled["recall"] / (pooled["precision"] + pooled["recall"])
    assert f1 >= 0.6, pooled
    # the RELION 5 file holds the same picks in centred Angstrom
    shapes = {"tomo_000": (32, 96, 96), "tomo_001": (32, 96, 96)}
    again = read_tomo_coordinates(tmp_path / "picks3d.star", shapes, 10.0)
    np.testing.assert_allclose(again[["x", "y", "z"]].to_numpy(),
                               picks[["x", "y", "z"]].to_numpy(), atol=1e-3)
    assert (tmp_path / "slices" / "tomo_000.png").exists()


def test_pick3d_command_reuses_a_model_and_refuses_bad_labels(small_tomograms, tmp_path,
                                                              capsys):
    from fewshotpicker.cli.main import main
    from fewshotpicker.io.coordinates import read_coordinates, write_coordinate_table
    truth = read_coordinates(small_tomograms / "truth3d.star")
    write_coordinate_table(truth.iloc[::6], tmp_path / "labels.star")
    common = ["pick3d", "--tomograms", str(small_tomograms / "tomograms"), "--box", "16",
              "--size", "tiny", "--crop", "32", "--device", "cpu"]
    assert main(common + ["--labels", str(tmp_path / "labels.star"), "--steps", "4",
                          "--supervised-only", "--out", str(tmp_path / "a")]) == 0
    first = read_coordinates(tmp_path / "a" / "picks3d_relion4.star")
    assert main(common + ["--model", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    second = read_coordinates(tmp_path / "b" / "picks3d_relion4.star")
    np.testing.assert_allclose(second[["x", "y", "z"]].to_numpy(),
                               first[["x", "y", "z"]].to_numpy())
    outside = truth.iloc[:3].copy()
    outside.loc[outside.index[0], "z"] = 500.0
    write_coordinate_table(outside, tmp_path / "outside.star")
    assert main(common + ["--labels", str(tmp_path / "outside.star"),
                          "--out", str(tmp_path / "c")]) == 2
    assert "outside.star: 1 label(s) lie outside the 96 x 96 x 32 voxel tomogram" in \
        capsys.readouterr().err
    zero = truth.iloc[:3].assign(**{"class": 0})
    write_coordinate_table(zero, tmp_path / "zero.star")
    assert main(common + ["--labels", str(tmp_path / "zero.star"),
                          "--out", str(tmp_path / "d")]) == 2
    assert "zero.star: rlnClassNumber must be 1 or more" in capsys.readouterr().err

"""Tomogram picking: targets, views, pseudo-labels, NMS, EMA, tiles, and a short training."""
import numpy as np
import pytest
import torch

from fewshotpicker.tomo.data import tiles
from fewshotpicker.tomo.detect import suppress_across_classes, tomogram_cutoff
from fewshotpicker.tomo.targets import (VIEWS, apply_view, ema_update, gaussian_heatmap,
                                        invert_view, local_peaks, wedge_dropblock)
from fewshotpicker.tomo.train import (StudentTeacher, agreed_views, focal_heatmap_loss,
                                      label_response, pseudo_targets, pseudo_threshold)
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


class FixedPeaks(torch.nn.Module):
    """A fake teacher: logits +6 at a voxel in the exact middle of every crop (the same
    in every view) and at a fixed array corner (a different place in each view)."""

    def forward(self, x):
        out = torch.full_like(x, -6.0)
        d, h, w = x.shape[-3:]
        out[..., d // 2, h // 2, w // 2] = 6.0
        out[..., 2, 3, 4] = 6.0
        return out


def test_multi_view_agreement_rejects_a_detection_the_views_disagree_on():
    x = torch.zeros(1, 1, 9, 21, 21)  # odd sides: the middle voxel is fixed by every view
    agreed = agreed_views(FixedPeaks(), x, 4)
    assert agreed.shape == (1, 1, 9, 21, 21)
    assert agreed[0, 0, 4, 10, 10] > 0.99 and agreed[0, 0, 2, 3, 4] < 0.01
    none = torch.zeros_like(agreed)
    targets = pseudo_targets(agreed, none, 0.5, radius=3, sigma=1.0)
    assert (targets >= 0.999).nonzero().tolist() == [[0, 0, 4, 10, 10]]
    single = agreed_views(FixedPeaks(), x, 1)  # one view: the corner passes too
    assert len((pseudo_targets(single, none, 0.5, 3, 1.0) >= 0.999).nonzero()) == 2
    # a peak on a labelled particle is not a pseudo-label (the label already says it)
    labelled = gaussian_heatmap((9, 21, 21), np.array([[10.0, 10.0, 4.0]]), np.ones(1, int),
                                1, 1.0)[None]
    assert len((pseudo_targets(single, labelled, 0.5, 3, 1.0) >= 0.999).nonzero()) == 1


def test_pseudo_labels_are_species_agnostic_and_follow_the_labelled_response():
    target = gaussian_heatmap((8, 8, 8), np.array([[4.0, 4.0, 4.0]]), np.ones(1, int), 2,
                              1.0)[None]
    agreed = torch.full((1, 2, 8, 8, 8), 0.1)
    agreed[0, 1, 4, 4, 5] = 0.6  # the other species' channel, one voxel off
    assert float(label_response(agreed, target)) == pytest.approx(0.6)
    assert torch.isnan(label_response(agreed, torch.zeros_like(target)))
    pair = StudentTeacher(UNetConfig(width=4, n_classes=2, levels=2))
    assert float(pair.track_response(torch.tensor(0.6))) == pytest.approx(0.6)
    pair.track_response(torch.tensor(float("nan")))  # nothing seen: unchanged
    pair.track_response(torch.tensor(0.2), momentum=0.9)
    assert float(pair.response) == pytest.approx(0.9 * 0.6 + 0.1 * 0.2)
    assert "response" in pair.state_dict()  # resumed with the weights
    assert pseudo_threshold(torch.tensor(0.8), 0.2) == pytest.approx(0.16)
    assert pseudo_threshold(torch.tensor(0.1), 0.2) > 1  # an untrained teacher labels nothing
    assert pseudo_threshold(torch.tensor(float("nan")), 0.2) > 1


def test_a_pseudo_label_pulls_up_the_likeliest_species_only():
    anywhere = gaussian_heatmap((8, 8, 8), np.array([[4.0, 4.0, 4.0]]), np.ones(1, int), 1,
                                1.0)[None]
    empty = torch.zeros(1, 2, 8, 8, 8)
    logits = torch.full((1, 2, 8, 8, 8), -4.0, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 4, 4, 4] = 1.0  # species 1 is the likelier one there
    focal_heatmap_loss(logits, empty, 0.25, anywhere=anywhere).backward()
    assert logits.grad[0, 0, 4, 4, 4] < 0  # pulled up
    assert logits.grad[0, 1, 4, 4, 4] == 0  # left alone
    # and the background next to it is pushed down less than without the pseudo-label
    plain = torch.full((1, 2, 8, 8, 8), -1.0, requires_grad=True)
    focal_heatmap_loss(plain, empty, 0.25).backward()
    near = torch.full((1, 2, 8, 8, 8), -1.0, requires_grad=True)
    focal_heatmap_loss(near, empty, 0.25, anywhere=anywhere).backward()
    assert 0 < near.grad[0, 0, 4, 4, 5] < plain.grad[0, 0, 4, 4, 5]


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
    for lo, size, core_lo, core_hi in tiles(shape, 32, 8, 8):
        assert (size % 8 == 0).all() and (lo == core_lo - 8).all()
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
    # two species: the second channel firing on the first species' particle is a known
    # mistake and costs in full, not at the unlabelled weight
    two = torch.cat([target, torch.zeros_like(target)], dim=1)
    right = torch.stack([good[:, 0], torch.full_like(good[:, 0], -4.0)], dim=1)
    wrong = right.clone()
    wrong[:, 1][target[:, 0] >= 0.5] = 2.0
    extra_full = focal_heatmap_loss(wrong, two, 1.0) - focal_heatmap_loss(right, two, 1.0)
    extra_low = focal_heatmap_loss(wrong, two, 0.25) - focal_heatmap_loss(right, two, 0.25)
    assert float(extra_full) > 0
    assert float(extra_low) == pytest.approx(float(extra_full), rel=1e-4)


@pytest.mark.parametrize("levels", [2, 3])
def test_unet_keeps_the_shape_and_starts_near_no_particle(levels):
    net = UNet3d(UNetConfig(width=4, n_classes=2, levels=levels))
    assert net.multiple == 2 ** levels
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
    # the same labels again: they are left out of the cutoff's mixture in both runs (without
    # them the second fit sees the labelled peaks too, and a pick at the cutoff may flip)
    assert main(common + ["--model", str(tmp_path / "a"), "--labels",
                          str(tmp_path / "labels.star"), "--out", str(tmp_path / "b")]) == 0
    second = read_coordinates(tmp_path / "b" / "picks3d_relion4.star")
    assert len(first) >= 10
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


def test_tomo_benchmark_scores_unlabelled_particles_with_and_without_species():
    import pandas as pd
    from fewshotpicker.benchmarks.tomo import unlabelled_scores
    truth = pd.DataFrame({"micrograph": ["t.mrc"] * 4, "x": [10.0, 40.0, 70.0, 100.0],
                          "y": [10.0, 40.0, 70.0, 100.0], "z": [10.0] * 4,
                          "class": [1, 2, 1, 2]})
    labels = truth.iloc[[2]]
    picks = pd.DataFrame({"micrograph": ["t.mrc"] * 4, "x": [11.0, 40.0, 70.0, 150.0],
                          "y": [10.0, 41.0, 70.0, 150.0], "z": [10.0] * 4,
                          "class": [1, 1, 1, 2], "score": [0.9, 0.8, 0.7, 0.6]})
    scores = unlabelled_scores(picks, truth, labels, radius=8.0)
    # right species at the first particle only; the pick on the label is left out
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1 / 3)
    assert scores["f1_any"] == pytest.approx(2 / 3)  # the wrong-species pick found a particle


def test_radial_profile_prototypes_tell_two_sizes_apart_from_one_label_each():
    from pathlib import Path
    from fewshotpicker.tomo.data import Tomogram
    from fewshotpicker.tomo.species import (class_prototypes, nearest_species,
                                            radial_profiles)
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 1.0, (24, 96, 96)).astype(np.float32)
    zz, yy, xx = np.mgrid[:24, :96, :96]
    centres = np.array([[12, 12, 12], [40, 15, 12], [70, 20, 12], [15, 60, 12], [45, 70, 12],
                        [75, 75, 12]], float)  # x, y, z
    sizes = np.array([9.0, 9.0, 9.0, 4.0, 4.0, 4.0])  # radii: two species
    for (x, y, z), r in zip(centres, sizes):
        vol[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= r ** 2] -= 1.5  # dark protein
    tomo = Tomogram(Path("t.mrc"), vol, 10.0, 0.0, 1.0)
    profiles = radial_profiles(tomo, centres, 12)
    assert profiles.shape == (6, 13)
    assert profiles[0, 6] < -0.7 and abs(profiles[3, 8]) < 0.5  # ring 6: inside big only
    protos = class_prototypes(profiles[[0, 3]], np.array([1, 2]))
    assert nearest_species(profiles, protos).tolist() == [1, 1, 1, 2, 2, 2]
    assert nearest_species(np.empty((0, 13)), protos).tolist() == []


def test_memory_benchmark_runs_the_tiled_detection_over_a_whole_volume(tmp_path):
    from fewshotpicker.benchmarks.tomo_memory import run
    result = run(tmp_path, (16, 40, 72), "tiny", box=8.0, tile=32, device="cpu")
    assert result["tiles"] == 1 * 2 * 3  # cores of 32 over 16 x 40 x 72
    assert result["shape_zyx"] == "16x40x72" and result["device"] == "cpu"
    assert result["anon_rss_peak_MiB"] >= result["anon_rss_before_MiB"] > 0
    assert (tmp_path / "noise_16x40x72.mrc").stat().st_size > 16 * 40 * 72 * 4


def test_labelled_particles_are_left_out_of_the_cutoff_fit_only():
    import pandas as pd
    from fewshotpicker.tomo.run import off_labels
    cands = pd.DataFrame({"x": [10.0, 30.0, 60.0], "y": [10.0, 30.0, 60.0],
                          "z": [5.0, 5.0, 5.0]})
    assert off_labels(cands, np.array([[11.0, 10.0, 5.0]]), 4.0).tolist() == [False, True, True]
    assert off_labels(cands, None, 4.0).all()


def test_pick3d_refuses_a_pseudo_threshold_outside_0_1(tmp_path):
    from fewshotpicker.config import Pick3dConfig
    from fewshotpicker.errors import InputError
    from fewshotpicker.tomo.run import check_settings
    with pytest.raises(InputError, match="pseudo_threshold 0.0: must be a share above 0 and at "
                                         "most 1."):
        check_settings(Pick3dConfig(box=16, model="m.pt", pseudo_threshold=0.0), None, "labels")
    with pytest.raises(InputError, match="ema nan: must be a share from 0 to 1."):
        check_settings(Pick3dConfig(box=16, model="m.pt", ema=float("nan")), None, "labels")
    with pytest.raises(InputError, match="--species-by must be one of profile, network"):
        check_settings(Pick3dConfig(box=16, model="m.pt", species_by="size"), None, "labels")


def test_species_prototypes_travel_with_the_model(small_tomograms, tmp_path):
    from fewshotpicker.cli.main import main
    from fewshotpicker.io.checkpoint import load_checkpoint
    from fewshotpicker.io.coordinates import read_coordinates, write_coordinate_table
    truth = read_coordinates(small_tomograms / "truth3d.star")
    labels = truth.iloc[::6].copy()
    labels["class"] = [1 + i % 2 for i in range(len(labels))]  # two "species"
    write_coordinate_table(labels, tmp_path / "labels.star")
    common = ["pick3d", "--tomograms", str(small_tomograms / "tomograms"), "--box", "16",
              "--size", "tiny", "--crop", "32", "--device", "cpu", "--threshold", "0.03"]
    assert main(common + ["--labels", str(tmp_path / "labels.star"), "--steps", "4",
                          "--supervised-only", "--out", str(tmp_path / "a")]) == 0
    payload = load_checkpoint(tmp_path / "a" / "model.pt", kinds=["tomo"])
    assert sorted(payload["species"]["prototypes"]) == [1, 2]
    assert payload["species"]["radius"] == 16
    assert main(common + ["--model", str(tmp_path / "a"), "--out", str(tmp_path / "b")]) == 0
    first = read_coordinates(tmp_path / "a" / "picks3d_relion4.star")
    second = read_coordinates(tmp_path / "b" / "picks3d_relion4.star")
    assert len(first) > 0 and set(first["class"]) <= {1, 2}
    assert second["class"].tolist() == first["class"].tolist()


def test_a_nan_anywhere_in_a_tomogram_is_refused(tmp_path):
    from fewshotpicker.errors import InputError
    from fewshotpicker.io.mrc import write_mrc
    from fewshotpicker.tomo.data import open_tomogram
    vol = np.random.default_rng(0).normal(size=(32, 24, 24)).astype(np.float32)
    write_mrc(tmp_path / "good.mrc", vol)
    assert open_tomogram(tmp_path / "good.mrc").std == pytest.approx(1.0, abs=0.05)
    vol[1, 5, 7] = np.nan  # section 1 lies outside the sample the statistics come from
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile says so as it writes
        write_mrc(tmp_path / "bad.mrc", vol)
    with pytest.raises(InputError, match=r"bad\.mrc: contains NaN or infinite values\."):
        open_tomogram(tmp_path / "bad.mrc")


def test_pick3d_takes_relion5_tomograms_star_and_names_picks_as_relion_does(small_tomograms,
                                                                            tmp_path):
    """RELION 5 names a tomogram (rlnTomoName TS_00) apart from its file (rec_TS_00.mrc):
    labels under that name are placed, and the picks carry it, as the same model's picks of
    the plain files carry the file's name."""
    import pandas as pd
    import starfile
    from fewshotpicker.cli.main import main
    from fewshotpicker.io.coordinates import (micrograph_key, read_coordinates,
                                              read_tomo_coordinates, write_coordinate_table,
                                              write_tomo_coordinates)
    truth = read_coordinates(small_tomograms / "truth3d.star")
    labels = truth.iloc[::6]
    write_coordinate_table(labels, tmp_path / "labels.star")
    common = ["pick3d", "--box", "16", "--size", "tiny", "--crop", "32", "--device", "cpu"]
    assert main(common + ["--tomograms", str(small_tomograms / "tomograms"), "--labels",
                          str(tmp_path / "labels.star"), "--steps", "4", "--supervised-only",
                          "--out", str(tmp_path / "plain")]) == 0
    project = tmp_path / "project"
    recs = project / "Reconstruct" / "job010" / "tomograms"
    recs.mkdir(parents=True)
    files = sorted((small_tomograms / "tomograms").glob("*.mrc"))
    relion = {f.stem: f"TS_{i:02d}" for i, f in enumerate(files)}
    for f in files:
        (recs / f"rec_{relion[f.stem]}.mrc").write_bytes(f.read_bytes())
    starfile.write({"global": pd.DataFrame({
        "rlnTomoName": [relion[f.stem] for f in files],
        "rlnTomoReconstructedTomogram": [f"Reconstruct/job010/tomograms/rec_{relion[f.stem]}"
                                         f".mrc" for f in files]})},
        project / "Reconstruct" / "job010" / "tomograms.star")
    shapes = {name: (32, 96, 96) for name in relion.values()}
    write_tomo_coordinates(labels.assign(micrograph=labels["micrograph"].map(micrograph_key).map(relion)),
                           tmp_path / "labels5.star", shapes, 10.0, relion=5)
    assert main(common + ["--tomograms", str(project / "Reconstruct" / "job010" /
                                             "tomograms.star"),
                          "--labels", str(tmp_path / "labels5.star"),
                          "--model", str(tmp_path / "plain"), "--out", str(tmp_path / "r5")]) == 0
    plain = read_coordinates(tmp_path / "plain" / "picks3d_relion4.star")
    named = read_tomo_coordinates(tmp_path / "r5" / "picks3d.star", shapes, 10.0)
    assert len(plain) > 0 and set(named["micrograph"]) <= set(relion.values())
    assert named["micrograph"].tolist() == plain["micrograph"].map(micrograph_key).map(
        relion).tolist()
    np.testing.assert_allclose(named[["x", "y", "z"]].to_numpy(),
                               plain[["x", "y", "z"]].to_numpy(), atol=1e-3)
    assert (tmp_path / "r5" / "slices" / "TS_00.png").exists()

"""The simulator: determinism, truth geometry, contrast sign, SNR, lures, maps, tomograms."""
import json

import numpy as np
import pytest
from scipy import ndimage

from fewshotpicker.config import MicrographSimConfig, TomogramSimConfig
from fewshotpicker.data.ctf import apply_filter, ctf_2d, electron_wavelength
from fewshotpicker.data.density import density_from_map, generated_density, splat
from fewshotpicker.data.synthetic import simulate_micrograph
from fewshotpicker.data.synthetic3d import missing_wedge_mask, simulate_tomogram
from fewshotpicker.errors import InputError
from fewshotpicker.io.coordinates import read_coordinates
from fewshotpicker.io.mrc import read_image, write_mrc

CLEAN = dict(shape=(256, 256), ice_crystals=0.0, aggregates=0.0, carbon_edge=0.0,
             ice_gradient=0.0, ice_texture=0.0)


def _one(seed=0, **kw):
    cfg = MicrographSimConfig(**{**CLEAN, **kw})
    rng = np.random.default_rng(seed)
    return cfg, generated_density(cfg.particle_diameter_A, rng), rng


def test_wavelength_at_300kv():
    assert electron_wavelength(300.0) == pytest.approx(0.01969, abs=2e-5)


def test_ctf_is_minus_amplitude_contrast_at_zero_frequency():
    ctf = ctf_2d((64, 64), 5.0, 15000, 15000, 0.0, amplitude_contrast=0.1)
    assert ctf[0, 0] == pytest.approx(-0.1)


def test_splat_conserves_weight_and_is_bilinear():
    img = splat(np.array([[2.25, 3.5]]), np.array([4.0]), (8, 8))
    assert img.sum() == pytest.approx(4.0)
    assert img[3, 2] == pytest.approx(4 * 0.75 * 0.5) and img[4, 3] == pytest.approx(4 * 0.25 * 0.5)


def test_generated_density_has_requested_diameter_and_no_symmetry():
    d = generated_density(200.0, np.random.default_rng(1))
    assert d.diameter == pytest.approx(200.0, rel=0.01)
    inertia = np.linalg.eigvalsh(np.cov(d.points.T))
    assert inertia.max() / inertia.min() > 1.1  # not a sphere


def test_same_seed_same_micrograph_other_seed_differs():
    cfg, d, rng = _one(seed=5)
    a = simulate_micrograph(cfg, d, rng).image
    cfg, d, rng = _one(seed=5)
    b = simulate_micrograph(cfg, d, rng).image
    np.testing.assert_array_equal(a, b)
    cfg, d, rng = _one(seed=6)
    assert not np.array_equal(a, simulate_micrograph(cfg, d, rng).image)


def test_truth_inside_image_and_separated():
    cfg, d, rng = _one(crowding=0.4, min_separation=1.05)
    mic = simulate_micrograph(cfg, d, rng)
    diam = d.diameter / cfg.pixel_size
    assert len(mic.particles) >= 15
    assert mic.particles.min() >= 0.75 * diam / 2 - 1e-9
    assert mic.particles.max() <= 256 - 0.75 * diam / 2 + 1e-9
    dist = np.linalg.norm(mic.particles[:, None] - mic.particles[None], axis=-1)
    assert dist[np.triu_indices(len(dist), 1)].min() >= 1.05 * diam - 1e-6


def test_crowding_controls_the_number_of_particles():
    counts = []
    for crowding in (0.05, 0.3):
        cfg, d, rng = _one(crowding=crowding)
        counts.append(len(simulate_micrograph(cfg, d, rng).particles))
    assert counts[1] > 3 * counts[0]


def test_particles_are_darker_than_background():
    cfg, d, rng = _one(snr=0.5, crowding=0.2)
    mic = simulate_micrograph(cfg, d, rng)
    smooth = ndimage.gaussian_filter(mic.expected.astype(float), 3)
    at_particles = smooth[mic.particles[:, 1].astype(int), mic.particles[:, 0].astype(int)]
    assert np.mean(at_particles < np.median(smooth)) > 0.8


@pytest.mark.parametrize("snr", [0.01, 0.1])
def test_particle_snr_matches_the_setting(snr):
    cfg, d, rng = _one(snr=snr, crowding=0.2)
    mic = simulate_micrograph(cfg, d, rng)
    yy, xx = np.mgrid[0:256, 0:256]
    discs = np.zeros((256, 256), bool)
    for x, y in mic.particles:
        discs |= (xx - x) ** 2 + (yy - y) ** 2 <= (d.diameter / cfg.pixel_size / 2) ** 2
    signal_var = mic.expected[discs].var()
    shot_var = mic.expected[discs].mean()  # Poisson: variance = mean
    assert signal_var / shot_var == pytest.approx(snr, rel=0.1)
    noise = mic.image - mic.expected
    assert noise[discs].var() == pytest.approx(shot_var, rel=0.1)


def test_lures_are_recorded_and_keep_particles_away():
    cfg, d, rng = _one(seed=2, ice_crystals=3.0, aggregates=2.0, carbon_edge=1.0)
    mic = simulate_micrograph(cfg, d, rng)
    kinds = {k for k, _, _ in mic.lures}
    assert {"carbon_edge"} <= kinds and kinds & {"ice", "aggregate"}
    diam = d.diameter / cfg.pixel_size
    for kind, x, y in mic.lures:
        if kind == "aggregate":
            assert np.min(np.hypot(*(mic.particles - [x, y]).T)) > 2.0 * diam / 2


def test_density_from_a_map_keeps_its_scale(tmp_path):
    grid = np.indices((32, 32, 32)) - 15.5
    ball = (np.sqrt((grid ** 2).sum(0)) <= 10).astype(np.float32)  # radius 10 voxels
    write_mrc(tmp_path / "ball.mrc", ball + np.random.default_rng(0).normal(0, 0.01, ball.shape),
              pixel_size=4.0)
    d = density_from_map(tmp_path / "ball.mrc", np.random.default_rng(0))
    assert d.diameter == pytest.approx(80.0, rel=0.1)  # 2 x 10 voxels x 4 Å
    write_mrc(tmp_path / "nosize.mrc", ball)
    with pytest.raises(InputError, match="no voxel size"):
        density_from_map(tmp_path / "nosize.mrc", np.random.default_rng(0))


def test_dataset_files_and_exemplars(small_dataset):
    out, meta = small_dataset
    truth = read_coordinates(out / "truth.star")
    exemplars = read_coordinates(out / "exemplars.star")
    assert len(truth) == meta["n_particles"] > 10
    assert len(exemplars) == 5 and set(exemplars["micrograph"]) == {"micrographs/mic_000.mrc"}
    first = truth[truth["micrograph"] == "micrographs/mic_000.mrc"][["x", "y"]].to_numpy()
    box = meta["box_px"]
    for x, y in exemplars[["x", "y"]].to_numpy():
        assert np.min(np.hypot(*(first - [x, y]).T)) < 1e-6
        assert box / 2 <= x <= 256 - box / 2 and box / 2 <= y <= 256 - box / 2
    image = read_image(out / "micrographs" / "mic_001.mrc")
    assert image.data.shape == (256, 256) and image.pixel_size == pytest.approx(5.0)
    saved = json.loads((out / "meta.json").read_text())
    assert saved["config"]["seed"] == 3 and saved["box_px"] == box


def test_missing_wedge_mask_geometry():
    mask = missing_wedge_mask((32, 32, 32), 60.0)  # rfft grid: (kz, ky, kx >= 0)
    assert mask[0, 5, 5]            # kz = 0: always sampled
    assert not mask[5, 0, 0]        # pure kz: inside the wedge
    assert mask[2, 0, 8]            # |kz| < tan(60) |kx|
    assert not mask[10, 0, 2]       # steep: missing


def test_missing_wedge_elongates_a_blob_along_z():
    blob = np.zeros((48, 48, 48))
    blob[24, 24, 24] = 1.0
    blob = ndimage.gaussian_filter(blob, 3.0)
    seen = apply_filter(blob, missing_wedge_mask(blob.shape, 60.0))
    along_z, along_x = seen[:, 24, 24], seen[24, 24, :]
    half_width = lambda p: np.sum(p > 0.5 * p[24])  # noqa: E731
    assert half_width(along_z) >= 1.5 * half_width(along_x)


def test_tomogram_species_and_truth():
    cfg = TomogramSimConfig(shape=(48, 96, 96), crowding=0.1, snr=0.5, seed=1)
    rng = np.random.default_rng(1)
    species = [generated_density(d, rng) for d in cfg.diameters_A]
    tomo, centres, classes = simulate_tomogram(cfg, species, rng)
    assert tomo.shape == (48, 96, 96) and tomo.dtype == np.float32
    assert set(classes) == {1, 2, 3} and len(centres) >= 6
    radii = np.array([d.diameter / cfg.voxel_size / 2 for d in species])[classes - 1]
    assert np.all(centres - radii[:, None] >= -1e-9)
    assert np.all(centres + radii[:, None] <= np.array([96, 96, 48]) + 1e-9)
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    assert np.all(dist >= radii[:, None] + radii[None, :] - 1e-6)


def test_large_images_are_drawn_binned_in_their_own_pixels():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fewshotpicker.data.preview import binned_for_display, draw_outlines, show_micrograph
    img = np.zeros((2500, 3100), np.float32)
    img[1000:1008, 2000:2008] = 1.0
    binned, factor = binned_for_display(img)
    assert factor == 4 and binned.shape == (625, 775)       # 3100 / 4 <= 1024
    assert binned[250, 500] == 1.0 and binned[251, 501] == 1.0 and binned.sum() == 4.0
    small, one = binned_for_display(img[:900, :1000])
    assert one == 1 and small.shape == (900, 1000)
    fig, ax = plt.subplots()
    show_micrograph(ax, img)
    assert ax.images[0].get_extent() == [0, 3100, 2500, 0]  # boxes in micrograph px fit
    draw_outlines(ax, np.array([[2004.0, 1004.0], [10.0, 20.0]]), 50.0)
    draw_outlines(ax, np.array([[5.0, 5.0]]), 30.0, "square", ["lime"])
    circles, squares = ax.collections
    assert len(circles.get_paths()) == 2 and len(squares.get_paths()) == 1
    assert ax.get_xlim() == (0.0, 3100.0)                   # outlines leave the limits
    plt.close(fig)

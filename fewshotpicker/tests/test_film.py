"""Carbon-film edges: found where a step crosses the image, ignored elsewhere, and the
background taken on each side apart so the step leaves no bands."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from fewshotpicker.data.blur import gaussian_blur
from fewshotpicker.data.film import (STEP_WIDTHS, FilmRegions, _bilinear_at, _upsample,
                                     film_regions, region_background)
from fewshotpicker.data.regions import Preprocess, prepare_micrograph

SIZE, BOX = 512, 32.0


def film_image(step: float = 3.0, seed: int = 0, blur: float = 0.0):
    """Noise ``(SIZE, SIZE)`` with a slow ramp, dark particle blobs and, where ``carbon``
    (an arc of a large circle crossing the image), ``step`` darker, the step blurred at
    ``blur`` px; returns both."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    carbon = np.hypot(xx + 250.0, yy + 250.0) < 600.0
    blobs = np.zeros((SIZE, SIZE))
    blobs[rng.integers(0, SIZE, 60), rng.integers(0, SIZE, 60)] = 1.0
    blobs = ndimage.gaussian_filter(blobs, BOX / 4) * 2 * np.pi * (BOX / 4) ** 2
    edge = ndimage.gaussian_filter(carbon.astype(float), blur) if blur else carbon
    img = rng.normal(size=(SIZE, SIZE)) + 1e-3 * xx - 0.8 * blobs - step * edge
    return img.astype(np.float32), carbon


def test_film_regions_follow_the_step_to_a_few_pixels():
    img, carbon = film_image()
    regions = film_regions(gaussian_blur(torch.from_numpy(img), 1.0), BOX)
    assert regions is not None
    labels = regions.labels.numpy()
    assert regions.n == 2 and labels.shape == (SIZE, SIZE) and set(np.unique(labels)) == {0, 1}
    # which region is the carbon: the one that overlaps it most
    on = labels == int(np.argmax([(labels == k)[carbon].mean() for k in range(2)]))
    far = ndimage.distance_transform_edt(carbon) + ndimage.distance_transform_edt(~carbon) > 3
    assert np.all(on[far] == carbon[far])
    assert (on == carbon).mean() > 0.995


def test_no_film_edge_in_a_ramp_with_ice_crystals():
    img, _ = film_image(step=0.0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for cx, cy in ((100, 120), (400, 300), (250, 480)):      # dark compact crystals
        img[np.hypot(xx - cx, yy - cy) < BOX] -= 10.0
    pre = Preprocess(box=BOX, img_size=int(BOX), lowpass=0.03)
    assert film_regions(torch.from_numpy(img), BOX) is None
    with_film = prepare_micrograph(img, Preprocess(box=BOX, img_size=int(BOX), film_edges=True))
    assert torch.equal(with_film, prepare_micrograph(img, pre))


def test_prepared_image_keeps_no_band_along_the_edge():
    img, carbon = film_image()
    dist = ndimage.distance_transform_edt(~carbon) - ndimage.distance_transform_edt(carbon)
    bands = {"carbon side": (dist < -3) & (dist > -BOX), "hole side": (dist > 3) & (dist < BOX)}
    means = {}
    for film in (False, True):
        pre = Preprocess(box=BOX, img_size=int(BOX), film_edges=film)
        prepared = prepare_micrograph(img, pre).numpy()
        means[film] = {k: float(prepared[m].mean()) for k, m in bands.items()}
    # a plain Gaussian background leaves the carbon side dark and the hole side bright ...
    assert means[False]["carbon side"] < -0.6 and means[False]["hole side"] > 0.6
    # ... the background per side leaves neither
    assert all(abs(v) < 0.1 for v in means[True].values())


def test_a_blurred_step_leaves_no_line_along_the_edge():
    """The step's own blur (here 3 px, as a low-pass and the CTF give) is fitted: right at the
    edge the prepared image is as quiet as elsewhere. A sharp cut there left a bright and a
    dark line."""
    img, carbon = film_image(step=6.0, blur=3.0)
    dist = ndimage.distance_transform_edt(~carbon) + ndimage.distance_transform_edt(carbon)
    prepared = prepare_micrograph(img, Preprocess(box=BOX, img_size=int(BOX), lowpass=0.0,
                                                  film_edges=True)).numpy()
    at_edge = float(np.sqrt((prepared[dist <= 4] ** 2).mean()))
    elsewhere = float(np.sqrt((prepared[(dist > BOX) & (dist < 3 * BOX)] ** 2).mean()))
    assert at_edge < 1.25 * elsewhere


def test_region_background_of_one_region_is_the_gaussian_blur():
    img = torch.from_numpy(film_image(step=0.0)[0])
    whole = FilmRegions(torch.zeros(SIZE, SIZE, dtype=torch.long),
                        torch.zeros(SIZE, SIZE, dtype=torch.bool), 1)
    for sigma in (16.0, 64.0):
        diff = region_background(img, whole, sigma, BOX) - gaussian_blur(img, sigma)
        assert float(diff.abs().max()) < 0.02 * float(img.std())


@pytest.mark.parametrize("seed", [1, 2])
def test_particles_beside_the_edge_keep_their_contrast(seed):
    """A dark blob (a third of the step deep) a third of a box from the edge, on the bright
    side, dips the prepared image as much as the same blob far from the edge."""
    img, carbon = film_image(seed=seed)
    dist = ndimage.distance_transform_edt(~carbon)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pre = Preprocess(box=BOX, img_size=int(BOX), lowpass=0.0, film_edges=True)
    base = prepare_micrograph(img, pre).numpy()
    dips = []
    for d in (BOX / 3, 4 * BOX):
        y, x = np.argwhere((np.abs(dist - d) < 0.5) & (xx > SIZE / 3) & (yy > SIZE / 3))[0]
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (BOX / 4) ** 2))
        dipped = prepare_micrograph((img - blob).astype(np.float32), pre).numpy()
        dips.append(float((base - dipped)[y, x]))
    assert dips[0] == pytest.approx(dips[1], rel=0.15)
    assert dips[1] > 0.5


def dense_region_background(img, labels, n, band, sigma, box):
    """The background as it was computed until session 41, every region's mask blurred over
    the whole image at every step width: the reference the tiled computation must match."""
    masks = torch.stack([(labels == k).float() for k in range(n)])
    means = torch.stack([gaussian_blur(m * img, sigma) / gaussian_blur(m, sigma).clamp_min(1e-4)
                         for m in masks])
    best = None
    for width in STEP_WIDTHS:
        soft = masks if width == 0 else torch.stack([gaussian_blur(m, width * box)
                                                     for m in masks])
        background = (soft / soft.sum(0) * means).sum(0)
        left = float(((img - background)[band] ** 2).mean())
        if best is None or left < best[0]:
            best = (left, background)
    return best[1]


@pytest.mark.parametrize("cuts", [1, 3])
def test_the_step_blurred_near_the_cut_alone_is_the_step_blurred_everywhere(cuts):
    """Three regions (two edges) and four (three), on an image that is not a whole number of
    tiles: blurring the masks only on the tiles near a boundary gives the background a blur
    of the whole masks gave."""
    rng = np.random.default_rng(cuts)
    h, w = 300, 430
    yy, xx = np.mgrid[0:h, 0:w]
    n = cuts + 1
    labels = torch.from_numpy((n * (xx + 0.4 * yy) // (w + 0.4 * h)).astype(np.int64))
    steps = np.array([0.0, 3.0, -2.0, 5.0])[:n]
    img = ndimage.gaussian_filter(steps[labels.numpy()], 2.5) + rng.normal(size=(h, w))
    img = torch.from_numpy(img.astype(np.float32))
    band = torch.zeros(h, w, dtype=torch.bool)
    band[:, 1:] = labels[:, 1:] != labels[:, :-1]
    band = torch.from_numpy(ndimage.binary_dilation(band.numpy(), iterations=6))
    # sigma under 16 px keeps the coarse means at full size, as the reference has them
    for sigma in (12.0, 15.0):
        tiled = region_background(img, FilmRegions(labels, band, n), sigma, BOX)
        dense = dense_region_background(img, labels, n, band, sigma, BOX)
        assert float((tiled - dense).abs().max()) < 1e-4 * float(img.std())
    far = torch.from_numpy(ndimage.distance_transform_edt(~band.numpy()) > BOX)
    left = (img - tiled)[far]  # away from the cut the steps are gone, the noise stays
    assert abs(float(left.mean())) < 0.05 and float(left.std()) < 1.05


def test_region_means_interpolated_at_pixels_equal_the_upsampled_means():
    coarse = torch.randn(3, 9, 13)
    for factor in (1, 4, 7):
        shape = (9 * factor - factor // 2, 13 * factor - 1)
        whole = _upsample(coarse, factor, shape, "bilinear")
        ys, xs = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
        at = _bilinear_at(coarse, factor, ys.flatten(), xs.flatten()).view(3, *shape)
        assert torch.allclose(at, whole, atol=1e-5)

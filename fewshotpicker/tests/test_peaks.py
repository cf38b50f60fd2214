"""Peak finding and the DoG baseline on synthetic images with known answers."""
import numpy as np
import pytest

from fewshotpicker.config import DogConfig
from fewshotpicker.picking.dog import pick_dog
from fewshotpicker.picking.peaks import (find_peaks, overlapping, path_minima, ring_mean,
                                        suppress_close, suppress_shoulders)


def gaussian_map(shape, centres, sigma=3.0, heights=None):
    """Sum of Gaussians at ``centres`` (x, y[, z]) on a grid of ``shape`` (array order)."""
    grids = np.indices(shape).astype(float)[::-1]  # x, y(, z)
    out = np.zeros(shape)
    for i, c in enumerate(centres):
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        out += (1.0 if heights is None else heights[i]) * np.exp(-d2 / (2 * sigma ** 2))
    return out


def test_subpixel_peaks_recovered_in_x_y_order():
    centres = [(20.3, 40.7), (70.6, 15.2), (50.0, 80.45)]
    pos, score = find_peaks(gaussian_map((100, 90), centres), min_distance=10)
    assert len(pos) == 3
    for c in centres:
        assert np.min(np.linalg.norm(pos - np.array(c), axis=1)) < 0.15


def test_min_distance_keeps_the_higher_of_two_close_peaks():
    score = gaussian_map((60, 60), [(20, 30), (27, 30)], sigma=1.5, heights=[1.0, 0.8])
    pos, _ = find_peaks(score, min_distance=10)
    assert len(pos) == 1 and abs(pos[0][0] - 20) < 0.5
    pos, _ = find_peaks(score, min_distance=4)
    assert len(pos) == 2


@pytest.mark.parametrize("min_distance", [0.0, 1.0, 1.5, 2.0])
def test_a_small_min_distance_still_finds_peaks_on_a_coarse_map(min_distance):
    # a coarse score map (stride ~ radius) has peaks only a few cells apart
    centres = [(3.2, 4.0), (8.0, 9.3), (12.6, 3.4)]
    pos, _ = find_peaks(gaussian_map((14, 16), centres, sigma=1.2), min_distance=min_distance)
    assert len(pos) == 3
    for c in centres:
        assert np.min(np.linalg.norm(pos - np.array(c), axis=1)) < 0.35


def test_threshold_and_border_exclusion():
    score = gaussian_map((60, 60), [(3, 30), (30, 30), (45, 45)], heights=[1.0, 1.0, 0.3])
    pos, values = find_peaks(score, 8, threshold=0.5, exclude_border=5)
    assert len(pos) == 1 and np.allclose(pos[0], (30, 30), atol=0.1)
    assert values[0] == pytest.approx(1.0, abs=0.01)


def test_peaks_in_3d():
    centres = [(10.2, 20.0, 5.0), (30.0, 8.0, 12.6)]
    pos, _ = find_peaks(gaussian_map((20, 30, 40), centres, sigma=2.0), min_distance=6)
    assert len(pos) == 2
    for c in centres:
        assert np.min(np.linalg.norm(pos - np.array(c), axis=1)) < 0.2


def test_a_shoulder_on_the_flank_of_a_higher_peak_is_dropped():
    # two Gaussians 7.5 px apart (2.5 sigma): two maxima with only a shallow dip between
    score = gaussian_map((40, 60), [(20, 20), (27.5, 20)], sigma=3.0, heights=[1.0, 0.75])
    pos, values = find_peaks(score, min_distance=2)
    assert len(pos) == 2 and pos[1][0] == pytest.approx(26.7, abs=0.2)
    assert path_minima(score, pos[1:], pos[:1])[0] == pytest.approx(0.779, abs=0.005)
    assert suppress_shoulders(score, pos, values, reach=10, dip=0.4).tolist() == [True, False]
    # out of reach, or with the rule off, it stays
    assert suppress_shoulders(score, pos, values, reach=5, dip=0.4).all()
    assert suppress_shoulders(score, pos, values, reach=0, dip=0.4).all()
    # a dip of 0.03 below the shoulder's 0.805 is more than 1% of its height
    assert suppress_shoulders(score, pos, values, reach=10, dip=0.01).all()


def test_paths_of_different_lengths_in_one_call():
    score = np.add.outer(np.arange(20.0), np.zeros(30))   # value = y
    starts = np.array([[2.0, 10.0], [5.0, 3.0], [0.0, 0.0]])
    ends = np.array([[20.0, 10.0], [5.0, 15.0], [1.0, 1.0]])
    # a flat path, a rising one (lowest just past its start: 3 + 12/24) and a short one
    # sampled 7 times (1/8 to 7/8 of the way)
    np.testing.assert_allclose(path_minima(score, starts, ends), [10.0, 3.5, 0.125])
    assert path_minima(score, np.empty((0, 2)), np.empty((0, 2))).shape == (0,)


def test_a_shoulder_of_a_dropped_shoulder_stays():
    # A > B > C in a row: B sits on A's flank (dropped); C sits on B's flank but a valley
    # parts it from A, and B no longer counts, so C stays
    score = gaussian_map((40, 90), [(20, 20), (27.5, 20), (35, 20)], sigma=3.0,
                         heights=[1.0, 0.75, 0.6])
    pos, values = find_peaks(score, min_distance=2)
    assert len(pos) == 3
    keep = suppress_shoulders(score, pos, values, reach=10, dip=0.4)
    assert keep.tolist() == [True, False, True]


def test_two_peaks_with_a_valley_between_both_stay():
    score = gaussian_map((40, 60), [(20, 20), (38, 20)], sigma=3.0, heights=[1.0, 0.75])
    pos, values = find_peaks(score, min_distance=2)
    assert len(pos) == 2
    assert suppress_shoulders(score, pos, values, reach=30, dip=0.4).all()


def test_suppress_close_order_and_distance():
    pts = np.array([[0.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    keep = suppress_close(pts, np.array([0.5, 0.9, 0.1]), 5.0)
    assert keep.tolist() == [1, 2]


def _disc_image(centres, radius, shape=(200, 200), contrast=-1.0, noise=0.3, seed=0):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = np.zeros(shape)
    for x, y in centres:
        img += contrast * ((xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2)
    return img + np.random.default_rng(seed).normal(0, noise, shape)


def test_dog_finds_dark_discs_and_nothing_else():
    centres = [(40, 50), (120, 40), (150, 150), (60, 140)]
    xy, scores, thr = pick_dog(_disc_image(centres, 10), DogConfig(diameter=20))
    assert len(xy) == 4
    for c in centres:
        assert np.min(np.linalg.norm(xy - np.array(c), axis=1)) < 2.0


def test_dog_bright_particles_need_the_flag():
    centres = [(50, 50), (140, 120)]
    image = _disc_image(centres, 10, contrast=+1.0)
    xy, _, _ = pick_dog(image, DogConfig(diameter=20, dark_particles=False))
    assert len(xy) == 2
    xy_dark, _, _ = pick_dog(image, DogConfig(diameter=20))
    assert all(np.min(np.linalg.norm(xy_dark - np.array(c), axis=1)) > 5 for c in centres) \
        if len(xy_dark) else True


def test_ring_mean_is_the_mean_on_a_circle_around_each_point():
    yy, xx = np.mgrid[0:60, 0:80].astype(float)
    plane = 0.5 * xx - 0.25 * yy                      # a plane: its circle mean is the centre's
    centres = np.array([[30.0, 20.0], [41.5, 33.25]])
    np.testing.assert_allclose(ring_mean(plane, centres, 7.0), 0.5 * centres[:, 0]
                               - 0.25 * centres[:, 1], atol=1e-9)
    bump = np.exp(-((xx - 40) ** 2 + (yy - 30) ** 2) / (2 * 6.0 ** 2))
    assert ring_mean(bump, np.array([[40.0, 30.0]]), 6.0)[0] == \
        pytest.approx(np.exp(-0.5), abs=0.01)         # one sigma out
    assert ring_mean(bump, np.empty((0, 2)), 6.0).shape == (0,)


def test_overlapping_marks_only_the_lower_of_two_close_peaks():
    xy = np.array([[10.0, 10.0], [20.0, 10.0], [60.0, 10.0], [64.0, 40.0]])
    values = np.array([0.9, 0.8, 0.7, 0.95])
    # 10 px apart: the second overlaps the first; the third's nearest (31 px) is out of reach
    np.testing.assert_array_equal(overlapping(xy, values, 15.0), [False, True, False, False])
    # within 31 px the third lies under the fourth, higher one
    np.testing.assert_array_equal(overlapping(xy, values, 31.0), [False, True, True, False])
    assert not overlapping(xy, values, 10.0).any()    # exactly 10 px apart do not overlap
    assert not overlapping(xy, values, 0.0).any()
    # equal scores: neither is higher, neither is marked
    assert not overlapping(xy[:2], np.array([0.5, 0.5]), 15.0).any()

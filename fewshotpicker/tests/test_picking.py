"""Picking engine: window geometry, cutoffs, out-of-memory retry, failures that do not spread."""
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshotpicker.cli.main import main
from fewshotpicker.config import PickConfig
from fewshotpicker.data.regions import (Preprocess, crop_windows, prepare_micrograph,
                                        window_contrast_at, window_contrast_grid)
from fewshotpicker.errors import InputError, failure_message, none_picked
from fewshotpicker.io.checkpoint import save_checkpoint
from fewshotpicker.io.coordinates import read_coordinates
from fewshotpicker.io.mrc import read_image, write_mrc
from fewshotpicker.models.mae import build_mae
from fewshotpicker.picking import run as pick_run
from fewshotpicker.picking.picker import (Candidates, check_overlaps, cutoff_keeping,
                                          default_stride, fill_to_valley, find_candidates,
                                          rank_by_surround, surround_corrected)
from fewshotpicker.picking.plots import summarise_counts, unusual_counts
from fewshotpicker.picking.scoring import (Bank, ScoreMap, edge_pad, fill_unscored,
                                           refine_seeds, score_coarse_to_fine, score_grid,
                                           score_micrograph, score_prepared, window_grid)
from fewshotpicker.picking.threshold import (anchored_cutoff, choose_cutoff, density_cutoff,
                                             gmm_cutoff, otsu2_cutoff, otsu_threshold,
                                             overlap_checked_cutoff, resolved_rule,
                                             valley_cutoff)
from fewshotpicker.training.common import model_payload


def test_window_grid_is_a_view_matching_crop_windows():
    img = torch.randn(40, 50)
    grid = window_grid(img, 16, 4)
    assert grid.shape == (7, 9, 16, 16)
    assert grid.data_ptr() == img.data_ptr()  # a view, no copy
    sm = ScoreMap(np.zeros((7, 9)), step=4, offset=8.0, scale=1.0)
    x, y = sm.grid_to_micrograph(np.array([[3, 2]]))[0]  # window (i=2, j=3)
    crop = crop_windows(img, torch.tensor([[x, y]]), 16)[0, 0]
    window = grid[2, 3]
    expected = (window - window.mean()) / (window.std() + 1e-6)
    assert torch.allclose(crop, expected, atol=1e-5)


def test_window_contrast_is_each_windows_standard_deviation_on_the_grid():
    img = torch.randn(40, 50) * torch.linspace(0.5, 3.0, 50)
    expected = window_grid(img, 16, 4).reshape(7, 9, -1).std(dim=-1, unbiased=False)
    np.testing.assert_allclose(window_contrast_grid(img, 16, 4), expected, atol=1e-4)
    sm = ScoreMap(np.zeros((7, 9)), step=4, offset=8.0, scale=1.0)
    xy = torch.tensor(sm.grid_to_micrograph(np.array([[3, 2], [8, 6]])), dtype=torch.float32)
    np.testing.assert_allclose(window_contrast_at(img, xy, 16), expected[[2, 6], [3, 8]],
                               atol=1e-4)


def test_peaks_on_windows_more_contrasted_than_the_limit_are_dropped():
    scores = np.zeros((20, 30))
    scores[5, 7], scores[12, 20] = 0.9, 1.0
    contrast = np.ones((20, 30))
    contrast[11:14, 19:22] = 5.0                    # an ice crystal's windows
    sm = ScoreMap(scores, step=4, offset=16.0, scale=0.5, contrast=contrast)
    cands = find_candidates(sm, (200, 300), box=40, cfg=PickConfig(), contrast_limit=2.5)
    np.testing.assert_allclose(cands.xy, [[(16 + 7 * 4) / 0.5, (16 + 5 * 4) / 0.5]])
    assert cands.too_contrasty == 1 and cands.contrast_limit == 2.5
    assert len(find_candidates(sm, (200, 300), box=40, cfg=PickConfig()).scores) == 2


def test_bank_contrast_limit_is_a_multiple_of_the_exemplars_median():
    cpu, bank = torch.device("cpu"), torch.randn(8, 4)
    known = Bank.from_payload({"bank": bank, "exemplar_contrast": torch.tensor([0.6, 0.8, 2.0])},
                              cpu)
    assert known.contrast_limit(2.5) == pytest.approx(2.0) and known.contrast_limit(0) is None
    assert Bank.from_payload({"bank": bank}, cpu).contrast_limit(2.5) is None  # older model


def test_grid_to_micrograph_undoes_the_scale():
    sm = ScoreMap(np.zeros((5, 5)), step=8, offset=32.0, scale=1.6)
    np.testing.assert_allclose(sm.grid_to_micrograph(np.array([[0, 0], [1, 2]])),
                               [[20.0, 20.0], [25.0, 30.0]])
    assert sm.stride_px == pytest.approx(5.0)
    assert default_stride(150) == pytest.approx(30.0)


def test_candidates_from_a_planted_score_map():
    scores = np.zeros((20, 30))
    scores[5, 7] = 1.0
    scores[12, 20] = 0.8
    scores[12, 21] = 0.79  # a shoulder of the same peak
    sm = ScoreMap(scores, step=4, offset=16.0, scale=0.5)  # 8 micrograph px per cell
    cands = find_candidates(sm, (200, 300), box=40, cfg=PickConfig())
    assert len(cands.scores) == 2
    np.testing.assert_allclose(cands.xy[0], [(16 + 7 * 4) / 0.5, (16 + 5 * 4) / 0.5])
    assert cands.xy[1][0] == pytest.approx((16 + 20.5 * 4) / 0.5, abs=3.0)


def test_candidates_drop_a_shoulder_within_the_reach_only():
    scores = np.zeros((20, 30))
    # peaks 3 cells (24 px, over the 20 px minimum distance) apart, no valley between
    scores[10, 10:14] = [1.0, 0.75, 0.7, 0.8]
    sm = ScoreMap(scores, step=4, offset=16.0, scale=0.5)          # 8 px per cell
    assert len(find_candidates(sm, (200, 300), box=40, cfg=PickConfig()).scores) == 1
    off = PickConfig(shoulder_reach=0.0)
    assert len(find_candidates(sm, (200, 300), box=40, cfg=off).scores) == 2
    # the same two peaks with a valley between them are two particles
    scores[10, 12] = 0.1
    assert len(find_candidates(sm, (200, 300), box=40, cfg=PickConfig()).scores) == 2


def test_surround_correction_lowers_a_score_by_its_surrounds_excess_over_the_median():
    scores = np.array([0.99, 0.99, 0.95])
    surround = np.array([0.10, 0.60, 0.10])           # median 0.10: only the second stands out
    out = surround_corrected(scores, surround, 0.5)
    assert out[0] == pytest.approx(0.99) and out[2] == pytest.approx(0.95)
    assert np.arctanh(out[1]) == pytest.approx(np.arctanh(0.99) - 0.5 * (np.arctanh(0.6)
                                                                        - np.arctanh(0.1)))
    np.testing.assert_allclose(surround_corrected(scores, surround, 0.0), scores)


def test_cutoff_keeping_keeps_exactly_the_count_asked():
    scores = np.array([0.3, 0.9, 0.5, 0.7])
    for count in range(5):
        assert int((scores > cutoff_keeping(scores, count)).sum()) == count


def _a_lone_peak_and_one_on_a_hill():
    """Candidates of a map with a lone peak (0.98 at x = 12) on a flat 0.1 and a higher one
    (0.985 at x = 42) atop a broad hill that scores 0.5 a box's 0.75 away; box 12 map px."""
    yy, xx = np.mgrid[0:30, 0:60].astype(float)
    scores = 0.1 + 0.6 * np.exp(-((xx - 42) ** 2 + (yy - 15) ** 2) / (2 * 10.0 ** 2))
    scores[15, 12], scores[15, 42] = 0.98, 0.985
    sm = ScoreMap(scores, step=1, offset=0.0, scale=1.0)
    cands = find_candidates(sm, (30, 60), box=12, cfg=PickConfig())
    assert len(cands.scores) == 2 and cands.xy[0][0] == pytest.approx(42, abs=0.6)
    return cands


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_ranking_by_surround_keeps_the_peak_that_stands_out(weight):
    cands = _a_lone_peak_and_one_on_a_hill()
    cands.cutoff = cutoff_keeping(cands.scores, 1)    # a fitted cut that keeps one pick
    rank_by_surround(cands, weight, "auto")
    kept, _ = cands.kept()
    # the hill's peak scores higher, but stands out less from what is around it: ranked
    # against its surround the lone peak is the one kept, without the correction the hill's
    assert len(kept) == 1 and kept[0][0] == pytest.approx(12 if weight else 42, abs=0.6)
    assert np.isfinite(cands.fitted_cutoff) == bool(weight)


def test_in_the_cascade_only_re_scored_candidates_are_corrected_and_the_rest_stay_below():
    cands = _a_lone_peak_and_one_on_a_hill()
    cands.rescored = np.array([True, False])          # the encoder re-scored the hill's peak
    cands.cutoff = cutoff_keeping(cands.scores, 1)
    before = cands.scores.copy()
    rank_by_surround(cands, 0.5, "auto")
    kept, _ = cands.kept()
    assert len(kept) == 1 and kept[0][0] == pytest.approx(42, abs=0.6)
    # the one re-scored candidate is its own median surround: its score stays; the other,
    # lower by the student's score, cannot overtake it by its lower surround
    assert cands.scores[0] == pytest.approx(before[0]) and cands.scores[1] < cands.scores[0]


def test_a_fixed_threshold_cuts_the_surround_corrected_scores():
    cands = _a_lone_peak_and_one_on_a_hill()
    cands.cutoff = 0.97                               # both pass before the correction
    rank_by_surround(cands, 0.5, "0.982")
    kept, scores = cands.kept()
    assert cands.cutoff == 0.982 and cands.fitted_cutoff == 0.97
    assert len(kept) == 1 and kept[0][0] == pytest.approx(12, abs=0.6)
    assert scores[0] > 0.98                           # its surround is below the median


def test_overlap_check_raises_the_cut_past_all_but_the_allowed_overlapping_picks():
    scores = np.linspace(0.99, 0.50, 200)              # 100 picks above 0.745
    over = np.zeros(200, bool)
    over[[5, 20, 40, 80, 150]] = True                 # four overlapping picks above the cut
    # 1% of 100 picks: one may overlap; the cut rises to the second highest overlapping one
    cut = overlap_checked_cutoff(scores, over, 0.745, 0.01)
    assert cut == scores[20] and int((scores > cut).sum()) == 20
    assert overlap_checked_cutoff(scores, over, 0.745, 0.03) == scores[80]  # three allowed
    assert overlap_checked_cutoff(scores, over, 0.745, 0.05) == 0.745       # four, under five
    assert overlap_checked_cutoff(scores, over, 0.745, 0.0) == 0.745        # off
    # however few the picks (15 here), one overlapping pick is allowed, not two
    assert overlap_checked_cutoff(scores[:15], over[:15], 0.9, 0.01) == 0.9
    assert overlap_checked_cutoff(scores[:30], over[:30], 0.9, 0.01) == scores[20]


def _touching_pairs(n_pairs: int, gap: float, box: float = 10.0) -> Candidates:
    """Candidates: 40 lone peaks (scores 0.99-0.95) and ``n_pairs`` peaks ``gap`` box beside
    one of them, scoring lower (0.949-0.9); box 10 px; cutoff 0.8 (all picked)."""
    lone = np.stack([np.arange(40) * 30.0, np.zeros(40)], axis=1)
    side = lone[:n_pairs] + [0.0, gap * box]
    xy = np.concatenate([lone, side])
    scores = np.concatenate([np.linspace(0.99, 0.95, 40), np.linspace(0.949, 0.9, n_pairs)])
    return Candidates(xy, scores, score_map=None, cutoff=0.8, box=box)


def test_check_overlaps_cuts_peaks_beside_picks_but_not_neighbours_a_box_apart():
    cands = _touching_pairs(6, gap=0.6)
    check_overlaps(cands, 0.01, "auto")
    kept, _ = cands.kept()
    # 6 of 46 picks overlap (0.6 box from a higher one); one may stay: the highest of them
    assert len(kept) == 41 and cands.overlapping == 6 and cands.unchecked_cutoff == 0.8
    neighbours = _touching_pairs(6, gap=1.0)         # particles side by side
    check_overlaps(neighbours, 0.01, "auto")
    assert len(neighbours.kept()[0]) == 46 and neighbours.overlapping == 0
    # a fixed threshold or the global quantile is the user's; 0 turns the check off
    for share, rule in ((0.01, "0.8"), (0.01, "quantile"), (0.0, "auto")):
        same = _touching_pairs(6, gap=0.6)
        check_overlaps(same, share, rule)
        assert len(same.kept()[0]) == 46 and np.isnan(same.unchecked_cutoff)


def _crowded(n_packed: int, n_beside: int, box: float = 10.0) -> Candidates:
    """Candidates: 60 particles a box apart in a row (cos 0.99, all picked: cutoff 0.985),
    ``n_packed`` more a box apart in a second row scoring a little lower (0.95-0.90),
    ``n_beside`` background peaks 0.5 box beside the first row's particles (0.6-0.5), and
    200 background peaks far away (cos about -0.95); box 10 px."""
    rng = np.random.default_rng(0)
    first = np.stack([np.arange(60) * box, np.zeros(60)], axis=1)
    packed = np.stack([np.arange(n_packed) * box, np.full(n_packed, box)], axis=1)
    beside = first[:n_beside] + [0.0, -0.5 * box]
    far = np.stack([rng.uniform(0, 600, 200), rng.uniform(500, 900, 200)], axis=1)
    xy = np.concatenate([first, packed, beside, far])
    scores = np.concatenate([np.linspace(0.995, 0.99, 60), np.linspace(0.95, 0.90, n_packed),
                             np.linspace(0.6, 0.5, n_beside), np.tanh(rng.normal(-1.8, 0.1, 200))])
    return Candidates(xy, scores, score_map=None, cutoff=0.985, box=box)


def test_valley_cutoff_lies_between_background_and_particle_like_scores():
    cands = _crowded(30, 0)
    cut = valley_cutoff(cands.scores)
    assert cands.scores[90:].max() < cut < 0.90      # background below, both rows above
    assert valley_cutoff(np.array([0.1, 0.9])) == -np.inf


def test_crowded_micrographs_come_down_to_the_valley_when_the_added_picks_overlap_nothing():
    cands = _crowded(30, 0)
    valley = int(np.sum(cands.scores > valley_cutoff(cands.scores)))
    fill_to_valley(cands, valley, "auto")
    # the second row of touching particles joins the picks: none lies 0.75 box from another
    assert len(cands.kept()[0]) == 90 and cands.filled == 30 and cands.valley_overlap == 0.0
    # background peaks half a box beside picked particles: 20 of the 50 added (0.4) overlap
    beside = _crowded(30, 20)
    valley = int(np.sum(beside.scores > valley_cutoff(beside.scores)))
    assert valley == 110
    fill_to_valley(beside, valley, "auto")
    assert len(beside.kept()[0]) == 60 and beside.filled == 0
    assert beside.valley_overlap == pytest.approx(0.4)
    # one overlapping among 30 added (0.033) is allowed; a fixed threshold is the user's
    one = _crowded(30, 1)
    fill_to_valley(one, int(np.sum(one.scores > valley_cutoff(one.scores))), "auto")
    assert one.filled == 31
    fixed = _crowded(30, 0)
    fill_to_valley(fixed, 90, "0.985")
    assert len(fixed.kept()[0]) == 60 and fixed.valley_picks == -1


def test_density_cutoff_falls_between_particles_and_background():
    rng = np.random.default_rng(0)
    particles = rng.uniform(0.75, 0.98, 40)        # sparse, spread out
    background = rng.normal(0.35, 0.03, 400)       # dense
    cut = density_cutoff(np.concatenate([particles, background]), k=10)
    assert 0.4 < cut < 0.76
    assert density_cutoff(np.array([0.5, 0.6]), k=10) == -np.inf  # too few to decide


def test_otsu2_keeps_the_tight_top_mode_only():
    rng = np.random.default_rng(0)
    background = np.tanh(rng.normal(-1.0, 0.2, 400))   # far from the exemplars
    tail = np.tanh(rng.normal(1.0, 0.25, 60))          # off-centre views, lures
    particles = np.tanh(rng.normal(2.8, 0.15, 100))    # centred particles, cos ~0.99
    cut = otsu2_cutoff(np.concatenate([background, tail, particles]))
    kept_particles = np.mean(particles > cut)
    kept_tail = np.mean(tail > cut)
    assert kept_particles > 0.95 and kept_tail < 0.05
    assert otsu2_cutoff(np.array([0.1, 0.9])) == -np.inf
    cut = otsu_threshold(np.concatenate([np.zeros(50), np.ones(50)]))
    assert 0.0 < cut < 1.0  # any cut between two spikes separates them equally well


@pytest.mark.parametrize("with_tail", [False, True])
def test_gmm_cutoff_separates_the_top_mode_with_or_without_a_middle_class(with_tail):
    rng = np.random.default_rng(1)
    background = rng.normal(-0.5, 0.3, 500)             # z-space
    tail = rng.normal(1.0, 0.2, 80) if with_tail else np.empty(0)
    particles = rng.normal(2.5, 0.2, 100)
    cut = np.arctanh(gmm_cutoff(np.tanh(np.concatenate([background, tail, particles]))))
    assert np.mean(particles > cut) > 0.97
    assert np.mean(background > cut) < 0.01
    if with_tail:
        assert np.mean(tail > cut) < 0.05   # the middle class is left out
    assert gmm_cutoff(np.tanh(particles[:5])) == -np.inf  # too few to model


def test_anchored_cutoff_leaves_out_a_near_particle_class_the_exemplars_do_not_reach():
    """Low SNR: background peaks near particles form a class just below them."""
    rng = np.random.default_rng(3)
    background = rng.normal(-1.5, 0.3, 600)                 # z-space
    near = rng.normal(2.2, 0.12, 200)                       # false peaks, close below
    particles = rng.normal(2.8, 0.12, 150)
    scores = np.tanh(np.concatenate([background, near, particles]))
    cut = np.arctanh(anchored_cutoff(scores, anchor=np.tanh(2.8)))
    assert np.mean(particles > cut) > 0.95
    assert np.mean(near > cut) < 0.05 and np.mean(background > cut) == 0.0
    # exemplars scoring like the near class say it is made of particles: it is kept
    cut = np.arctanh(anchored_cutoff(scores, anchor=np.tanh(2.45)))
    assert np.mean(near > cut) > 0.9 and np.mean(background > cut) == 0.0
    assert anchored_cutoff(scores[:5], anchor=0.99) == -np.inf  # too few to model


def test_anchored_cutoff_keeps_the_lower_tail_of_particles_the_exemplars_share():
    """High SNR: off-centre particles score a little lower; the exemplars do too."""
    rng = np.random.default_rng(4)
    background = rng.normal(-2.2, 0.1, 600)
    particles = np.concatenate([rng.normal(3.3, 0.12, 150), rng.normal(2.8, 0.15, 80)])
    scores = np.tanh(np.concatenate([background, particles]))
    cut = np.arctanh(anchored_cutoff(scores, anchor=np.tanh(np.median(particles))))
    assert np.mean(particles > cut) > 0.97 and np.mean(background > cut) == 0.0


def test_anchored_cutoff_keeps_the_fewer_classes_when_the_anchor_cannot_tell(monkeypatch):
    """Default SNR: a 4-class fit splits the particles and its top mean is only 0.05 nearer
    the anchor than the 2- and 3-class fits' (z 3.21 against 3.09, anchor 3.16)."""
    from fewshotpicker.picking import threshold
    rng = np.random.default_rng(1)
    background = np.concatenate([rng.normal(-2.0, 0.3, 450), rng.normal(-0.5, 0.8, 120)])
    particles = np.concatenate([rng.normal(3.22, 0.15, 150), rng.normal(2.7, 0.2, 40)])
    scores = np.tanh(np.concatenate([background, particles]))
    cut = np.arctanh(anchored_cutoff(scores, anchor=np.tanh(3.16)))
    assert np.mean(particles > cut) > 0.99 and np.mean(background > cut) < 0.005
    monkeypatch.setattr(threshold, "ANCHOR_TOLERANCE", 0.0)   # the nearest top mean alone
    cut = np.arctanh(anchored_cutoff(scores, anchor=np.tanh(3.16)))
    assert np.mean(particles > cut) < 0.8                        # cuts the lower tail


@pytest.mark.parametrize("seed", range(5))
def test_anchored_cutoff_does_not_take_a_merged_top_class_for_the_particles(seed):
    """Background, a broad middle class and the particles; the anchor lies as near the top
    class of a 2-class fit (middle and particles merged, 4-5 times broader) as of a 3-class
    fit's (the particles): fewer classes must not win there."""
    from fewshotpicker.picking.threshold import fit_mixtures
    rng = np.random.default_rng(seed)
    middle, particles = rng.normal(1.2, 1.0, 100), rng.normal(3.1, 0.2, 100)
    z = np.concatenate([rng.normal(-1.1, 0.3, 200), middle, particles])
    two, three = fit_mixtures(z, (2, 3))
    anchor = np.tanh((two.means_.max() + three.means_.max()) / 2)
    cut = np.arctanh(anchored_cutoff(np.tanh(z), anchor=anchor))
    assert np.mean(particles > cut) > 0.95 and np.mean(middle > cut) < 0.2  # its upper tail


def split_and_whole_views(seed: int) -> tuple:
    """Cosines of one micrograph's candidates seen twice: the encoder's peaks, whose
    particles (the first 170) form a top class and a lower tail that an anchored fit
    splits, and the student cascade's, whose particles form one class."""
    rng = np.random.default_rng(seed)
    split = np.concatenate([rng.normal(3.35, 0.12, 120), rng.normal(2.95, 0.2, 50),
                            rng.normal(-2.2, 0.05, 500), rng.normal(-0.5, 0.8, 20)])
    whole = np.concatenate([rng.normal(3.3, 0.12, 170), rng.normal(-2.2, 0.05, 400),
                            rng.normal(-0.5, 0.8, 20)])
    return np.tanh(split), np.tanh(whole)


@pytest.mark.parametrize("seed", [0, 3])
def test_the_student_view_keeps_the_particles_a_split_fit_would_cut(seed):
    from fewshotpicker.picking.picker import checked_cutoff
    split, whole = split_and_whole_views(seed)
    cands = Candidates(np.zeros((len(split), 2)), split, None)
    view = Candidates(np.zeros((len(whole), 2)), whole, None)
    anchor = float(np.tanh(3.39))
    cut = checked_cutoff(cands, view, "auto", anchor)
    assert cands.encoder_cutoff == anchored_cutoff(split, anchor)
    assert np.mean(split[:170] > cands.encoder_cutoff) < 0.8   # the fit alone splits them
    assert cut == min(cands.encoder_cutoff, cands.student_cutoff)
    assert np.mean(split[:170] > cut) > 0.98 and np.mean(split[170:] > cut) < 0.01
    # a view too small for three classes of 25 is no check: the encoder's fit stands
    small = Candidates(np.zeros((60, 2)), whole[-60:], None)
    fresh = Candidates(np.zeros((len(split), 2)), split, None)
    assert checked_cutoff(fresh, small, "auto", anchor) == fresh.encoder_cutoff
    assert np.isnan(fresh.student_cutoff)


def test_bank_leave_one_out_scores_each_exemplar_against_the_others_views():
    views = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1.0],      # view 1 of 0, 1, 2
                          [0.8, 0, 0.6], [0, 1.0, 0], [0, 0.6, 0.8]])   # view 2 of 0, 1, 2
    bank = Bank.from_payload({"bank": views, "n_exemplars": 3}, torch.device("cpu"))
    # exemplar 0 (1,0,0) against 1's views: 0.6, 0; 2's: 0, 0 -> 0.6
    # exemplar 1 (0.6,0.8,0) against 0's: 0.6, 0.48; 2's: 0, 0.48 -> 0.6
    # exemplar 2 (0,0,1) against 0's: 0, 0.6; 1's: 0, 0 -> 0.6 ... and 2's own 0.8 is excluded
    np.testing.assert_allclose(bank.leave_one_out(), [0.6, 0.6, 0.6], atol=1e-6)
    assert bank.anchor() == pytest.approx(0.6)
    # a checkpoint that does not say how many exemplars (or cannot be split) has no anchor
    assert Bank.from_payload({"bank": views}, torch.device("cpu")).anchor() is None
    assert Bank.from_payload({"bank": views, "n_exemplars": 4}, torch.device("cpu")).exemplars == 0


def test_choose_cutoff_rules():
    s = np.linspace(0, 1, 101)
    assert choose_cutoff(s, "0.25") == 0.25
    assert choose_cutoff(s, "quantile", quantile=0.9) == pytest.approx(0.9)
    assert choose_cutoff(s, "auto") == choose_cutoff(s, "gmm")  # no exemplars known
    assert choose_cutoff(s, "auto", anchor=0.8) == anchored_cutoff(s, 0.8)
    assert choose_cutoff(s, "gmm", anchor=0.8) == gmm_cutoff(s)
    assert [resolved_rule(r, a) for r, a in [("auto", 0.9), ("auto", None), ("gmm", 0.9),
                                             ("0.3", None), (0.3, None)]] == \
        ["anchored", "gmm", "gmm", "fixed", "fixed"]
    # too few candidates for three classes of 25: the BIC mixture decides
    few = s[::2]
    assert resolved_rule("auto", 0.8, len(few)) == "gmm" and resolved_rule("auto", 0.8, 75) == \
        "anchored"
    assert choose_cutoff(few, "auto", anchor=0.8) == gmm_cutoff(few)
    with pytest.raises(InputError, match="not one of auto, gmm, otsu2, density, quantile"):
        choose_cutoff(s, "median")


@pytest.fixture
def random_model(tmp_path):
    """A 'finetuned' micro model with a random bank: enough to exercise the machinery."""
    torch.manual_seed(0)
    model = build_mae("micro")
    save_checkpoint(tmp_path / "model" / "model.pt",
                    model_payload(model, "finetuned", Preprocess(box=24, img_size=32), {},
                                  bank=torch.randn(8, 64)))
    return tmp_path / "model"


def test_out_of_memory_halves_the_batch_and_retries(monkeypatch, random_model):
    calls = []

    def fake_pick(model, bank, image, pre, cfg, device, batch, student=None):
        calls.append(batch)
        if batch > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "picked"

    monkeypatch.setattr(pick_run, "pick_micrograph", fake_pick)
    result, batch = pick_run.pick_with_retry(None, None, None, None, PickConfig(), "cuda", 512)
    assert result == "picked" and batch == 64 and calls == [512, 256, 128, 64]


def test_micrographs_at_another_pixel_size_than_the_training_ones_are_flagged(tmp_path,
                                                                                caplog):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model" / "model.pt",
                    model_payload(build_mae("micro"), "finetuned", Preprocess(box=24, img_size=32),
                                  {}, bank=torch.randn(8, 64), pixel_size=2.0))
    rng = np.random.default_rng(0)
    same = [write_mrc(tmp_path / f"same{i}.mrc", rng.normal(size=(64, 64)), pixel_size=2.02)
            for i in range(2)]
    binned = [write_mrc(tmp_path / f"bin{i}.mrc", rng.normal(size=(64, 64)), pixel_size=4.0)
              for i in range(2)]
    cfg = PickConfig(model=str(tmp_path / "model"), device="cpu")
    with caplog.at_level("WARNING", logger="fewshotpicker"):
        pick_run.score_all(cfg, same)
    assert "pixel size" not in caplog.text  # within 2 %
    with caplog.at_level("WARNING", logger="fewshotpicker"):
        results = pick_run.score_all(cfg, binned)
    assert caplog.text.count("pixel size 4.000") == 1  # once, not for every micrograph
    assert f"{binned[0]}: pixel size 4.000 Å, but the model was trained on micrographs of " \
           f"2.000 Å, so a particle spans 12 px here, not the model's 24" in caplog.text
    assert all(isinstance(r, Candidates) for r in results.values())  # a warning, not a refusal


def test_a_given_pixel_size_rescales_the_models_box_when_the_models_is_known(tmp_path, caplog):
    from dataclasses import replace
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model" / "model.pt",
                    model_payload(build_mae("micro"), "finetuned", Preprocess(box=24, img_size=32),
                                  {}, bank=torch.randn(8, 64), pixel_size=None))
    mics = [write_mrc(tmp_path / "m.mrc", np.random.default_rng(0).normal(size=(96, 96)),
                      pixel_size=4.0)]
    cfg = PickConfig(model=str(tmp_path / "model"), device="cpu", pixel_size=4.0)

    def box(cfg):
        (cands,) = pick_run.score_all(cfg, mics).values()
        return cands.box

    with caplog.at_level("INFO", logger="fewshotpicker"):
        assert box(cfg) == 24  # the model records no pixel size: nothing to rescale against
        assert "records no pixel size (its training micrographs' headers stated none), so " \
               "--pixel-size 4.000 cannot rescale it" in caplog.text
        caplog.clear()
        assert box(replace(cfg, model_pixel_size=2.0)) == pytest.approx(12.0)
        assert "micrographs at 4.000 Å/px, the model trained at 2.000: picking at the model's " \
               "scale, a box of 12.0 px here (the model's 24)" in caplog.text
        assert "pixel size 4.000 Å, but" not in caplog.text  # given, so not warned about
        assert box(replace(cfg, model_pixel_size=3.95)) == 24  # within 2 %


def test_micrographs_with_unusually_many_or_few_picks_are_flagged(tmp_path):
    counts = np.array([100, 104, 98, 101, 97, 99, 300, 2, 103])
    np.testing.assert_array_equal(unusual_counts(counts), [6, 7])
    assert len(unusual_counts(counts[:4] * 0 + [0, 0, 0, 3])) == 0  # a spread of at least 1
    assert len(unusual_counts([100, 0, 100])) == 0                    # too few to tell
    summary = {f"/d/m{i}.mrc": {"picks": int(c), "cutoff": 0.9} for i, c in enumerate(counts)}
    assert summarise_counts(summary, tmp_path / "s.png") == ["/d/m6.mrc", "/d/m7.mrc"]
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failure_message_names_the_micrograph_once():
    path = Path("/data/mic_7.mrc")
    assert failure_message(path, RuntimeError("CUDA error: misaligned address\nmore")) \
        == "/data/mic_7.mrc: CUDA error: misaligned address"
    assert failure_message(path, ValueError(f"{path}: holds no data.")) == \
        "/data/mic_7.mrc: holds no data."
    assert failure_message(path, RuntimeError()) == "/data/mic_7.mrc: RuntimeError"


def test_a_bad_micrograph_is_reported_and_the_others_are_picked(random_model, tmp_path):
    rng = np.random.default_rng(1)
    good = [write_mrc(tmp_path / f"m{i}.mrc", rng.normal(size=(96, 120))) for i in range(2)]
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"\0" * 64)
    cfg = PickConfig(model=str(random_model), device="cpu")
    results = pick_run.score_all(cfg, [good[0], bad, good[1]])
    assert isinstance(results[str(bad)], str) and "broken.mrc" in results[str(bad)]
    assert all(isinstance(results[str(g)], Candidates) for g in good)
    summary = pick_run.write_pick_outputs(results, cfg, tmp_path / "out")
    assert list(summary["failed"]) == [str(bad)]
    small = write_mrc(tmp_path / "crop.mrc", rng.normal(size=(10, 120)))
    blank = write_mrc(tmp_path / "blank.mrc", np.zeros((96, 120)))
    more = pick_run.score_all(cfg, [small, blank])
    assert more[str(small)].startswith(f"{small}: the micrograph is 120 x 10 px, smaller than")
    assert more[str(blank)] == f"{blank}: every pixel holds the same value (0); a blank " \
                               f"exposure, not a micrograph."
    # when none can be picked the command fails, but its summary still names each one
    assert main(["pick", "--model", str(random_model), "--micrographs", str(small), str(blank),
                 "--out", str(tmp_path / "none"), "--device", "cpu"]) == 2
    summary = json.loads((tmp_path / "none" / "summary.json").read_text())
    assert summary["failed"] == more and summary["n_picks"] == 0
    # a batch of one fails with that micrograph's own sentence, said once
    assert str(none_picked({str(blank): more[str(blank)]})) == more[str(blank)]
    assert str(none_picked(more)).startswith("None of the 2 micrographs could be picked; the "
                                             f"first error was: {small}: the micrograph is")
    assert (tmp_path / "out" / "autopick.star").exists()
    record = json.loads((tmp_path / "out" / "thresholds" / "m0.json").read_text())
    # this model does not say how many exemplars its bank holds: the BIC mixture decides
    assert record["rule"] == "gmm" and record["exemplar_anchor"] is None


def test_the_background_writer_bounds_its_queue_and_stops_on_a_full_disk(caplog):
    release, started, written = threading.Event(), threading.Event(), []

    def write(name, res):
        started.set()
        if name == "slow":
            assert release.wait(10)
        if name == "full":
            raise OSError(28, "No space left on device", f"/out/{name}_autopick.star")
        if name == "unreadable":
            raise InputError(f"{name}.mrc: the file ends before its data.")
        written.append((name, threading.current_thread().name))
        return res
    with pick_run.BackgroundWriter(write, backlog=2) as writer:
        first = writer.submit("slow", 1)
        assert started.wait(10)
        second = writer.submit("next", 2)  # the queue holds two: the caller goes on
        waited = threading.Thread(target=writer.submit, args=("third", 3))
        waited.start()
        waited.join(0.3)
        assert waited.is_alive() and written == []  # the third waits for room
        with caplog.at_level(logging.INFO, logger=pick_run.log.name):
            writer.say_what_waits()  # the third is not queued yet
        assert "writing the files of the last 2 picked micrographs" in caplog.text
        release.set()
        waited.join(10)
    assert [n for n, _ in written] == ["slow", "next", "third"] and writer.pending == 0
    caplog.clear()
    writer.say_what_waits()
    assert "writing the files" not in caplog.text  # nothing waits: nothing said
    assert all(thread.startswith("writer") for _, thread in written)
    assert writer.outcome("slow", first) == 1 and writer.outcome("next", second) == 2
    assert writer.outcome("m.mrc", "m.mrc: blank") == "m.mrc: blank"
    with pick_run.BackgroundWriter(write) as writer:
        bad = writer.submit("unreadable", 0)
        assert writer.outcome("unreadable.mrc", bad) == \
            "unreadable.mrc: the file ends before its data."  # that micrograph alone fails
        full = writer.submit("full", 0)
        with pytest.raises(OSError, match="No space left"):
            writer.outcome("full.mrc", full)
        with pytest.raises(OSError) as raised:  # every later micrograph would fail alike
            writer.submit("after", 0)
        assert raised.value.filename == "/out/full_autopick.star"
    assert "after" not in [n for n, _ in written]


def test_devices_pick_on_while_a_micrograph_is_written(random_model, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    mics = [str(write_mrc(tmp_path / f"m{i}.mrc", rng.normal(size=(96, 120)))) for i in range(3)]
    picking, overlapped, real_pick = [], [], pick_run.pick_with_retry
    second_started = threading.Event()

    def pick(*args, **kwargs):
        picking.append(threading.current_thread().name)
        if len(picking) == 2:
            second_started.set()
        return real_pick(*args, **kwargs)
    real_write = pick_run.write_micrograph_files

    def write(name, *args, **kwargs):
        if name == mics[0]:  # the first micrograph's figures take until the next is picked
            overlapped.append(second_started.wait(10))
        return real_write(name, *args, **kwargs)
    monkeypatch.setattr(pick_run, "pick_with_retry", pick)
    monkeypatch.setattr(pick_run, "write_micrograph_files", write)
    assert main(["pick", "--model", str(random_model), "--micrographs", *mics, "--device", "cpu",
                 "--out", str(tmp_path / "out")]) == 0
    assert overlapped == [True] and len(picking) == 3
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["micrographs"]) == mics and not summary["failed"]
    assert sorted(p.name for p in (tmp_path / "out" / "thresholds").glob("*.json")) == \
        ["m0.json", "m1.json", "m2.json"]


def test_a_full_disk_stops_the_pick_with_one_sentence(random_model, tmp_path, monkeypatch,
                                                      capsys):
    rng = np.random.default_rng(4)
    mics = [str(write_mrc(tmp_path / f"m{i}.mrc", rng.normal(size=(96, 120)))) for i in range(2)]

    def full(table, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))
    monkeypatch.setattr(pick_run, "write_autopick_file", full)
    out = tmp_path / "out"
    assert main(["pick", "--model", str(random_model), "--micrographs", *mics, "--device", "cpu",
                 "--out", str(out)]) == 1
    assert f"error: {out / 'm0_autopick.star'}: No space left on device." in \
        capsys.readouterr().err
    assert not (out / "autopick.star").exists()


def test_an_interrupted_pick_keeps_what_it_finished_and_only_unfinished_picks_the_rest(
        random_model, tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    mics = [str(write_mrc(tmp_path / f"m{i}.mrc", rng.normal(size=(96, 120)))) for i in range(3)]
    common = ["pick", "--model", str(random_model), "--micrographs", *mics, "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "whole")]) == 0
    picked, real = [], pick_run.pick_with_retry

    def counting(*args, **kwargs):
        picked.append(1)
        if interrupt_at and len(picked) == interrupt_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(pick_run, "pick_with_retry", counting)
    out = tmp_path / "run"

    def table(folder, key):  # a STAR file without its time-stamped header comment
        text = (folder / f"{key}_autopick.star").read_text()
        return [line for line in text.splitlines() if not line.startswith("#")]
    interrupt_at = 3  # Ctrl-C during the third micrograph
    assert main(common + ["--out", str(out)]) == 130
    assert sorted(p.name for p in (out / "thresholds").glob("*.json")) == ["m0.json", "m1.json"]
    assert not (out / "autopick.star").exists()  # the index comes at the end
    assert table(out, "m0") == table(tmp_path / "whole", "m0")
    picked.clear()
    interrupt_at = 0
    assert main(common + ["--out", str(out), "--only-unfinished"]) == 0
    assert len(picked) == 1  # m2 alone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept_from_before"] == 2 and list(summary["micrographs"]) == mics
    assert [table(out, f"m{i}") for i in range(3)] == [table(tmp_path / "whole", f"m{i}")
                                                        for i in range(3)]
    whole = read_coordinates(tmp_path / "whole" / "autopick.star")
    again = read_coordinates(out / "autopick.star")
    assert len(whole) > 0 and again[["micrograph", "x", "y"]].equals(
        whole[["micrograph", "x", "y"]])
    # another setting, or the model file trained again, picks everything anew
    picked.clear()
    assert main(common + ["--out", str(out), "--only-unfinished", "--min-distance", "9"]) == 0
    assert len(picked) == 3
    picked.clear()
    model_file = random_model / "model.pt"
    stat = model_file.stat()
    os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    assert main(common + ["--out", str(out), "--only-unfinished", "--min-distance", "9"]) == 0
    assert len(picked) == 3
    assert main(common + ["--out", str(out), "--only-unfinished", "--threshold",
                          "quantile"]) == 2
    # once stopped (Ctrl-C in the main thread, or another device's error) a device's worker
    # picks nothing more
    stop, results = threading.Event(), {}
    stop.set()
    pick_run._worker(str(random_model), torch.device("cpu"), [Path(m) for m in mics],
                     PickConfig(model=str(random_model), device="cpu"), results, lambda: None,
                     stop=stop)
    assert results == {}


def test_micrographs_sharded_over_two_devices_get_the_picks_of_one(random_model, tmp_path):
    """``--device cpu,cpu``: two threads, each with its own model, pick alternate micrographs
    and write their files (and plots) as they finish; the picks are those of one device."""
    rng = np.random.default_rng(3)
    mics = [str(write_mrc(tmp_path / f"s{i}.mrc", rng.normal(size=(96, 120)))) for i in range(4)]
    common = ["pick", "--model", str(random_model), "--micrographs", *mics, "--plots"]
    assert main(common + ["--out", str(tmp_path / "one"), "--device", "cpu"]) == 0
    assert main(common + ["--out", str(tmp_path / "two"), "--device", "cpu,cpu"]) == 0
    one = read_coordinates(tmp_path / "one" / "autopick.star")
    two = read_coordinates(tmp_path / "two" / "autopick.star")
    assert len(one) > 0 and two[["micrograph", "x", "y"]].equals(one[["micrograph", "x", "y"]])
    assert list(json.loads((tmp_path / "two" / "summary.json").read_text())["micrographs"]) \
        == mics
    assert all((tmp_path / "two" / "thresholds" / f"s{i}_picks.png").stat().st_size > 1000
               for i in range(4))


def test_pick_drops_a_dark_crystal_and_records_the_contrast_limit(tmp_path):
    """A micrograph of noise with a dense dark disc: its peaks are dropped, the rest kept
    (without the check, a pick lands 12 px from the disc's centre)."""
    torch.manual_seed(0)
    pre = Preprocess(box=24, img_size=32)
    rng = np.random.default_rng(4)
    image = rng.normal(size=(160, 200)).astype(np.float32)
    yy, xx = np.mgrid[:160, :200]
    image[(xx - 100) ** 2 + (yy - 80) ** 2 < 10 ** 2] -= 30.0   # an ice crystal
    mic = write_mrc(tmp_path / "m.mrc", image)
    calm = prepare_micrograph(rng.normal(size=(160, 200)), pre)
    contrast = window_contrast_at(calm, torch.tensor([[60.0, 60.0], [120.0, 90.0]]), 32)
    save_checkpoint(tmp_path / "model" / "model.pt",
                    model_payload(build_mae("micro"), "finetuned", pre, {},
                                  bank=torch.randn(8, 64), exemplar_contrast=contrast))
    cfg = PickConfig(model=str(tmp_path / "model"), device="cpu", threshold="-2")
    results = pick_run.score_all(cfg, [mic])
    summary = pick_run.write_pick_outputs(results, cfg, tmp_path / "out")
    kept, _ = results[str(mic)].kept()
    assert len(kept) > 5 and np.hypot(*(kept - [100, 80]).T).min() > 20
    assert summary["micrographs"][str(mic)]["dropped_for_contrast"] >= 1
    record = json.loads((tmp_path / "out" / "thresholds" / "m.json").read_text())
    assert record["contrast_limit"] == pytest.approx(2.5 * float(contrast.median()), rel=1e-3)
    off = pick_run.score_all(PickConfig(**{**cfg.__dict__, "max_contrast": 0.0}), [mic])
    assert len(off[str(mic)].scores) > len(results[str(mic)].scores)


def test_candidates_table_holds_every_peak_and_picks_are_its_top(random_model, tmp_path):
    from fewshotpicker.io.coordinates import read_coordinates
    rng = np.random.default_rng(2)
    mics = [write_mrc(tmp_path / f"m{i}.mrc", rng.normal(size=(96, 120))) for i in range(2)]
    cfg = PickConfig(model=str(random_model), device="cpu", candidates=True, threshold="0.5")
    results = pick_run.score_all(cfg, mics)
    summary = pick_run.write_pick_outputs(results, cfg, tmp_path / "out")
    cands = read_coordinates(tmp_path / "out" / "candidates.star")
    picks = read_coordinates(tmp_path / "out" / "autopick.star")
    assert len(cands) == sum(len(r.scores) for r in results.values())
    assert len(picks) == int((cands["score"] > 0.5).sum()) < len(cands)
    assert summary["seconds_per_micrograph"] > 0
    assert summary["peak_gpu_memory_mb"] == {}  # CPU run


def test_pick_edge_windows_flag_reaches_the_config_and_the_edges(random_model, tmp_path):
    from fewshotpicker.io.coordinates import read_coordinates
    mic = write_mrc(tmp_path / "m.mrc", np.random.default_rng(3).normal(size=(96, 120)))
    near = {}
    for flag, out in (([], "inside"), (["--edge-windows"], "edges")):
        assert main(["pick", "--model", str(random_model), "--micrographs", str(mic), "--out",
                     str(tmp_path / out), "--device", "cpu", "--candidates", *flag]) == 0
        record = json.loads((tmp_path / out / "config.json").read_text())
        assert record["config"]["edge_windows"] is bool(flag)
        xy = read_coordinates(tmp_path / out / "candidates.star")[["x", "y"]].to_numpy()
        near[out] = np.minimum(xy.min(axis=1), (np.array([119, 95]) - xy).min(axis=1)).min()
    # box 24 px, 4.5 px between windows: windows wholly inside are centred 12 px in on the
    # left and top, 11 px on the bottom (the grid does not divide the height), and a peak
    # refines by at most half a stride; with edge windows candidates come to the edge itself
    assert near["inside"] >= 11 - 2.25 and near["edges"] < 4


def test_pick_records_the_fitted_cutoff_and_writes_surround_corrected_scores(random_model,
                                                                            tmp_path):
    from fewshotpicker.io.coordinates import read_coordinates
    mic = write_mrc(tmp_path / "m.mrc", np.random.default_rng(4).normal(size=(96, 120)))
    out = {}
    for weight in ("0", "0.5"):
        assert main(["pick", "--model", str(random_model), "--micrographs", str(mic), "--out",
                     str(tmp_path / weight), "--device", "cpu", "--candidates",
                     "--surround", weight, "--threshold", "gmm", "--max-overlap", "0"]) == 0
        record = json.loads((tmp_path / weight / "thresholds" / "m.json").read_text())
        out[weight] = (record, read_coordinates(tmp_path / weight / "candidates.star"))
    plain, corrected = out["0"], out["0.5"]
    assert plain[0]["surround"] == 0.0 and plain[0]["fitted_cutoff"] is None
    assert corrected[0]["surround"] == 0.5
    assert corrected[0]["fitted_cutoff"] == pytest.approx(plain[0]["cutoff"])
    # the same peaks, rescored; the fitted cutoff's number of picks is kept
    np.testing.assert_allclose(plain[1][["x", "y"]], corrected[1][["x", "y"]])
    assert not np.allclose(plain[1]["score"], corrected[1]["score"])
    assert corrected[0]["picks"] == plain[0]["picks"] > 0
    # the global quantile cuts the corrected scores after all micrographs, and says so
    assert main(["pick", "--model", str(random_model), "--micrographs", str(mic), "--out",
                 str(tmp_path / "q"), "--device", "cpu", "--threshold", "quantile"]) == 0
    assert json.loads((tmp_path / "q" / "thresholds" / "m.json").read_text())["surround"] == 0.5


def _picks_overlapping_a_higher_candidate(picks, cands, reach: float) -> int:
    """How many of ``picks`` have a higher-scoring row of ``cands`` closer than ``reach`` px."""
    p, c = picks[["x", "y"]].to_numpy(), cands[["x", "y"]].to_numpy()
    near = np.linalg.norm(p[:, None] - c[None], axis=2) < reach
    higher = cands["score"].to_numpy()[None] > picks["score"].to_numpy()[:, None]
    return int((near & higher).any(axis=1).sum())


def test_pick_raises_the_cutoff_over_overlapping_picks_and_records_it(random_model, tmp_path):
    from fewshotpicker.io.coordinates import read_coordinates
    # 128 x 160 px: 29 picks on noise, 12 of them beside a higher candidate, where 96 x 120
    # gave one machine 6 and 1 (the mixture cut on noise moves with the library versions)
    mic = write_mrc(tmp_path / "m.mrc", np.random.default_rng(4).normal(size=(128, 160)))
    runs = {}
    for share in ("0", "0.01"):
        assert main(["pick", "--model", str(random_model), "--micrographs", str(mic), "--out",
                     str(tmp_path / share), "--device", "cpu", "--candidates",
                     "--threshold", "gmm", "--max-overlap", share]) == 0
        runs[share] = [json.loads((tmp_path / share / "thresholds" / "m.json").read_text()),
                       read_coordinates(tmp_path / share / "m_autopick.star"),
                       read_coordinates(tmp_path / share / "candidates.star")]
    (off, off_picks, cands), (on, on_picks, _) = runs["0"], runs["0.01"]
    assert off["unchecked_cutoff"] is None and off["overlapping_picks"] == 0
    assert on["unchecked_cutoff"] == pytest.approx(off["cutoff"])
    # a random model's peaks on noise overlap (box 24 px: closer than 18 px) ...
    assert on["overlapping_picks"] == _picks_overlapping_a_higher_candidate(off_picks, cands,
                                                                            18.0) > 3
    # ... so the cut rises until one is left (1% of the picks, at least one)
    assert on["cutoff"] > on["unchecked_cutoff"] and 0 < len(on_picks) < len(off_picks)
    assert _picks_overlapping_a_higher_candidate(on_picks, cands, 18.0) == 1


def test_pick_crowded_records_the_valley_and_adds_only_what_it_says(random_model, tmp_path):
    mic = write_mrc(tmp_path / "m.mrc", np.random.default_rng(4).normal(size=(96, 120)))
    records = {}
    for flag in ([], ["--crowded"]):
        out = tmp_path / ("crowded" if flag else "plain")
        assert main(["pick", "--model", str(random_model), "--micrographs", str(mic), "--out",
                     str(out), "--device", "cpu", "--threshold", "gmm", *flag]) == 0
        records[bool(flag)] = json.loads((out / "thresholds" / "m.json").read_text())
    plain, crowded = records[False], records[True]
    assert "valley_picks" not in plain and crowded["valley_picks"] > 0
    assert crowded["picks"] == plain["picks"] + crowded["filled_to_valley"]
    if crowded["valley_picks"] <= plain["picks"]:       # the valley lies above the cut
        assert crowded["filled_to_valley"] == 0 and crowded["valley_overlap_share"] is None
    else:                                               # added only if they overlap little
        added = crowded["filled_to_valley"] > 0
        assert added == (crowded["valley_overlap_share"] <= 0.05)
        assert crowded["picks"] == (crowded["valley_picks"] if added else plain["picks"])


def test_bf16_scores_match_fp32_to_a_few_thousandths(random_model):
    from fewshotpicker.picking.scoring import Bank, score_micrograph
    from fewshotpicker.training.common import load_mae
    model, payload = load_mae(random_model, torch.device("cpu"), kinds=["finetuned"])
    pre, bank = Preprocess(**payload["preprocess"]), Bank.from_payload(payload, "cpu")
    image = np.random.default_rng(3).normal(size=(80, 90)).astype(np.float32)
    maps = {p: score_micrograph(model, bank, image, pre, 6, torch.device("cpu"), 64, p).scores
            for p in ("fp32", "bf16")}
    assert maps["fp32"].shape == maps["bf16"].shape
    assert np.abs(maps["fp32"] - maps["bf16"]).max() < 0.03
    assert np.corrcoef(maps["fp32"].ravel(), maps["bf16"].ravel())[0, 1] > 0.95


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False),
                                                      (True, False, True), (False, True, True)])
def test_auto_precision_uses_bf16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx,
                                                             native):
    from fewshotpicker import device as dev
    # oneDNN says yes on any AVX512 CPU, where bf16 is emulated and slower than fp32
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert dev.cpu_bf16_supported() is native
    ones = torch.ones(4, 4)
    with dev.precision_autocast(torch.device("cpu"), "auto"):
        assert ((ones @ ones).dtype == torch.bfloat16) is native
    with dev.precision_autocast(torch.device("cpu"), "bf16"):
        assert (ones @ ones).dtype == torch.bfloat16


class CentreModel(torch.nn.Module):
    """Embeds a window as (centre pixel - border mean, range): its cosine to the bank
    vector (1, 0) does not change with the per-window normalisation and is highest for
    the window centred on a bright blob."""

    def embed(self, x):
        x = x[:, 0].float()
        c = x[:, x.shape[-2] // 2, x.shape[-1] // 2]
        border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1).mean(1)
        spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
        return torch.stack([c - border, spread], dim=1)


def blob_image(centre, shape=(200, 220), sigma=6.0, noise=0.01, seed=0):
    """A bright Gaussian blob at ``centre`` (x, y) on weak noise, ``(h, w)`` float32."""
    y, x = np.indices(shape)
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma ** 2))
    return (blob + noise * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def test_coarse_to_fine_finds_a_peak_between_coarse_windows():
    # windows of 16 px every 2 px start at 0: window (i, j) is centred at (8 + 2j, 8 + 2i);
    # the blob sits on window (33, 47), an odd cell the coarse pass (every 2nd) skips
    pre = Preprocess(box=16, img_size=16, highpass=0.0, lowpass=0.0)
    prepared = prepare_micrograph(blob_image((8 + 2 * 47, 8 + 2 * 33)), pre)
    grid = window_grid(prepared, 16, 2)
    bank = Bank(torch.tensor([[1.0], [0.0]]), torch.zeros(2))
    full = score_grid(CentreModel(), grid, bank, batch=500, precision="fp32")
    fast, share = score_coarse_to_fine(CentreModel(), grid, bank, batch=500, factor=2,
                                       precision="fp32")
    assert np.unravel_index(int(full.argmax()), full.shape) == (33, 47)
    assert np.unravel_index(int(fast.argmax()), fast.shape) == (33, 47)
    assert float(fast.max()) == pytest.approx(float(full.max()), abs=1e-6)
    assert 0.25 < share < 0.8
    # every peak of the fast map is a scored window with its true score
    is_peak = fast == torch.nn.functional.max_pool2d(fast[None, None], 3, 1, 1)[0, 0]
    np.testing.assert_allclose(fast[is_peak].numpy(), full[is_peak].numpy(), atol=1e-6)


def test_edge_pad_keeps_the_grid_and_reaches_within_a_step_of_the_edge():
    assert edge_pad((200, 220), 16, 2) == 8          # half a window: first centre at 0
    assert edge_pad((200, 220), 64, 13) == 26        # 2 steps: first centre 6 px in
    assert edge_pad((200, 220), 15, 4) == 4          # int(15 // 2) = 7 -> one step
    assert edge_pad((10, 300), 16, 2) == 8 and edge_pad((5, 300), 16, 2) == 4   # reflection's
    assert edge_pad((200, 220), 16, 20) == 0         # limit; a step above half a window


def test_edge_windows_find_a_particle_whose_box_crosses_the_edge():
    # a blob 4 px from the left edge: windows of 16 px wholly inside are centred 8 px in at
    # the nearest, so only the extended grid has a window on it
    pre = Preprocess(box=16, img_size=16, highpass=0.0, lowpass=0.0)
    image = blob_image((4, 101), sigma=3.0)
    prepared = prepare_micrograph(image, pre)
    bank = Bank(torch.tensor([[1.0], [0.0]]), torch.zeros(2))
    inside = score_prepared(CentreModel(), bank, prepared, pre, 2.0, 500, "fp32")
    edge = score_prepared(CentreModel(), bank, prepared, pre, 2.0, 500, "fp32", edges=True)
    assert inside.offset == 8.0 and edge.offset == 0.0
    assert edge.scores.shape == (inside.scores.shape[0] + 8, inside.scores.shape[1] + 8)
    # the windows inside lie and score as before
    np.testing.assert_allclose(edge.scores[4:-4, 4:-4], inside.scores, atol=1e-6)
    cfg = PickConfig(model="x", max_contrast=0.0)
    found = find_candidates(edge, image.shape, pre.box, cfg)
    missed = find_candidates(inside, image.shape, pre.box, cfg)
    best = found.xy[np.argmax(found.scores)]         # the blob is the best candidate
    assert np.hypot(*(best - (4, 101))) <= 1.0
    near = np.hypot(*(missed.xy - (4, 101)).T) < 8.0
    assert missed.scores[near].max(initial=-1.0) < found.scores.max() - 0.1


def test_unscored_windows_are_the_coarse_map_interpolated():
    scores = torch.zeros(5, 6)
    scored = torch.zeros(5, 6, dtype=torch.bool)
    scored[::2, ::2] = True
    scored[2, 3] = True                      # a refined window
    coarse = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.0]])
    scores[::2, ::2] = coarse
    scores[2, 3] = 0.7
    filled = fill_unscored(scores, scored, coarse, 2)
    assert filled[0, 1] == pytest.approx(0.5) and filled[1, 2] == pytest.approx(0.6)
    assert filled[0, 5] == pytest.approx(0.0)   # past the last coarse column: replicated
    assert torch.equal(filled[scored], scores[scored])
    assert float(filled.max()) == 1.0 and int(filled.argmax()) == 2


def test_refinement_seeds_are_coarse_maxima_and_the_highest_scores():
    coarse = torch.linspace(0.0, 0.5, 100).reshape(10, 10)   # rises to the last corner
    coarse[2, 2] = 0.45                                       # an isolated local maximum
    seeds = refine_seeds(coarse, top=0.1)
    assert seeds[2, 2] and seeds[9, 9]                        # both maxima
    assert seeds[9, 0] and not seeds[8, 9]                    # the top 10% is the last row
    assert not seeds[5, 5] and int(seeds.sum()) == 11


def test_fast_setting_picks_what_the_full_map_picks(random_model, tmp_path):
    payload = torch.load(random_model / "model.pt", weights_only=False)
    model = build_mae("micro")
    model.load_state_dict(payload["state_dict"])
    bank = Bank.from_payload(payload, torch.device("cpu"))
    pre = Preprocess(**payload["preprocess"])
    image = np.random.default_rng(1).normal(size=(160, 200)).astype(np.float32)
    full = score_micrograph(model, bank, image, pre, 6.0, torch.device("cpu"), 256, "fp32")
    fast = score_micrograph(model, bank, image, pre, 6.0, torch.device("cpu"), 256, "fp32",
                            coarse=2)
    assert full.scored == 1.0 and fast.scored < 0.8
    a = find_candidates(full, image.shape, 24.0, PickConfig())
    b = find_candidates(fast, image.shape, 24.0, PickConfig())
    # the strongest peaks agree in place and score
    np.testing.assert_allclose(b.xy[:3], a.xy[:3], atol=1e-6)
    np.testing.assert_allclose(b.scores[:3], a.scores[:3], atol=1e-5)


def test_window_batch_defaults_to_the_device_and_keeps_a_given_size():
    assert pick_run.window_batch(0, torch.device("cpu")) == pick_run.CPU_BATCH == 128
    assert pick_run.window_batch(0, torch.device("cuda", 1)) == pick_run.GPU_BATCH == 1024
    assert pick_run.window_batch(300, torch.device("cpu")) == 300


def test_pick_speed_counts_the_windows_each_setting_scores():
    from fewshotpicker.benchmarks.pick_speed import time_picking
    full = time_picking("micro", (120, 150), box=24.0, device="cpu", repeats=1)
    fast = time_picking("micro", (120, 150), box=24.0, device="cpu", repeats=1, coarse=2)
    # micro input 32 px for a 24 px box: 160 x 200 px prepared; stride 4.8 px -> step 6;
    # windows (160 - 32) / 6 + 1 = 22 by (200 - 32) / 6 + 1 = 29
    assert full["windows"] == 22 * 29 and full["coarse"] == 1 and full["batch"] == 128
    assert fast["coarse"] == 2 and 11 * 15 <= fast["windows"] < full["windows"]
    assert full["s_per_mic"] > 0 and full["windows_per_s"] > 0
    assert full["encoder_tflops"] > 0 and full["compile_s"] is None
    cascade = time_picking("micro", (120, 150), box=24.0, device="cpu", repeats=1, student=0.4)
    # the encoder re-scores the best 40% of the random student's peaks, nothing else
    assert cascade["student"] == 0.4 and cascade["candidates"] > 0
    n = cascade["candidates"]
    first, step = int(np.ceil(0.4 * n)), int(np.ceil(0.1 * n))
    assert cascade["windows"] == n or (cascade["windows"] - first) % step == 0
    assert first <= cascade["windows"] <= n
    checked = time_picking("micro", (120, 150), box=24.0, device="cpu", repeats=1,
                           student_check=True)
    # every window, then the cascade re-scores at least 40% of its peaks for the cutoff check
    assert checked["student_check"] and full["student_check"] is False
    assert checked["windows"] > full["windows"]
    small = time_picking("micro", (120, 150), box=24.0, device="cpu", repeats=1, input_size=16)
    # a 16 px input: 80 x 100 px prepared, step round(4.8 * 16 / 24) = 3 -> 22 by 29 windows
    assert small["input"] == 16 and full["input"] == 32 and small["windows"] == 22 * 29


def test_pick_speed_times_a_micrograph_with_a_film_edge_on_request(monkeypatch):
    from fewshotpicker.benchmarks import pick_speed
    from fewshotpicker.data import regions
    cuts, real = [], regions.region_background

    def counting(img, found, *args):
        cuts.append(found.n)
        return real(img, found, *args)
    monkeypatch.setattr(regions, "region_background", counting)
    plain = pick_speed.time_picking("micro", (150, 180), box=24.0, device="cpu", repeats=1)
    assert cuts == [] and plain["film_edge"] is False
    edged = pick_speed.time_picking("micro", (150, 180), box=24.0, device="cpu", repeats=2,
                                    film_edge=True)
    assert cuts == [2, 2, 2] and edged["film_edge"] is True  # warm-up and two timed runs
    assert edged["windows"] == plain["windows"]
    image = pick_speed.noise_micrograph((150, 180), film_edge=True)
    assert image[0, 0] < -1.5 > image[:20, :20].mean() and image[-20:, -20:].mean() > -0.5


def test_command_speed_model_picks_and_the_per_micrograph_cost_is_the_difference(tmp_path):
    from fewshotpicker.benchmarks import command_speed as cs
    model = cs.random_picking_model(tmp_path / "model", "micro", box=24.0)
    mics = cs.noise_micrographs(tmp_path / "mics", 2, (96, 128))
    assert [read_image(m).data.shape for m in mics] == [(96, 128)] * 2
    assert main(["pick", "--model", str(model), "--micrographs", *map(str, mics), "--out",
                 str(tmp_path / "picks"), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "picks" / "summary.json").read_text())
    assert len(summary["micrographs"]) == 2 and summary["failed"] == {}
    assert summary["unusual"] == [] and (tmp_path / "picks" / "summary.png").stat().st_size > 5000
    # --compile is for GPU scoring: on the CPU it is recorded and the picks do not change
    assert main(["pick", "--model", str(model), "--micrographs", *map(str, mics), "--out",
                 str(tmp_path / "compiled"), "--device", "cpu", "--compile"]) == 0
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["config"][
        "compile"] is True
    def table(folder):  # the STAR text without its time-stamped header comment
        text = (tmp_path / folder / "noise_000_autopick.star").read_text()
        return [line for line in text.splitlines() if not line.startswith("#")]
    assert len(table("picks")) > 10 and table("compiled") == table("picks")
    # the model holds a student: every window, then its cascade re-scores some peaks to check
    # the automatic cutoff; --no-student-check scores every window once and no more
    checked = json.loads((tmp_path / "picks" / "thresholds" / "noise_000.json").read_text())
    assert checked["windows_scored"] > 1.0 and checked["encoder_cutoff"] is not None
    assert main(["pick", "--model", str(model), "--micrographs", *map(str, mics), "--out",
                 str(tmp_path / "unchecked"), "--device", "cpu", "--no-student-check"]) == 0
    alone = json.loads((tmp_path / "unchecked" / "thresholds" / "noise_000.json").read_text())
    assert alone["windows_scored"] == 1.0 and alone["encoder_cutoff"] is None
    assert alone["student_cutoff"] is None and alone["candidates"] == checked["candidates"]
    assert json.loads((tmp_path / "unchecked" / "config.json").read_text())["config"][
        "student_check"] is False
    assert main(["pick", "--model", str(model), "--micrographs", *map(str, mics), "--out",
                 str(tmp_path / "cascade"), "--device", "cpu", "--student", "0.4"]) == 0
    record = json.loads((tmp_path / "cascade" / "thresholds" / "noise_000.json").read_text())
    assert 0 < record["windows_scored"] < 0.5 and record["candidates"] > 0
    # the exemplars' anchor is known, but too few candidates for three classes of 25
    assert -1.0 <= record["exemplar_anchor"] <= 1.0
    assert record["rule"] == ("anchored" if record["candidates"] >= 75 else "gmm")
    # 10 s for one micrograph, 16 s for four: 2 s per further micrograph
    assert cs.per_further(10.0, 16.0, 4) == 2.0
    assert np.isnan(cs.per_further(10.0, 10.0, 1))


def test_command_speed_refuses_a_real_folder_without_micrographs(tmp_path, capsys):
    code = main(["benchmark", "pick-speed", "--model", "micro", "--size", "64x64", "--box",
                 "20", "--device", "cpu", "--repeats", "1", "--topaz-env", str(tmp_path / "tz"),
                 "--real", str(tmp_path), "--work", str(tmp_path / "w")])
    assert code == 2
    assert "mics_test: holds no .mrc micrographs to time" in capsys.readouterr().err
    assert not (tmp_path / "tz").exists()  # refused before installing Topaz


def test_benchmark_folders_are_named_after_the_data_set_and_model_not_position():
    # a run with --sets 1 once reused the models of set 0 (folders were numbered by position)
    from pathlib import Path
    from fewshotpicker.benchmarks.features import Dataset
    from fewshotpicker.benchmarks.picking import SIM_SETS, run_folder
    names = list(SIM_SETS) + ["EMPIAR-10028 (real)"]
    folders = [run_folder(Path("w"), Dataset(n, [], [], None, None, 1.0), "runs") for n in names]
    assert len(set(folders)) == len(names)
    assert folders[0] == Path("w/runs_sim_default")
    assert folders[-1] == Path("w/runs_EMPIAR-10028")
    # another model size never meets the tiny model's fine-tuned checkpoints
    real = Dataset(names[-1], [], [], None, None, 1.0)
    assert run_folder(Path("w"), real, "runs", "base") == Path("w/runs_base_EMPIAR-10028")
    # nor another exemplar count the standard 15's (whose folders earlier runs made)
    from fewshotpicker.benchmarks.picking import BenchSettings, seed_folder
    assert seed_folder(Path("r"), 2, BenchSettings()) == Path("r/seed2")
    assert seed_folder(Path("r"), 2, BenchSettings(exemplars=5)) == Path("r/seed2_5ex")


def test_benchmark_summary_gives_mean_spread_device_and_windows_scored():
    from fewshotpicker.benchmarks.picking import summarise
    rows = [dict(dataset="sim", picker="fast", seed=s, exemplars=5, precision=0.8, recall=0.9,
                 f1=f1,
                 best_f1=0.9, ap=0.85, s_per_mic=2.0 + s, peak_rss_mb=100.0 + s, gpu_mb=None,
                 windows_scored=0.4 + 0.1 * s, device="cpu") for s, f1 in ((0, 0.8), (1, 0.9))]
    (row,) = summarise(rows)
    assert row["seeds"] == 2 and row["device"] == "cpu" and row["exemplars"] == 5
    assert row["f1"] == pytest.approx(0.85) and row["f1_std"] == pytest.approx(0.05)
    assert row["s_per_mic"] == pytest.approx(2.5) and row["peak_mb"] == 101.0
    assert row["windows_scored"] == pytest.approx(0.45)


def test_topaz_runs_of_one_draw_are_averaged_and_their_f1_kept():
    from fewshotpicker.benchmarks.picking import mean_of_runs
    runs = [dict(precision=p, recall=0.9, f1=f, best_f1=0.9, ap=a, s_per_mic=s, gpu_mb=None,
                 windows_scored=None, device="cpu", train_seconds=10.0)
            for p, f, a, s in ((0.5, 0.64, 0.92, 1.0), (0.8, 0.85, 0.93, 3.0))]
    row = mean_of_runs(runs)
    assert row["precision"] == pytest.approx(0.65) and row["f1"] == pytest.approx(0.745)
    assert row["ap"] == pytest.approx(0.925) and row["s_per_mic"] == pytest.approx(2.0)
    assert row["gpu_mb"] is None and row["device"] == "cpu" and row["f1_runs"] == [0.64, 0.85]
    assert mean_of_runs(runs[:1]) == runs[0]             # one run: its own row, unchanged


def test_the_benchmark_picks_the_crowded_set_once_more_with_crowded(monkeypatch, tmp_path):
    from fewshotpicker.benchmarks import picking as bench
    assert bench.CROWDED_SETS == {"sim crowded (SNR 0.05)"}
    commands = []

    def stop(command, log):
        commands.append(command)
        raise StopIteration
    monkeypatch.setattr(bench, "run_measured", stop)
    ds = bench.Dataset("d", [], [tmp_path / "m.mrc"], None, None, 40.0)
    for crowded in (False, True):
        with pytest.raises(StopIteration):
            bench.pick_fewshot(tmp_path / "model", ds, tmp_path / "out", "cpu", crowded=crowded)
    assert "--crowded" not in commands[0] and commands[1][-1] == "--crowded"
    assert commands[1][:-1] == commands[0]


def test_benchmark_refuses_fewer_than_one_topaz_run(capsys):
    from fewshotpicker.cli.main import main
    code = main(["benchmark", "picking", "--sets", "0", "--topaz-runs", "0", "--work", "w"])
    assert code == 2
    assert capsys.readouterr().err.strip().endswith("--topaz-runs 0: must be 1 or more.")
    code = main(["benchmark", "pruning", "--topaz-runs", "3", "--work", "w"])
    assert code == 2 and "pruning benchmark prunes one Topaz run" in capsys.readouterr().err
    code = main(["benchmark", "picking", "--exemplars", "0", "--work", "w"])
    assert code == 2 and capsys.readouterr().err.strip().endswith(
        "--exemplars 0: must be 1 or more.")
    code = main(["benchmark", "picking", "--small-input", "-8", "--work", "w"])
    assert code == 2 and "--small-input -8: must be 0 (none)" in capsys.readouterr().err


def test_score_map_centres_are_the_windows_grid_to_micrograph_places():
    smap = ScoreMap(np.zeros((3, 4)), step=6, offset=16.0, scale=0.5)
    ii, jj = np.indices((3, 4))
    expected = smap.grid_to_micrograph(np.stack([jj.ravel(), ii.ravel()], 1)) * smap.scale
    np.testing.assert_allclose(smap.centres().numpy(), expected)
    assert smap.centres()[5].tolist() == [22.0, 22.0]      # row 1, column 1


def test_the_next_micrograph_is_read_while_the_current_is_picked():
    started, finished = {}, {}

    def read(path):
        started[path] = time.perf_counter()
        if path == "bad":
            raise InputError("bad: not an MRC file.")
        return path.upper()

    got = []
    for path, reading in pick_run.read_ahead(["a", "bad", "c"], read):
        try:
            got.append(reading.result())
        except InputError as exc:
            got.append(str(exc))
        time.sleep(0.05)   # picking
        finished[path] = time.perf_counter()
    assert got == ["A", "bad: not an MRC file.", "C"]
    assert started["bad"] < finished["a"] and started["c"] < finished["bad"]
    assert list(pick_run.read_ahead([], read)) == []


def test_benchmark_exemplars_are_a_seeded_draw_inside_the_exemplar_micrograph(caplog):
    import pandas as pd
    from fewshotpicker.benchmarks.features import Dataset
    from fewshotpicker.benchmarks.picking import draw_exemplars
    truth = pd.DataFrame({"micrograph": ["a.mrc"] * 12 + ["b.mrc"] * 3,
                          "x": [5.0, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 60, 70, 80],
                          "y": [50.0] * 15})
    ds = Dataset("d", [Path("/data/a.mrc")], [Path("/data/b.mrc")], truth, truth.iloc[:0], 20.0)
    five = draw_exemplars(ds, 5, seed=1)
    assert len(five) == 5 and five["x"].min() > 10.0  # never the particle cut by the edge
    assert set(five["micrograph"]) == {"/data/a.mrc"}
    assert five.equals(draw_exemplars(ds, 5, seed=1))
    assert not five.equals(draw_exemplars(ds, 5, seed=2))
    with caplog.at_level(logging.WARNING, logger="fewshotpicker"):
        every = draw_exemplars(ds, 30, seed=0)
    assert sorted(every["x"]) == [50.0 + 10 * i for i in range(11)]
    assert "30 exemplars asked for, 11 particles to draw from" in caplog.text

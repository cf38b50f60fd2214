"""Evaluation against hand-computed cases: IoU, duplicates, borders, empties, AP, ROC, F-beta."""
import json

import numpy as np
import pandas as pd
import pytest

from fewshotpicker.errors import InputError
from fewshotpicker.evaluate import evaluate_all, evaluate_convention, format_table, save_report
from fewshotpicker.evaluate.matching import box_iou, match_greedy, match_maximum
from fewshotpicker.evaluate.metrics import auroc, average_precision, fbeta, ranking_curve
from fewshotpicker.io.coordinates import make_coordinates


def coords(xy, scores=None, mic="m1", klass=None):
    return make_coordinates(mic, np.array(xy, dtype=float).reshape(-1, len(xy[0]) if xy else 2),
                            scores, klass)


def test_box_iou_hand_values():
    a = np.array([[0.0, 0.0]])
    b = np.array([[5.0, 0.0], [10.0, 0.0], [3.0, 4.0]])
    # shift 5 of a 10 box: inter 50, union 150; shift 10: no overlap; (3,4): 7*6=42/(200-42)
    np.testing.assert_allclose(box_iou(a, b, 10.0), [[1 / 3, 0.0, 42 / 158]])


def test_iou_half_allows_a_third_of_the_box():
    truth = np.array([[0.0, 0.0]])
    inside = np.array([[10 / 3 - 0.01, 0.0]])
    outside = np.array([[10 / 3 + 0.01, 0.0]])
    assert match_maximum(inside, truth, "iou", 10.0, 0.5)[0] == 0
    assert match_maximum(outside, truth, "iou", 10.0, 0.5)[0] == -1


def test_duplicates_count_as_false_positives():
    rep = evaluate_convention("cryomae", coords([[100, 100], [101, 100], [300, 300]]),
                              coords([[100, 100], [300, 302]]), box=20)["pooled"]
    assert (rep["tp"], rep["fp"], rep["fn"]) == (2, 1, 0)
    assert rep["precision"] == pytest.approx(2 / 3) and rep["recall"] == 1.0
    assert rep["f1"] == pytest.approx(0.8)


def test_boxes_crossing_the_border_are_not_clipped():
    # truth at x=2 (its box leaves the image), pick at x=4: IoU (10-2)*10/(200-80) = 2/3
    rep = evaluate_convention("cryomae", coords([[4, 50]]), coords([[2, 50]]), box=10)["pooled"]
    assert rep["tp"] == 1


def test_maximum_matching_beats_greedy_order():
    truth = np.array([[0.0, 0.0], [8.0, 0.0]])
    # the first pick reaches both (nearer T0), the second only T0
    picks = np.array([[3.5, 0.0], [-3.0, 0.0]])
    best = match_maximum(picks, truth, "distance", 10, 5.0)
    assert best.tolist() == [1, 0]
    greedy = match_greedy(picks, np.array([0.9, 0.8]), truth, "distance", 10, 5.0)
    assert greedy.tolist() == [0, -1]


def test_greedy_gives_the_particle_to_the_most_confident_duplicate():
    truth = np.array([[0.0, 0.0]])
    picks = np.array([[1.0, 0.0], [0.0, 0.0]])
    out = match_greedy(picks, np.array([0.9, 0.5]), truth, "iou", 10, 0.6)
    assert out.tolist() == [0, -1]


def test_empty_picks_empty_truth_and_both():
    none = coords([])
    rep = evaluate_convention("cryomae", none, coords([[5, 5]]), box=10)["pooled"]
    assert rep["precision"] is None and rep["recall"] == 0.0 and rep["f1"] is None
    rep = evaluate_convention("cryomae", coords([[5, 5]]), none, box=10,
                              micrographs=["m1"])["pooled"]
    assert rep["precision"] == 0.0 and rep["recall"] is None and rep["fp"] == 1
    rep = evaluate_convention("hydrapicker", none, none, box=10, micrographs=["m1"])["pooled"]
    assert rep["tp"] == 0 and rep["precision"] is None and rep["ap"] is None


def test_average_precision_and_auroc_hand_case():
    curve = ranking_curve(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2)
    np.testing.assert_allclose(curve["precision"], [1, 0.5, 2 / 3])
    np.testing.assert_allclose(curve["recall"], [0.5, 0.5, 1.0])
    assert average_precision(curve, 2) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # ROC points (0,0) (0,.5) (1,.5) (1,1): area 0.5
    assert auroc(curve, 2) == pytest.approx(0.5)


def test_perfect_ranking_has_unit_ap_and_auroc():
    truth = coords([[10, 10], [50, 50]])
    picks = coords([[10, 10], [50, 50], [90, 90]], [0.9, 0.8, 0.1])
    rep = evaluate_convention("hydrapicker", picks, truth, box=10)["pooled"]
    assert rep["ap"] == pytest.approx(1.0) and rep["auroc"] == pytest.approx(1.0)


def test_topaz_radius_is_inclusive():
    rep = evaluate_convention("topaz", coords([[10, 0]]), coords([[0, 0]]), box=20)["pooled"]
    assert rep["tp"] == 1
    rep = evaluate_convention("topaz", coords([[10.5, 0]]), coords([[0, 0]]), box=20)["pooled"]
    assert rep["tp"] == 0


def test_czii_fbeta4_per_class_and_class_aware():
    assert fbeta(0.25, 1.0, 4.0) == pytest.approx(17 * 0.25 / (16 * 0.25 + 1))
    truth = coords([[0, 0, 0], [100, 0, 0]], klass=[1, 2])
    # class-1 pick on the class-1 particle (within 0.5 x radius 10 = 5), a class-1 pick on the
    # class-2 particle (wrong class: false positive), and a far class-2 pick
    picks = coords([[3, 0, 0], [100, 0, 0], [50, 50, 50]], klass=[1, 1, 2])
    rep = evaluate_convention("czii", picks, truth, box=20)
    assert rep["per_class"]["1"]["tp"] == 1 and rep["per_class"]["1"]["fp"] == 1
    assert rep["per_class"]["2"]["tp"] == 0 and rep["per_class"]["2"]["fn"] == 1
    pooled = rep["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (1, 2, 1)
    assert pooled["f4"] == pytest.approx(fbeta(1 / 3, 1 / 2, 4.0))
    with pytest.raises(InputError, match="needs 3D coordinates"):
        evaluate_convention("czii", coords([[1, 1]]), coords([[1, 1]]), box=10)


def test_pooled_counts_sum_over_micrographs_and_unknown_names_refused():
    truth = pd.concat([coords([[10, 10]], mic="a.mrc"), coords([[10, 10], [60, 60]],
                                                               mic="b.mrc")])
    picks = pd.concat([coords([[10, 10]], mic="x/a.mrc"), coords([[60, 61]], mic="b")])
    rep = evaluate_convention("cryomae", picks, truth, box=20)
    assert rep["pooled"]["tp"] == 2 and rep["pooled"]["fn"] == 1
    assert rep["per_micrograph"]["b"]["recall"] == 0.5
    with pytest.raises(InputError, match=r"match no micrograph of the ground truth \(c\)"):
        evaluate_convention("cryomae", coords([[1, 1]], mic="c.mrc"), truth, box=20)


def test_report_table_and_files(tmp_path):
    truth = coords([[10, 10], [60, 60]])
    picks = coords([[10, 10], [90, 90]], [0.9, 0.2])
    report = evaluate_all(picks, truth, box=20)
    table = format_table(report, per_micrograph=True)
    assert table.splitlines()[0].split()[:5] == ["convention", "micrograph", "precision",
                                                  "recall", "f1"]
    assert "cryomae" in table and "-" in table  # AP is undefined for cryomae
    paths = save_report(report, tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["conventions"]["cryomae"]["pooled"]["f1"] == pytest.approx(0.5)
    assert (tmp_path / "precision_recall.png").stat().st_size > 5000
    assert set(paths) == {"json", "plot"}


def test_named_micrographs_are_evaluated_exactly():
    truth = pd.concat([coords([[10, 10]], mic="a.mrc"), coords([[10, 10], [60, 60]],
                                                               mic="b.mrc")])
    picks = pd.concat([coords([[10, 10]], mic="a.mrc"), coords([[60, 61]], mic="b.mrc")])
    report = evaluate_all(picks, truth, box=20, conventions=("cryomae",),
                          micrographs=["x/a.mrc", "c.mrc"])
    pooled = report["conventions"]["cryomae"]["pooled"]
    # b's two particles and its pick are left out; c has neither and still counts
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (1, 0, 0)
    assert report["left_out"] == {"picks": 1, "truth": 2}
    assert sorted(report["conventions"]["cryomae"]["per_micrograph"]) == ["a", "c"]
    with pytest.raises(InputError, match=r"\(d\)"):
        evaluate_all(coords([[1, 1]], mic="d.mrc"), truth, box=20, micrographs=["a.mrc"])

"""The dense student: geometry helpers, distillation on a known teacher, the cascade."""
import numpy as np
import pytest
import torch

from fewshotpicker.data.regions import Preprocess, crop_windows, prepare_micrograph
from fewshotpicker.errors import InputError
from fewshotpicker.models.student import ScoreStudent, pad_to_stride, sample_at
from fewshotpicker.picking.cascade import load_student, pick_with_student, rescore_best
from fewshotpicker.picking.scoring import Bank, score_windows
from fewshotpicker.tests.test_picking import CentreModel
from fewshotpicker.training.distil import teacher_targets, train_student, turn

PRE = Preprocess(box=16, img_size=16, highpass=0.0, lowpass=0.0)
BANK = Bank(torch.tensor([[1.0], [0.0]]), torch.zeros(2))


def blobs(centres, shape=(160, 176), sigma=3.0, seed=0):
    """Bright Gaussian blobs at ``centres`` (x, y) on weak noise, ``(h, w)`` float32."""
    y, x = np.indices(shape)
    img = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2)) for cx, cy in centres)
    return (img + 0.01 * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


@pytest.mark.parametrize("quarters", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_turning_moves_the_positions_with_the_image(quarters, flip):
    image = torch.zeros(1, 1, 24, 40)
    xy = torch.tensor([[5.0, 3.0], [30.0, 17.0]])
    for x, y in xy.long().tolist():
        image[0, 0, y, x] = 1.0
    turned, moved = turn(image, xy, quarters, flip)
    bright = {(int(x), int(y)) for y, x in zip(*np.nonzero(turned[0, 0].numpy()))}
    assert bright == {(int(x), int(y)) for x, y in moved.tolist()}


def test_sample_at_reads_the_cell_under_each_position():
    out = torch.arange(12.0).reshape(1, 1, 3, 4)          # cells of 8 x 8 prepared px
    xy = torch.tensor([[3.5, 3.5], [27.5, 19.5], [11.5, 11.5]])   # cell centres
    np.testing.assert_allclose(sample_at(out, xy, (24, 32)).numpy(), [0.0, 11.0, 5.0], atol=1e-5)
    assert pad_to_stride(torch.zeros(21, 30)).shape == (1, 1, 24, 32)


FIRST_BLOBS = [(40, 40), (120, 60), (70, 120)]


def assert_highest_at(net: ScoreStudent, target: tuple, centres: list) -> np.ndarray:
    """The student's predictions at the window centres of ``target`` (a teacher map) within
    1.5 px of ``centres`` all exceed the 99th percentile of the others; returns that mask."""
    image, xy, _ = target
    with torch.no_grad():
        pred = sample_at(net(image), xy, image.shape[-2:]).numpy()
    at_blob = np.linalg.norm(xy.numpy()[:, None] - np.array(centres),
                             axis=-1).min(axis=1) <= 1.5
    assert pred[at_blob].min() > np.quantile(pred[~at_blob], 0.99)
    return at_blob


@pytest.fixture(scope="module")
def student():
    """A student distilled from the blob-centre teacher on two training images."""
    images = [blobs(FIRST_BLOBS, seed=1),
              blobs([(30, 110), (100, 30), (140, 130), (90, 80)], seed=2)]
    targets = teacher_targets(CentreModel(), BANK, images, PRE, 2.0, torch.device("cpu"), 4096)
    net, loss = train_student(targets, steps=150, seed=0, device=torch.device("cpu"), width=16)
    return net, loss, targets


def test_the_student_learns_the_teachers_map(student):
    # away from the blobs the teacher's cosines are noise (each window is normalised), so
    # the student is judged where the map matters: its highest values are the blob centres
    net, loss, targets = student
    at_blob = assert_highest_at(net, targets[0], FIRST_BLOBS)
    assert targets[0][2].numpy()[at_blob].min() > 0.5   # the teacher's peaks, for reference


def test_a_student_trained_in_bf16_keeps_its_last_layer_and_output_in_fp32():
    """The trunk runs in bf16 under autocast, the last 1 x 1 convolution in fp32; trained so,
    it still learns where the teacher's peaks are."""
    images = [blobs(FIRST_BLOBS, seed=1)]
    targets = teacher_targets(CentreModel(), BANK, images, PRE, 2.0, torch.device("cpu"), 4096)
    seen = {}
    net = ScoreStudent(8)
    net.net[-2].register_forward_hook(lambda m, i, o: seen.update(trunk=o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(targets[0][0])
    assert seen["trunk"] == torch.bfloat16 and out.dtype == torch.float32
    net, loss = train_student(targets, steps=150, seed=0, device=torch.device("cpu"), width=16,
                              precision="bf16")
    assert_highest_at(net, targets[0], FIRST_BLOBS)
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_the_cascade_finds_new_blobs_and_rescores_them_with_the_encoder(student):
    from fewshotpicker.config import PickConfig
    from fewshotpicker.picking.picker import find_candidates
    truth = np.array([(50.0, 100.0), (130.0, 45.0), (120.0, 120.0)])
    image = blobs(truth, seed=3)
    prepared = prepare_micrograph(image, PRE, torch.device("cpu"))
    cands = pick_with_student(CentreModel(), student[0], BANK, prepared, PRE, 2.0, 0.3, 256,
                              lambda m: find_candidates(m, image.shape, PRE.box,
                                                        PickConfig(model="x")))
    # each blob: a candidate within a quarter box (IoU 0.5 allows a third), carrying the
    # encoder's own score there, a high one (the toy encoder also scores a blob's flank
    # well, so which of those the student proposes may rank between them)
    dist = np.linalg.norm(cands.xy[:, None] - truth[None], axis=-1)
    found = dist.argmin(axis=0)
    assert dist.min(axis=0).max() <= PRE.box / 4
    assert 0 < cands.score_map.scored < 0.2         # few windows went through the encoder
    direct = score_windows(CentreModel(), crop_windows(
        prepared, torch.as_tensor(cands.xy[found], dtype=torch.float32), 16)[:, 0], BANK,
        "fp32")
    np.testing.assert_allclose(cands.scores[found], direct.numpy(), atol=1e-4)
    assert direct.min() > 0.3 > np.median(cands.scores)


def test_only_rescored_candidates_can_stand_above_the_rescored_minimum():
    prepared = torch.as_tensor(blobs([(40, 40)], shape=(80, 80)))
    xy = np.array([[40.0, 40.0], [20.0, 60.0], [60.0, 20.0], [60.0, 60.0]])
    student_scores = np.array([0.9, 0.8, 0.95, 0.1])
    scores, n = rescore_best(CentreModel(), BANK, prepared, xy, student_scores, 0.5, 1.0,
                             16, 64, "fp32")
    assert n == 2
    direct = score_windows(CentreModel(), crop_windows(prepared, torch.tensor([[40.0, 40.0]]),
                                                       16)[:, 0], BANK, "fp32")
    assert scores[0] == pytest.approx(float(direct[0]), abs=1e-5) and scores[0] > 0.5
    rescored_min = min(scores[0], scores[2])
    assert scores[1] <= rescored_min and scores[3] == pytest.approx(0.1)


def test_a_model_without_a_student_is_refused_in_one_sentence():
    with pytest.raises(InputError, match=r"m\.pt: this model holds no student"):
        load_student({"kind": "finetuned"}, torch.device("cpu"), "m.pt")
    net = ScoreStudent(8)
    entry = {"state_dict": net.state_dict(), "width": 8}
    assert isinstance(load_student({"student": entry}, torch.device("cpu"), "m.pt"),
                      ScoreStudent)


@pytest.mark.parametrize("particles, expected", [(4, 8), (16, 18)])
def test_the_encoder_goes_on_while_the_last_tenth_still_holds_picks(particles, expected):
    # 20 candidates ranked by the student, the first ``particles`` on blobs: the encoder
    # re-scores 40% (8), then a tenth (2) at a time while that tenth still holds picks
    xy = np.array([(24.0 + 40 * (i % 5), 24.0 + 40 * (i // 5)) for i in range(20)])
    image = torch.as_tensor(blobs(xy[:particles], shape=(176, 216)))
    student_scores = np.linspace(1.0, 0.0, 20)
    scores, n = rescore_best(CentreModel(), BANK, image, xy, student_scores, 0.4, 1.0, 16, 64,
                             "fp32", cutoff=lambda s: 0.3)
    assert n == expected
    assert np.all(scores[:particles] > 0.3) and np.all(scores[particles:] <= 0.3)

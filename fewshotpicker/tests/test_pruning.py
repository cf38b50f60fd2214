"""PU-classifier pruning: the nnPU risk, the prior estimate, the threshold, the whole command."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from fewshotpicker.cli.main import main
from fewshotpicker.config import MicrographSimConfig, PretrainConfig, PruneConfig
from fewshotpicker.data.synthetic import simulate_dataset
from fewshotpicker.io.coordinates import micrograph_key, read_coordinates, write_coordinate_table
from fewshotpicker.losses.nnpu import nnpu_risk, surrogate
from fewshotpicker.picking.threshold import fit_mixtures, mixture_cutoff, top_separation
from fewshotpicker.pruning.gallery import gallery_rows
from fewshotpicker.pruning.prior import leave_one_out_similarity, ratio_prior
from fewshotpicker.pruning.run import choose_threshold, prune
from fewshotpicker.training.pretrain import pretrain


def _softplus(x):
    return math.log1p(math.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_nnpu_risk_matches_hand_computed_values_logistic():
    lp, lu, pi = [2.0, -1.0], [0.5, -0.5, 3.0], 0.3
    r_pp = (_softplus(-2.0) + _softplus(1.0)) / 2      # positives called positive
    r_pn = (_softplus(2.0) + _softplus(-1.0)) / 2      # positives called negative
    r_un = (_softplus(0.5) + _softplus(-0.5) + _softplus(3.0)) / 3
    neg = r_un - pi * r_pn
    r = nnpu_risk(torch.tensor(lp), torch.tensor(lu), pi, loss="logistic")
    assert neg > 0 and not r.clipped
    assert float(r.positive_risk) == pytest.approx(pi * r_pp, rel=1e-6)
    assert float(r.negative_risk) == pytest.approx(neg, rel=1e-6)
    assert float(r.objective) == pytest.approx(pi * r_pp + neg, rel=1e-6)
    assert float(r.risk) == pytest.approx(pi * r_pp + neg, rel=1e-6)


def test_nnpu_sigmoid_loss_and_clipping_turns_to_ascent():
    # unlabeled all called negative with confidence, positives memorised: R_n < 0
    lp, lu, pi = torch.tensor([4.0, 5.0], requires_grad=True), torch.tensor([-6.0, -5.0]), 0.6
    r_pn = (_sigmoid(4.0) + _sigmoid(5.0)) / 2          # sigmoid(-(-1) z) = sigmoid(z)
    r_un = (_sigmoid(-6.0) + _sigmoid(-5.0)) / 2
    neg = r_un - pi * r_pn
    r = nnpu_risk(lp, lu, pi, beta=0.0, gamma=1.0, loss="sigmoid")
    assert neg < 0 and r.clipped
    assert float(r.negative_risk.detach()) == pytest.approx(neg, rel=1e-6)
    assert float(r.objective.detach()) == pytest.approx(-neg, rel=1e-6)      # -gamma * R_n
    assert float(r.risk.detach()) == pytest.approx(float(r.positive_risk.detach()), rel=1e-6)
    r.objective.backward()
    # descending on -R_n = pi R_p- - R_u- lowers the positives' logits: undoes the over-fit
    assert (lp.grad > 0).all()
    # a beta below the negative risk's depth keeps the ordinary step
    r2 = nnpu_risk(lp, lu, pi, beta=1.0, loss="sigmoid")
    assert not r2.clipped and float(r2.objective.detach()) == pytest.approx(
        float(r2.positive_risk.detach()) + neg, rel=1e-6)


def test_nnpu_refuses_bad_prior_and_unknown_loss():
    with pytest.raises(ValueError):
        nnpu_risk(torch.zeros(2), torch.zeros(2), 1.0)
    with pytest.raises(ValueError):
        surrogate(torch.zeros(2), 1, "hinge")


def test_ratio_prior_recovers_the_mixture_share():
    rng = np.random.default_rng(0)
    pos = rng.normal(1.0, 0.1, 200)
    unl = np.concatenate([rng.normal(1.0, 0.1, 400), rng.normal(0.2, 0.1, 600)])
    assert ratio_prior(pos, unl) == pytest.approx(0.4, abs=0.05)
    assert ratio_prior(pos, rng.normal(0.2, 0.1, 500)) == pytest.approx(0.05)  # clipped


def test_leave_one_out_ignores_the_exemplars_own_rotations():
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.1, 1.0]])
    owner = torch.tensor([0, 0, 1, 1])
    loo = leave_one_out_similarity(bank, owner)
    assert loo[0] < 0.2 and loo[2] < 0.2  # not 1.0, its own twin


def test_mixture_threshold_splits_two_populations_and_keeps_one():
    rng = np.random.default_rng(1)
    two = np.concatenate([rng.normal(-4, 0.7, 80), rng.normal(3, 0.7, 120)])
    cut = mixture_cutoff(two, components=(1, 2))
    assert -2.0 < cut < 1.0
    assert choose_threshold("auto", two) == pytest.approx(1 / (1 + np.exp(-cut)))
    assert mixture_cutoff(rng.normal(2, 1, 300), components=(1, 2)) == -np.inf
    assert choose_threshold("bayes", two) == 0.5 and choose_threshold("0.8", two) == 0.8


def test_one_skewed_population_is_not_split():
    # one population with a long lower tail (a gamma's): BIC prefers two components, but
    # they overlap (Ashman's D about 1.65) and the cut would reject a quarter of it, as it
    # did to EMPIAR-10028's DoG picks, mostly particles
    rng = np.random.default_rng(2)
    skewed = 4 - rng.gamma(2.0, 0.5, 700)
    assert np.mean(skewed < mixture_cutoff(skewed, components=(1, 2))) > 0.2
    g2 = fit_mixtures(skewed, (2,))[0]
    assert 1.4 < top_separation(g2) < 1.9
    assert mixture_cutoff(skewed, components=(1, 2), min_separation=2.0) == -np.inf
    assert choose_threshold("auto", skewed) == 0.0
    # two classes cleanly apart are still cut between them
    far = np.concatenate([rng.normal(-3, 0.7, 100), rng.normal(2, 0.7, 300)])
    assert top_separation(fit_mixtures(far, (2,))[0]) == pytest.approx(7.1, abs=0.7)
    assert -1.5 < mixture_cutoff(far, components=(1, 2), min_separation=2.0) < 0.5


def test_gallery_rows_pick_the_extremes_and_the_borderline():
    probs = np.array([0.9, 0.1, 0.52, 0.48, 0.99, 0.01])
    rows = dict(gallery_rows(probs, 0.5, 2))
    assert list(rows["most confidently rejected"]) == [5, 1]
    assert sorted(rows["borderline"]) == [2, 3]
    assert list(rows["most confidently kept"]) == [4, 0]


LURES = MicrographSimConfig(n_micrographs=2, shape=(448, 448), crowding=0.3, exemplars=8,
                            ice_crystals=10.0, aggregates=10.0, carbon_edge=1.0, seed=5)


@pytest.fixture(scope="module")
def lure_set(tmp_path_factory):
    """Picks on micrograph 1 that are half particles, half lures (ice, aggregates, carbon)."""
    out = tmp_path_factory.mktemp("lures")
    simulate_dataset(LURES, out)
    truth, lures = read_coordinates(out / "truth.star"), read_coordinates(out / "lures.star")
    on1 = lambda t: t[t["micrograph"].map(micrograph_key) == "mic_001"]  # noqa: E731
    t1, l1 = on1(truth), on1(lures)
    n = min(len(t1), len(l1))
    picks = pd.concat([t1.iloc[:n], l1.iloc[:n]], ignore_index=True)
    return out, picks, n


def test_pruner_keeps_particles_and_drops_lures(lure_set, tmp_path):
    out, picks, n = lure_set
    mics = sorted((out / "micrographs").glob("*.mrc"))
    cfg = PruneConfig(box=40, model_size="micro", steps=100, device="cpu")
    summary = prune(cfg, mics, picks, read_coordinates(out / "exemplars.star"), tmp_path)
    scores = read_coordinates(tmp_path / "scores.star")
    assert len(scores) == 2 * n and n >= 20
    np.testing.assert_allclose(scores[["x", "y"]].to_numpy(), picks[["x", "y"]].to_numpy(),
                               atol=1e-3)  # input order kept
    kept_particles = (scores["class"][:n] == 1).mean()
    dropped_lures = (scores["class"][n:] == 2).mean()
    assert kept_particles >= 0.7, kept_particles
    assert dropped_lures >= 0.7, dropped_lures
    assert summary["kept"] + summary["rejected"] == 2 * n
    assert 0.05 <= summary["prior"] <= 0.95
    kept = read_coordinates(tmp_path / "kept" / "autopick.star")
    rejected = read_coordinates(tmp_path / "rejected" / "autopick.star")
    assert len(kept) == summary["kept"] and len(rejected) == summary["rejected"]
    assert (tmp_path / "gallery.png").stat().st_size > 1000


def test_two_runs_on_one_model_with_one_seed_give_the_same_scores(small_dataset, tmp_path):
    folder, _ = small_dataset
    mics = sorted((folder / "micrographs").glob("*.mrc"))
    pretrain(PretrainConfig(model="micro", box=40, epochs=1, regions_per_micrograph=16,
                            batch_size=16, device="cpu"), mics, tmp_path / "model")
    truth = read_coordinates(folder / "truth.star")
    picks = truth[truth["micrograph"].map(micrograph_key) == "mic_001"]
    cfg = PruneConfig(model=str(tmp_path / "model"), steps=4, device="cpu")
    exemplars = read_coordinates(folder / "exemplars.star")
    for run in ("a", "b"):  # the head's starting weights are seeded, not only the batches
        prune(cfg, mics, picks, exemplars, tmp_path / run)
    a, b = (read_coordinates(tmp_path / run / "scores.star") for run in ("a", "b"))
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)
    assert a["score"].std() > 0


def test_prune_command_writes_outputs_resumes_and_refuses_bad_input(small_dataset, tmp_path,
                                                                   capsys):
    folder, _ = small_dataset
    truth = read_coordinates(folder / "truth.star")
    picks = truth[truth["micrograph"].map(micrograph_key) == "mic_001"]
    write_coordinate_table(picks, tmp_path / "picks.star")
    args = ["prune", "--micrographs", str(folder / "micrographs"), "--picks",
            str(tmp_path / "picks.star"), "--exemplars", str(folder / "exemplars.star"),
            "--box", "40", "--model-size", "micro", "--steps", "6", "--device", "cpu",
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    first = read_coordinates(tmp_path / "out" / "scores.star")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert len(first) == len(picks) == summary["picks"]
    assert record["command"] == "prune" and record["config"]["steps"] == 6
    assert (tmp_path / "out" / "probabilities.png").exists()
    # run again: resumes at the last step, so the same model and the same scores
    assert main(args) == 0
    again = read_coordinates(tmp_path / "out" / "scores.star")
    np.testing.assert_allclose(again["score"], first["score"], rtol=1e-5)

    few = tmp_path / "few.star"
    write_coordinate_table(read_coordinates(folder / "exemplars.star").iloc[:2], few)
    bad = args[:6] + [str(few)] + args[7:-1] + [str(tmp_path / "bad")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "few.star: holds 2 exemplar(s); at least 3" in err
    assert main(args[:-1] + [str(tmp_path / "bad2"), "--prior", "1.5"]) == 2
    assert "prior must be 'auto' or a number" in capsys.readouterr().err

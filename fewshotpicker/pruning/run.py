"""``prune``: train a PU classifier on exemplars (positive) and picks (unlabeled), then judge
every pick.

1. Crops: exemplars (and confirmed picks) are the positives; a sample of up to
   ``max_unlabeled`` picks is the unlabeled training set. Micrographs are
   prepared exactly as for picking (the model's preprocessing at this box).
2. Class prior: given, or estimated from how the picks' similarity to the
   exemplars compares with the exemplars' similarity to each other
   (:mod:`.prior`).
3. Training: the last encoder blocks and a small head with the nnPU risk
   (:mod:`..losses.nnpu`), on random exact views (90-degree turns, flips,
   integer shifts) of both sides alike; resumable like every training here.
4. Scoring: every pick's logit (averaged over four rotations) and probability.
5. Threshold (``auto``): Gaussian mixtures of one and two components are fitted
   to the logits and BIC chooses; with two cleanly apart (Ashman's D >= 2), a
   pick is kept while the upper class is the more probable; with one, or two
   that overlap (one population split in two), all are kept. Without the
   separation test, on EMPIAR-10028 (DoG picks, mostly particles) the cut
   split the particles on two of three exemplar draws (D 1.8 and 1.0) and
   rejected a third and a tenth of the labelled ones; on the simulated set with
   many lures the junk class stood at D 4.1-7.1 (DoG) and 1.5-5.2 (Topaz). It
   does not catch everything: Topaz's picks of EMPIAR-10028 stood at D 2.6 on
   one draw of three and the cut lost 0.30 of the labelled particles. Asking
   also that the lower class lie below p = 0.5 (its mean logit under 0) would
   have kept them, but the logits' offset follows training, not the classes:
   in the lure test here both classes sit above p = 0.9 and the lower is lures.
   ``bayes`` keeps p >= 0.5, the classifier's Bayes rule under the prior it was
   trained with: right when the prior is, but the estimate errs (high when
   junk resembles particles), and the mixture cut does not depend on it.
   Measured on the simulated set with many lures (DoG picks, precision 0.63):
   p >= 0.5 kept precision 0.75 where the prior was overestimated (0.74 for a
   true 0.65), the mixture cut 1.00 (recall 0.304 against 0.316).
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import pandas as pd
import torch

from ..config import PruneConfig, check_ranges, to_dict
from ..data.regions import Preprocess, random_views, rotations90, view_window_size
from ..device import autocast, precision_autocast, resolve_device
from ..errors import InputError
from ..io.checkpoint import MODEL_FILE, save_checkpoint
from ..io.coordinates import match_micrographs
from ..losses.nnpu import SURROGATES, nnpu_risk
from ..models.mae import build_mae
from ..picking.threshold import mixture_cutoff
from ..training.common import load_mae, loop_settings
from ..training.finetune import MIN_EXEMPLARS, centre_crop, embed_regions, sample
from ..training.loop import coordinate_items, inputs_fingerprint, train
from . import outputs
from .classifier import PUClassifier, pruner_payload
from .crops import crop_all, crops_per_micrograph
from .prior import exemplar_similarity, leave_one_out_similarity, ratio_prior

log = logging.getLogger("fewshotpicker")


def build_classifier(cfg: PruneConfig, device: torch.device) -> tuple:
    """The classifier on the given encoder (or a new one, with a warning) and its
    preprocessing; returns ``(classifier, Preprocess)``. The new weights (the head, or all
    without a model) come from ``cfg.seed``: the same run gives the same pruner."""
    torch.manual_seed(cfg.seed)
    if cfg.model:
        encoder, payload = load_mae(cfg.model, device)
        old = payload.get("preprocess", {})
        box = cfg.box or float(old.get("box", 0))
        pre = Preprocess(box=box, img_size=encoder.cfg.img_size,
                         highpass=old.get("highpass", 4.0), lowpass=old.get("lowpass", 0.03),
                         film_edges=bool(old.get("film_edges", False)))
    else:
        log.warning("no model given: the pruner's encoder starts untrained (a pretrained or "
                    "fine-tuned model from 'pretrain' or 'train' judges picks far better).")
        torch.manual_seed(cfg.seed)
        encoder = build_mae(cfg.model_size).to(device)
        pre = Preprocess(box=cfg.box, img_size=encoder.cfg.img_size, film_edges=True)
    if pre.box <= 0:
        raise InputError("The particle box size (--box, px) is required: the model records "
                         "none.")
    clf = PUClassifier(encoder).to(device)
    clf.train_last_blocks(cfg.train_blocks if cfg.model else len(encoder.blocks))
    return clf, pre


def check_settings(cfg: PruneConfig, picks: pd.DataFrame, positives: pd.DataFrame,
                   sources: tuple) -> None:
    """Refuse empty inputs and impossible settings with one sentence each."""
    check_ranges(cfg)
    if len(picks) == 0:
        raise InputError(f"{sources[0]}: holds no picks to prune.")
    if len(positives) < MIN_EXEMPLARS:
        raise InputError(f"{sources[1]}: holds {len(positives)} exemplar(s); at least "
                         f"{MIN_EXEMPLARS} are needed (about 15 work best).")
    if cfg.loss not in SURROGATES:
        raise InputError(f"Loss {cfg.loss!r} is not one of {', '.join(SURROGATES)}.")
    if cfg.prior != "auto" and not _is_fraction(cfg.prior):
        raise InputError(f"The prior must be 'auto' or a number between 0 and 1, not "
                         f"{cfg.prior!r}.")
    if cfg.threshold not in THRESHOLDS and not _is_fraction(cfg.threshold):
        raise InputError(f"The threshold must be 'auto', 'bayes' or a probability between 0 "
                         f"and 1, not {cfg.threshold!r}.")


def _is_fraction(value: str) -> bool:
    try:
        return 0.0 < float(value) < 1.0
    except ValueError:
        return False


def training_crops(cfg: PruneConfig, picks: pd.DataFrame, positives: pd.DataFrame,
                   pre: Preprocess, device: torch.device, sources: tuple) -> tuple:
    """Positive crops ``(m, 1, S, S)`` and a seeded sample of unlabeled ones ``(u, 1, S, S)``
    (S = model input + 2 ``max_shift``, room for random views)."""
    size = view_window_size(pre.img_size, cfg.max_shift)
    rng = np.random.default_rng([cfg.seed, 11])
    rows = np.sort(rng.choice(len(picks), min(len(picks), cfg.max_unlabeled), replace=False))
    pos = crop_all(positives, pre, size, device, sources[1], warn=True)
    unl = crop_all(picks.iloc[rows].reset_index(drop=True), pre, size, device, sources[0])
    return pos, unl


def estimate_prior(clf: PUClassifier, pos: torch.Tensor, unl: torch.Tensor,
                   device: torch.device) -> float:
    """Share of particles among the picks, from the untrained encoder's similarities."""
    size = clf.encoder.cfg.img_size
    bank = embed_regions(clf.encoder, rotations90(centre_crop(pos, size)), device)
    owner = torch.arange(len(pos)).repeat(4)
    positive = leave_one_out_similarity(bank, owner).numpy()
    unlabeled = exemplar_similarity(bank, embed_regions(clf.encoder, centre_crop(unl, size),
                                                        device)).numpy()
    return ratio_prior(positive, unlabeled)


def prune_step_fn(clf: PUClassifier, pos: torch.Tensor, unl: torch.Tensor, prior: float,
                  cfg: PruneConfig, device: torch.device) -> Callable:
    """``step -> (nnPU objective, metrics)``; the batch depends only on (seed, step)."""
    size = clf.encoder.cfg.img_size

    def step_fn(step: int):
        rng = np.random.default_rng([cfg.seed, step, 5])
        p = pos[torch.as_tensor(rng.integers(0, len(pos), cfg.batch_positive))]
        x = random_views(torch.cat([p, sample(unl, cfg.batch_unlabeled, rng)]), size, rng,
                         cfg.max_shift).to(device)
        with autocast(device):
            logits = clf(x).float()
        r = nnpu_risk(logits[:len(p)], logits[len(p):], prior, cfg.beta, cfg.gamma, cfg.loss)
        return r.objective, {"risk": float(r.risk.detach()),
                             "negative_risk": float(r.negative_risk.detach()),
                             "ascent": float(r.clipped)}

    return step_fn


@torch.no_grad()
def logits_of(clf: PUClassifier, crops: torch.Tensor, cfg: PruneConfig,
              device: torch.device, batch: int = 512) -> np.ndarray:
    """Logits ``(n,)`` of crops ``(n, 1, s, s)``, averaged over 4 rotations if ``tta``."""
    clf.eval()
    turns = range(4) if cfg.tta else range(1)
    out = []
    for i in range(0, len(crops), batch):
        x = crops[i:i + batch].to(device)
        with precision_autocast(device, cfg.precision):
            z = sum(clf(torch.rot90(x, k, dims=(-2, -1))).float() for k in turns)
        out.append((z / len(turns)).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0)


def score_picks(clf: PUClassifier, picks: pd.DataFrame, pre: Preprocess, cfg: PruneConfig,
                device: torch.device, source: str,
                progress: Optional[Callable] = None) -> np.ndarray:
    """Logit ``(n,)`` that each pick is a particle, in the order of ``picks``."""
    logits = np.empty(len(picks))
    per_mic = crops_per_micrograph(picks, pre, pre.img_size, device, source)
    n_mics = picks["micrograph"].nunique()
    for _, rows, crops in (progress(per_mic, desc="score", total=n_mics) if progress
                           else per_mic):
        logits[rows] = logits_of(clf, crops, cfg, device)
    return logits


def train_pruner(cfg: PruneConfig, picks: pd.DataFrame, positives: pd.DataFrame,
                 out_dir: Path, sources: tuple, progress: Optional[Callable] = None) -> tuple:
    """Build, (resume and) train the classifier; returns ``(classifier, pre, prior, device,
    history)``."""
    device = resolve_device(cfg.device)
    clf, pre = build_classifier(cfg, device)
    pos, unl = training_crops(cfg, picks, positives, pre, device, sources)
    prior = float(cfg.prior) if cfg.prior != "auto" else estimate_prior(clf, pos, unl, device)
    log.info("class prior %.3f (%s); training on %d positives and %d unlabeled picks, last "
             "%d encoder block(s) and the head, %s", prior,
             "estimated" if cfg.prior == "auto" else "given", len(pos), len(unl),
             cfg.train_blocks, device)
    clf.train()
    history = train(clf, prune_step_fn(clf, pos, unl, prior, cfg, device),
                    loop_settings(cfg, cfg.steps), out_dir,
                    {**to_dict(cfg), "inputs": inputs_fingerprint(
                        coordinate_items(picks) + ["+" + c for c in coordinate_items(positives)])},
                    "PU pruner",
                    (lambda it, total: progress(it, desc="train", total=total))
                    if progress else None)
    save_checkpoint(out_dir / MODEL_FILE, pruner_payload(clf, asdict(pre), to_dict(cfg),
                                                         prior=prior))
    return clf, pre, prior, device, history



def matched(table: pd.DataFrame, micrographs: List[Path], source: str) -> pd.DataFrame:
    """``table`` with micrograph names replaced by the matching paths (refusing unknown ones)."""
    return match_micrographs(table, [str(m) for m in micrographs], source).reset_index(drop=True)


THRESHOLDS = ("auto", "bayes")
# Ashman's D the pruner's two logit classes need before the lower one is cut away
MIN_SEPARATION = 2.0


def choose_threshold(rule: str, logits: np.ndarray) -> float:
    """The probability a pick needs to be kept (rules in the module docstring)."""
    if rule == "bayes":
        return 0.5
    if rule != "auto":
        return float(rule)
    cut = mixture_cutoff(logits, components=(1, 2), min_separation=MIN_SEPARATION)
    return float(1.0 / (1.0 + np.exp(-cut))) if np.isfinite(cut) else 0.0


def prune(cfg: PruneConfig, micrographs: List[Path], picks: pd.DataFrame,
          exemplars: pd.DataFrame, out_dir: Path, confirmed: Optional[pd.DataFrame] = None,
          sources: tuple = ("picks", "exemplars"), progress: Optional[Callable] = None) -> dict:
    """Train the pruner and judge every pick; writes the outputs of :mod:`.outputs` and
    ``model.pt``; returns the summary."""
    out_dir, micrographs = Path(out_dir), [Path(m) for m in micrographs]
    positives = pd.concat([exemplars] + ([confirmed] if confirmed is not None else []),
                          ignore_index=True)
    check_settings(cfg, picks, positives, sources)
    located = matched(picks, micrographs, sources[0])
    positives = matched(positives, micrographs, sources[1])
    clf, pre, prior, device, history = train_pruner(cfg, located, positives, out_dir, sources,
                                                    progress)
    logits = score_picks(clf, located, pre, cfg, device, sources[0], progress)
    probs = 1.0 / (1.0 + np.exp(-logits))
    threshold = choose_threshold(cfg.threshold, logits)
    table = outputs.scored_table(located, probs, threshold)
    paths = outputs.write_pick_lists(table, out_dir, sorted(set(located["micrograph"])))
    paths.update(outputs.write_figures(probs, threshold, lambda idx: crop_all(
        located.iloc[idx], pre, pre.img_size, device, sources[0])[:, 0].numpy(), cfg.gallery,
        out_dir))
    kept = int((table["class"] == outputs.KEPT).sum())
    log.info("kept %d of %d picks (p >= %.2f; class prior %.3f)", kept, len(table), threshold,
             prior)
    return {"picks": int(len(table)), "kept": kept, "rejected": int(len(table) - kept),
            "threshold": threshold, "threshold_rule": cfg.threshold, "prior": prior,
            "prior_rule": cfg.prior, "positives": int(len(positives)),
            "final_risk": history[-1]["risk"] if history else None, "device": str(device),
            "per_micrograph": outputs.per_micrograph_counts(table), "files": paths}

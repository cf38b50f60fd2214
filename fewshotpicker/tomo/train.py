"""Teacher-student training of the 3D heatmap detector from a few labels (after SemiETPicker).

Each step the student sees crops around labelled particles and random crops
from anywhere, each under a random exact view (flips, quarter turns about z)
and with wedge-shaped blocks dropped (:func:`.targets.wedge_dropblock`).

- Targets: a Gaussian at every labelled centre. Background voxels are only
  *unlabeled* (most particles carry no label), so their loss is down-weighted
  (``unlabeled_weight``) instead of being a full negative.
- Teacher: an exponential moving average of the student (see
  :func:`teacher_decay`). After ``unsup_start`` of the steps it predicts every
  crop under ``views`` views; peaks of "some species is here" (the maximum over
  the species channels) that every view puts above a threshold become
  pseudo-labels, with a weight ramped up to ``unsup_weight``. They are
  species-agnostic: with one label per species the teacher finds particles
  long before it tells species apart (measured once, a teacher after 150
  steps at 1% labels: about 0.8 of its confident peaks were particles, a
  quarter of them had the right species, chance level), so a
  pseudo-label says only that one channel must be high there and no channel is
  pushed down around it. The threshold is relative: ``pseudo_threshold`` times
  the teacher's running response at the labelled centres, once that response
  reaches ``TRUSTED_RESPONSE`` (a teacher that does not yet recognise the
  particles it was shown labels nothing). The teacher gives unlabelled
  particles a fraction of what it gives the labelled ones, so a fixed 0.5 was
  never reached.
- Species: a particle labelled as species k is a known negative for every
  other species' channel (full weight, not the unlabelled one).
- ``semi = False`` trains the student on the labels alone: the baseline.

Student and teacher are saved together, so resuming is exact.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from ..config import Pick3dConfig, to_dict
from ..device import autocast
from ..training.loop import LoopSettings, inputs_fingerprint, train
from .data import Tomogram, crop_size
from .targets import (VIEWS, apply_view, cube_max, ema_update, gaussian_heatmap,
                      invert_view, local_peaks, wedge_dropblock)
from .unet3d import UNET_SIZES, UNet3d, UNetConfig

log = logging.getLogger("fewshotpicker")
TRUSTED_RESPONSE = 0.25  # pseudo-labels start once the labelled centres get this
VIEW_ORDER = [VIEWS[i] for i in (0, 1, 3, 2, 4, 5)]  # identity, flip x, turn, flip y, ...


class StudentTeacher(nn.Module):
    """The trained student, its EMA teacher (no gradients) and the teacher's running
    response at the labelled centres (``response``, NaN until seen), saved as one state."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.student = UNet3d(cfg)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("response", torch.tensor(float("nan")))

    def track_response(self, seen: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
        """Blend this step's response (a scalar tensor, NaN = not seen) into the running
        one."""
        fresh = torch.isnan(self.response)
        blended = torch.where(fresh, seen, momentum * self.response + (1 - momentum) * seen)
        self.response.copy_(torch.where(torch.isnan(seen), self.response, blended))
        return self.response


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, unlabeled_weight: float,
                       crop_weight: Optional[torch.Tensor] = None,
                       anywhere: Optional[torch.Tensor] = None,
                       anywhere_weight: float = 1.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss with down-weighted background.

    logits, target: ``(b, C, d, h, w)``; target is 1 at centres, Gaussian around them.
    Voxels with target < 1 are pushed down by ``(1 - target)^4 p^2 log(1 - p)``, times
    ``unlabeled_weight`` (unlabeled, not known negatives), except where another species'
    target is at least 0.5: a particle known to be of species k is a known negative for
    every other species' channel and counts in full. Normalised by the number of
    labelled centres in the batch (at least 1), so a crop without any centre adds
    background loss at the same scale as one with centres. ``crop_weight`` ``(b,)``
    scales each crop's share.

    ``anywhere`` ``(b, 1, d, h, w)``: species-agnostic targets (pseudo-labels). At its
    centres the most probable species is pulled up (the focal positive term on
    ``max_c p_c``), averaged over those centres and times ``anywhere_weight``; around
    them no channel is pushed down (the background factor uses ``max(target,
    anywhere)``). Averaged apart from the labels, so however many pseudo-labels there
    are, they never drown the few real ones (measured: pooled with them, 56
    pseudo-labels a step against 2 labels let the teacher drift until it called noise
    a particle).
    """
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target >= 0.999
    w = torch.ones(len(logits), device=logits.device) if crop_weight is None else crop_weight
    w = w.view(-1, *([1] * (logits.dim() - 1))).float()
    other_species = (target.amax(dim=1, keepdim=True) >= 0.5) & (target < 0.5)
    background = torch.where(other_species, 1.0, unlabeled_weight)
    near = target if anywhere is None else torch.maximum(target, anywhere)
    pos_loss = (w * (1 - p) ** 2 * torch.log(p))[pos].sum()
    neg = w * background * (~pos).float() * (1 - near) ** 4 * p ** 2 * torch.log(1 - p)
    loss = -(pos_loss + neg.sum()) / max(1, int(pos.sum()))
    if anywhere is not None and bool((anywhere >= 0.999).any()):
        some = anywhere >= 0.999
        best = p.amax(dim=1, keepdim=True)
        loss = loss - anywhere_weight * ((1 - best) ** 2 * torch.log(best))[some].mean()
    return loss


def labelled_crop(tomo: Tomogram, centres: np.ndarray, size: np.ndarray,
                  rng: np.random.Generator) -> tuple:
    """A crop holding a random labelled centre at a random offset; returns
    ``(corner (z, y, x), volume (1, sd, sh, sw))``."""
    x, y, z = centres[rng.integers(len(centres))]
    jitter = rng.uniform(-0.3, 0.3, 3) * size
    lo = np.round(np.array([z, y, x]) + jitter - size / 2).astype(int)
    lo = np.clip(lo, 0, np.maximum(np.array(tomo.shape) - size, 0))
    return lo, tomo.read(lo, size)


def random_crop(tomo: Tomogram, size: np.ndarray, rng: np.random.Generator) -> tuple:
    lo = np.array([rng.integers(0, max(1, s - c + 1)) for s, c in zip(tomo.shape, size)])
    return lo, tomo.read(lo, size)


def crop_targets(lo: np.ndarray, size: np.ndarray, centres: np.ndarray, classes: np.ndarray,
                 n_classes: int, sigma: float) -> torch.Tensor:
    """Targets ``(C, sd, sh, sw)`` of the labels that fall in the crop at corner ``lo``."""
    local = centres - lo[::-1]
    inside = np.all((local >= -3 * sigma) & (local < size[::-1] + 3 * sigma), axis=1)
    return gaussian_heatmap(tuple(size), local[inside], classes[inside], n_classes, sigma)


@torch.no_grad()
def agreed_views(teacher: UNet3d, x: torch.Tensor, n_views: int) -> torch.Tensor:
    """The teacher's probabilities ``(b, C, d, h, w)`` for crops ``x`` ``(b, 1, d, h, w)``:
    at each voxel the minimum over ``n_views`` exact views (all views in one batch), so a
    voxel is high only where every view agrees."""
    teacher.eval()
    views = VIEW_ORDER[:max(1, min(n_views, len(VIEW_ORDER)))]
    probs = torch.sigmoid(teacher(torch.cat([apply_view(x, v) for v in views])).float())
    return torch.stack([invert_view(part, v) for part, v in
                        zip(probs.split(len(x)), views)]).min(dim=0).values


def label_response(agreed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The teacher's species-agnostic response at the labelled centres: the mean over
    centres (target 1) of the agreed probability of their most probable species, taken
    as the maximum within 2 voxels (a peak one voxel off still counts). NaN without a
    centre. agreed, target: ``(b, C, d, h, w)``; returns a scalar tensor."""
    centre = (target >= 0.999).any(dim=1)
    if not centre.any():
        return torch.tensor(float("nan"), device=agreed.device)
    near_max = torch.stack([cube_max(a.amax(dim=0, keepdim=True), 2)[0] for a in agreed])
    return near_max[centre].mean()


def pseudo_threshold(response: torch.Tensor, fraction: float) -> float:
    """``fraction`` of the teacher's response at the labelled centres, or above 1 (no
    pseudo-label) while that response is under ``TRUSTED_RESPONSE`` or unknown: a teacher
    that does not yet recognise the particles it was shown labels nothing."""
    r = float(response)
    return fraction * r if r == r and r >= TRUSTED_RESPONSE else 2.0


def pseudo_targets(agreed: torch.Tensor, target: torch.Tensor, threshold: float, radius: int,
                   sigma: float) -> torch.Tensor:
    """Species-agnostic targets ``(b, 1, d, h, w)``: a Gaussian at each peak of the agreed
    probability of the most probable species (``agreed`` ``(b, C, d, h, w)``) above
    ``threshold``, except on a labelled particle (``target`` >= 0.5 there)."""
    some = agreed.amax(dim=1, keepdim=True)
    labelled = target.amax(dim=1, keepdim=True) >= 0.5
    out = []
    for probs, taken in zip(some, labelled):
        peaks = local_peaks(probs, radius, threshold)
        peaks = peaks[~taken[0][peaks[:, 1], peaks[:, 2], peaks[:, 3]]].cpu().numpy()
        out.append(gaussian_heatmap(tuple(agreed.shape[-3:]), peaks[:, [3, 2, 1]],
                                    np.ones(len(peaks), int), 1, sigma))
    return torch.stack(out).to(agreed.device)


class StepContext:
    """What every training step draws from: tomograms, labels, crop size and scales."""

    def __init__(self, tomos: List[Tomogram], labels: Dict[str, tuple], cfg: Pick3dConfig,
                 n_classes: int, multiple: int):
        self.tomos, self.labels, self.cfg, self.n_classes = tomos, labels, cfg, n_classes
        self.by_key = {t.key: t for t in tomos}
        self.keys = sorted(labels)
        self.size = crop_size(cfg.crop, tuple(np.min([t.shape for t in tomos], axis=0)),
                              multiple)
        self.sigma = cfg.sigma or max(1.0, cfg.box / 8.0)
        self.radius = max(1, int(round(cfg.min_distance or cfg.box / 2.0)))
        self.semi_start = int(cfg.unsup_start * cfg.steps)

    def labelled(self, rng: np.random.Generator) -> tuple:
        key = self.keys[rng.integers(len(self.keys))]
        centres, classes = self.labels[key]
        lo, vol = labelled_crop(self.by_key[key], centres, self.size, rng)
        return vol, crop_targets(lo, self.size, centres, classes, self.n_classes, self.sigma)

    def anywhere(self, rng: np.random.Generator) -> tuple:
        tomo = self.tomos[rng.integers(len(self.tomos))]
        lo, vol = random_crop(tomo, self.size, rng)
        centres, classes = self.labels.get(tomo.key, (np.empty((0, 3)), np.empty(0, int)))
        return vol, crop_targets(lo, self.size, centres, classes, self.n_classes, self.sigma)


def teacher_decay(ema: float, step: int, steps: int) -> float:
    """EMA decay at ``step`` of ``steps``: ``ema``, but a young teacher follows closely
    (``1 - 1/(step + 1)``, the usual warm-up) and the teacher never averages over more
    than a tenth of the run (``1 - 10/steps``), so a short run ends with a teacher
    that has caught up with the student it picks for."""
    return min(ema, 1.0 - 1.0 / (step + 1), 1.0 - 10.0 / max(steps, 10))


def detector_step_fn(pair: StudentTeacher, ctx: StepContext, device: torch.device) -> Callable:
    """``step -> (loss, metrics)``; crops, views and drops depend only on (seed, step)."""
    cfg = ctx.cfg

    def step_fn(step: int):
        rng = np.random.default_rng([cfg.seed, step, 3])
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if cfg.semi and step > 0:
            ema_update(pair.teacher, pair.student, teacher_decay(cfg.ema, step, cfg.steps))
        semi_now = cfg.semi and step >= ctx.semi_start
        n_lab = cfg.batch_labeled + (0 if cfg.semi else cfg.batch_unlabeled)
        n_unl = cfg.batch_unlabeled if semi_now else 0
        crops = [ctx.labelled(rng) for _ in range(n_lab)] + [ctx.anywhere(rng)
                                                             for _ in range(n_unl)]
        x = torch.stack([c[0] for c in crops]).to(device)
        t = torch.stack([c[1] for c in crops]).to(device)
        n_pseudo, pseudo = 0, None
        if semi_now:
            agreed = agreed_views(pair.teacher, x, cfg.views)
            response = pair.track_response(label_response(agreed[:n_lab], t[:n_lab]))
            pseudo = pseudo_targets(agreed, t, pseudo_threshold(response, cfg.pseudo_threshold),
                                    ctx.radius, ctx.sigma)
            n_pseudo = int((pseudo >= 0.999).sum())
        view = VIEWS[int(rng.integers(len(VIEWS)))]
        x, t = apply_view(x, view), apply_view(t, view)
        pseudo = None if pseudo is None else apply_view(pseudo, view)
        x = wedge_dropblock(x, cfg.dropblock, max(2, int(cfg.box / 3)), 2.0, gen)
        pair.student.train()
        with autocast(device):
            logits = pair.student(x)
        ramp = min(1.0, (step - ctx.semi_start + 1) / max(1.0, 0.2 * cfg.steps)) \
            if semi_now else 0.0
        weight = torch.tensor([1.0] * n_lab + [ramp] * n_unl, device=device)
        loss = focal_heatmap_loss(logits, t, cfg.unlabeled_weight, weight, pseudo,
                                  cfg.unsup_weight * ramp)
        return loss, {"pseudo_labels": n_pseudo, "pseudo_weight": ramp * cfg.unsup_weight,
                      "label_response": float(torch.nan_to_num(pair.response))}

    return step_fn


def train_detector(cfg: Pick3dConfig, tomos: List[Tomogram], labels: Dict[str, tuple],
                   n_classes: int, out_dir: Path, device: torch.device,
                   progress: Optional[Callable] = None) -> tuple:
    """Train (or resume); returns ``(detector for picking, history)``: the teacher when
    semi-supervised (the averaged weights), else the student."""
    torch.manual_seed(cfg.seed)
    base = UNET_SIZES[cfg.size]
    pair = StudentTeacher(UNetConfig(width=base.width, n_classes=n_classes,
                                     groups=base.groups, levels=base.levels)).to(device)
    ctx = StepContext(tomos, labels, cfg, n_classes, pair.student.multiple)
    log.info("training a %s 3D U-Net on %d labels in %d tomogram(s), crops %s voxels, %s, %s",
             cfg.size, sum(len(v[0]) for v in labels.values()), len(labels),
             "x".join(map(str, ctx.size)), "teacher-student" if cfg.semi else "supervised only",
             device)
    settings = LoopSettings(steps=cfg.steps, lr=cfg.lr, min_lr=cfg.min_lr,
                            warmup_steps=max(1, int(round(cfg.warmup * cfg.steps))),
                            weight_decay=cfg.weight_decay, checkpoint_every=cfg.checkpoint_every)
    inputs = [t.path.stem for t in tomos] + [
        f"{key}:{':'.join(f'{v:.1f}' for v in c)}:{k}"
        for key, (centres, classes) in labels.items() for c, k in zip(centres, classes)]
    history = train(pair, detector_step_fn(pair, ctx, device), settings, out_dir,
                    {**to_dict(cfg), "inputs": inputs_fingerprint(inputs)}, "3D detector", (lambda it, total: progress(it, desc="train", total=total))
                    if progress else None)
    return (pair.teacher if cfg.semi else pair.student), history

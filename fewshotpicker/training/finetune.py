"""Exemplar fine-tuning with masked MSE + beta * self-cross similarity (stage 1 of CryoMAE).

Positives are the exemplar regions (and their 90/180/270-degree rotations);
unlabeled regions are random crops of the same micrographs away from the
exemplars (some hold particles: that is what the PU prior accounts for). Each
step reconstructs all of them and pulls exemplar features together while
pushing them from the unlabeled ones. The result is the model plus the
exemplar feature bank that picking compares windows against.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..config import TrainConfig, check_ranges, to_dict
from ..data.regions import (Preprocess, check_inside, crop_windows, normalize_regions,
                            prepare_micrograph, random_centres, random_views, rotations90,
                            view_window_size, window_contrast_at)
from ..device import PRECISIONS, autocast, resolve_device
from ..errors import InputError
from ..io.checkpoint import MODEL_FILE, RESUME_FILE, load_checkpoint, save_checkpoint
from ..io.coordinates import match_micrographs, micrograph_key
from ..io.mrc import read_image, read_pixel_size
from ..losses import masked_mse, scs_loss
from ..models.mae import MaskedAutoencoder, build_mae, resize_input
from ..picking.picker import default_stride
from ..picking.run import window_batch
from ..picking.scoring import Bank
from .common import load_mae, loop_settings, model_payload
from .distil import distil
from .loop import (coordinate_items, inputs_fingerprint, step_generator, train,
                   with_added_settings)

log = logging.getLogger("fewshotpicker")
MIN_EXEMPLARS = 3
# below this many exemplars the features still rank particles as well, but pick's automatic
# cutoff, anchored by the exemplars, misses more of them (docs/benchmarks.md, "How many
# exemplars")
FEW_EXEMPLARS = 15


def build_model(cfg: TrainConfig, device: torch.device) -> MaskedAutoencoder:
    """The pretrained model when given, else a new one (with a warning)."""
    if cfg.pretrained:
        model, payload = load_mae(cfg.pretrained, device)
        old_box = payload.get("preprocess", {}).get("box")
        if old_box and abs(old_box - cfg.box) > 0.25 * cfg.box:
            log.warning("the pretrained model saw regions of %.0f px, these exemplars have a "
                        "%.0f px box: features transfer best at the same scale.", old_box,
                        cfg.box)
        return model
    log.warning("no pretrained model given: fine-tuning a %s MAE from scratch (the paper "
                "reports F1 0.43 instead of 0.59 without pretraining).", cfg.model)
    torch.manual_seed(cfg.seed)
    return build_mae(cfg.model).to(device)


def shifted_centres(centres: np.ndarray, box: float, shift_range: tuple, per_point: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``per_point`` displaced copies of each centre ``(m, 2)``: ``(m * per_point, 2)``.

    The displacement is uniform in ``shift_range`` boxes, in a random direction:
    a window there shows part of the particle but is not centred on it.
    """
    n = len(centres) * per_point
    angle = rng.uniform(0, 2 * np.pi, n)
    dist = rng.uniform(*shift_range, n) * box
    return np.repeat(centres, per_point, axis=0) + np.stack([np.cos(angle), np.sin(angle)], 1) \
        * dist[:, None]


def collect_regions(cfg: TrainConfig, micrographs: List[Path], exemplars: pd.DataFrame,
                    pre: Preprocess, device: torch.device, source: str) -> tuple:
    """Exemplar windows ``(m, 1, S, S)`` (S = :func:`view_window_size`, for random
    views), an unlabeled pool ``(u, 1, s, s)``, off-centre exemplar crops
    ``(o, 1, s, s)`` (none when ``shifted_negatives`` is 0) and the exemplar windows'
    contrast ``(m,)`` (:func:`window_contrast_at`; picking's contrast gate)."""
    exemplars = match_micrographs(exemplars, [str(m) for m in micrographs], source)
    positives, pool, shifted, contrast = [], [], [], []
    per_mic = max(1, int(cfg.unlabeled_pool * len(exemplars) / len(micrographs)))
    for i, path in enumerate(micrographs):
        image = read_image(path, pre.box).data
        prepared = prepare_micrograph(image, pre, device)
        mine = exemplars[exemplars["micrograph"] == str(path)][["x", "y"]].to_numpy(float)
        if len(mine):
            check_inside(mine, image.shape, cfg.box, source)
            centres = torch.as_tensor(mine * pre.scale, dtype=torch.float32, device=device)
            positives.append(crop_windows(prepared, centres,
                                          view_window_size(pre.img_size, cfg.max_shift)))
            contrast.append(window_contrast_at(prepared, centres, pre.img_size).cpu())
            if cfg.shifted_negatives > 0:
                off = shifted_centres(mine * pre.scale, pre.img_size, cfg.shift_range, 16,
                                      np.random.default_rng([cfg.seed, i, 9]))
                shifted.append(crop_windows(prepared, torch.as_tensor(
                    off, dtype=torch.float32, device=device), pre.img_size))
        rng = np.random.default_rng([cfg.seed, i, 7])
        free = random_centres(tuple(prepared.shape), per_mic, rng, margin=pre.img_size / 2,
                              avoid=mine * pre.scale, avoid_radius=pre.img_size / 2)
        pool.append(crop_windows(prepared, torch.as_tensor(free, dtype=torch.float32,
                                                           device=device), pre.img_size))
    empty = torch.empty(0, 1, pre.img_size, pre.img_size, device=device)
    return (torch.cat(positives), torch.cat(pool), torch.cat(shifted) if shifted else empty,
            torch.cat(contrast))


def training_pixel_size(micrographs: List[Path], exemplars: pd.DataFrame) -> Optional[float]:
    """Pixel size (Å) that the headers of the micrographs holding exemplars state (their
    median; None when none states one): ``pick`` warns when it is given others."""
    keys = set(exemplars["micrograph"].astype(str).map(micrograph_key))
    sizes = [read_pixel_size(m) for m in micrographs if micrograph_key(str(m)) in keys]
    sizes = [s for s in sizes if s]
    return float(np.median(sizes)) if sizes else None


def centre_crop(windows: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` part of ``(n, 1, S, S)`` windows, renormalised."""
    start = (windows.shape[-1] - size) // 2
    return normalize_regions(windows[..., start:start + size, start:start + size])


def positive_views(windows: torch.Tensor, cfg: TrainConfig, size: int,
                   rng: np.random.Generator) -> torch.Tensor:
    """This step's exemplar regions: random views, or the fixed 0/90/180/270 set."""
    if cfg.augment:
        reps = 4 if cfg.rotations else 1
        return random_views(windows.repeat(reps, 1, 1, 1), size, rng, cfg.max_shift)
    fixed = centre_crop(windows, size)
    return rotations90(fixed) if cfg.rotations else fixed


def sample(x: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` rows of ``x`` without replacement (all of them if fewer)."""
    idx = rng.choice(len(x), min(n, len(x)), replace=False)
    return x[torch.as_tensor(idx, device=x.device)]


def exemplars_each_step(cfg: TrainConfig, n_exemplars: int) -> int:
    """How many of ``n_exemplars`` one step trains on: all, or ``exemplars_per_step`` drawn
    afresh each step when there are more (the unlabeled side scales with it)."""
    cap = cfg.exemplars_per_step
    return n_exemplars if cap <= 0 else min(cap, n_exemplars)


def finetune_step_fn(model, positives: torch.Tensor, pool: torch.Tensor, cfg: TrainConfig,
                     device: torch.device, forward: Callable,
                     shifted: Optional[torch.Tensor] = None) -> Callable:
    """``step -> (loss, metrics)`` with loss = masked MSE + beta * SCS.

    The unlabeled side of each step is drawn from the pool and, for a share
    ``shifted_negatives``, from the off-centre exemplar crops.
    """
    size = model.cfg.img_size
    n_ex = exemplars_each_step(cfg, len(positives))
    n_pos = n_ex * (4 if cfg.rotations else 1)
    n_unl = max(1, int(round(cfg.unlabeled_ratio * n_pos)))
    n_off = int(round(cfg.shifted_negatives * n_unl)) if shifted is not None and len(shifted) \
        else 0

    def step_fn(step: int):
        rng = np.random.default_rng([cfg.seed, step, 2])
        chosen = positives if n_ex == len(positives) else sample(positives, n_ex, rng)
        pos = positive_views(chosen, cfg, size, rng)
        unl = sample(pool, n_unl - n_off, rng)
        if n_off:
            unl = torch.cat([unl, sample(shifted, n_off, rng)])
        if cfg.augment:  # the same exact operations, so no view statistic marks positives
            unl = random_views(unl, size, rng, 0)
        x = torch.cat([pos, unl])
        with autocast(device):
            pred, mask, latent = forward(x, cfg.mask_ratio,
                                         step_generator(cfg.seed, step, device))
            mse = masked_mse(pred, model.target(x), mask)
            feats = model.embed(x) if cfg.scs_features == "unmasked" else model.pool(latent)
            if cfg.centre_features:  # remove the component every region shares
                feats = feats - feats[len(pos):].mean(dim=0).detach()
            scs, s_self, s_cross = scs_loss(feats[:len(pos)], feats[len(pos):],
                                            cfg.alpha, cfg.tau, cfg.prior, cfg.uu_diagonal)
            loss = mse + cfg.beta * scs
        return loss, {"mse": float(mse.detach()), "scs": float(scs.detach()),
                      "s_self": float(s_self.detach()), "s_cross": float(s_cross.detach())}

    return step_fn


@torch.no_grad()
def embed_regions(model: MaskedAutoencoder, x: torch.Tensor, device: torch.device,
                  batch: int = 512) -> torch.Tensor:
    """Features ``(n, d)`` float32 on the CPU, in eval mode, batched."""
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        with autocast(device):
            out.append(model.embed(x[i:i + batch].to(device)).float().cpu())
    return torch.cat(out)


def separation(bank: torch.Tensor, background: torch.Tensor,
               centre: torch.Tensor | None = None) -> Dict[str, float]:
    """Mean cosine among exemplar features, to unlabeled ones, and the gap
    (of centred features when a centre is given)."""
    if centre is not None:
        bank, background = bank - centre, background - centre
    a = F.normalize(bank, dim=-1)
    u = F.normalize(background, dim=-1)
    same = (a @ a.T)[~torch.eye(len(a), dtype=torch.bool)].mean().item()
    cross = (a @ u.T).mean().item()
    return {"cos_exemplars": same, "cos_exemplar_unlabeled": cross, "cos_gap": same - cross}


def distil_student(model, bank: torch.Tensor, centre: torch.Tensor, micrographs: List[Path],
                   pre: Preprocess, cfg: TrainConfig, device: torch.device,
                   progress: Optional[Callable] = None) -> Optional[dict]:
    """The dense student of the fine-tuned model (``None`` with ``student_steps`` 0)."""
    if cfg.student_steps <= 0:
        return None
    scorer = Bank.from_payload({"bank": bank, "centre": centre}, device)
    images = [read_image(m, pre.box).data for m in micrographs]
    return distil(model, scorer, images, pre, default_stride(pre.box), cfg.student_steps,
                  cfg.seed, device, window_batch(0, device),
                  (lambda it, desc, total: progress(it, desc=desc, total=total))
                  if progress else None, precision=cfg.student_precision)


def finished_student(out_dir: Path, config: dict, steps: int) -> Optional[dict]:
    """The student in ``out_dir``'s model.pt when that finished run is being repeated:
    its checkpoint holds all ``steps`` (a checkpoint of other inputs is refused when
    resumed) and the model was saved with the same ``config``. Distilling again
    would only give the same network, minutes later. None otherwise."""
    model, checkpoint = out_dir / MODEL_FILE, out_dir / RESUME_FILE
    if not (model.exists() and checkpoint.exists()):
        return None
    try:
        if load_checkpoint(checkpoint, kinds=["resume"]).get("step", 0) < steps:
            return None
        payload = load_checkpoint(model, kinds=["finetuned"])
    except InputError:  # unreadable or of another kind: resuming reports it, or it is replaced
        return None
    same = with_added_settings(payload.get("config") or {}) == with_added_settings(config)
    return payload.get("student") if same else None


def check_settings(cfg: TrainConfig, n_exemplars: int, source: str) -> None:
    """Refuse, in one sentence each, settings fine-tuning cannot use, before any work."""
    check_ranges(cfg)
    if cfg.box <= 0:
        raise InputError("The particle box size (--box, px) is required for training.")
    if cfg.student_precision not in PRECISIONS:
        raise InputError(f"--student-precision is {cfg.student_precision!r}; it must be one of "
                         f"{', '.join(PRECISIONS)}.")
    if cfg.pooling and cfg.pooling not in ("mean", "cls"):
        raise InputError(f"Pooling {cfg.pooling!r} is not 'mean' or 'cls'.")
    if n_exemplars < MIN_EXEMPLARS:
        raise InputError(f"{source}: holds {n_exemplars} exemplar(s); at least "
                         f"{MIN_EXEMPLARS} are needed (about 15 work best).")


def warn_if_few(n_exemplars: int, source: str) -> None:
    """Say so when there are fewer than ``FEW_EXEMPLARS`` exemplars, and what it costs."""
    if n_exemplars < FEW_EXEMPLARS:
        log.warning("%s: %d exemplars; with fewer than %d the features rank particles about "
                    "as well, but pick's automatic cutoff misses more of them (on EMPIAR-10028 "
                    "F1 at the cutoff was 0.797 with 5, 0.825 with 10 and 0.845 with 15); add "
                    "exemplars if you can, or check pick's summary.png for micrographs with "
                    "too few picks.", source, n_exemplars, FEW_EXEMPLARS)


def model_to_finetune(cfg: TrainConfig, device: torch.device) -> MaskedAutoencoder:
    """The model of :func:`build_model` with the pooling and input size ``cfg`` asks for."""
    model = build_model(cfg, device)
    if cfg.pooling:
        model.cfg = replace(model.cfg, pooling=cfg.pooling)
    if cfg.input_size:
        try:
            model = resize_input(model, cfg.input_size)
        except ValueError as exc:
            raise InputError(f"--input-size: {exc}.") from None
    return model


def freeze_for_finetuning(model: MaskedAutoencoder, cfg: TrainConfig) -> int:
    """Freeze the first encoder blocks (``cfg.freeze_blocks``; -1: half of a pretrained
    model's, none of a new one's, whose blocks hold nothing yet); returns how many."""
    k = cfg.freeze_blocks if cfg.freeze_blocks >= 0 else \
        (model.cfg.depth // 2 if cfg.pretrained else 0)
    model.freeze_encoder_blocks(k)
    return k


def exemplar_bank(model: MaskedAutoencoder, positives: torch.Tensor, pool: torch.Tensor,
                  cfg: TrainConfig, device: torch.device) -> tuple:
    """The bank ``(k, d)`` of the exemplars' (turned) views, the background centre ``(d,)``
    (zeros without ``cfg.centre_features``) and their separation statistics."""
    views = centre_crop(positives, model.cfg.img_size)
    bank = embed_regions(model, rotations90(views) if cfg.rotations else views, device)
    background = embed_regions(model, pool, device)
    centre = background.mean(dim=0) if cfg.centre_features else torch.zeros(bank.shape[1])
    return bank, centre, separation(bank, background, centre)


def training_micrographs(micrographs: List[Path], exemplars: pd.DataFrame,
                         cfg: TrainConfig) -> List[Path]:
    """The micrographs fine-tuning reads, in their given order: every one holding exemplars,
    then a draw (seeded by ``cfg.seed``) of the others, ``cfg.max_micrographs`` in all (0 =
    all). Their unlabeled regions and the student's score maps come from these alone, so a
    whole data set given (a RELION micrograph list, a Scipion set) costs what 16 do: the
    student's teacher maps hold every micrograph it learns from in memory."""
    if not cfg.max_micrographs or len(micrographs) <= cfg.max_micrographs:
        return micrographs
    keys = set(exemplars["micrograph"].astype(str).map(micrograph_key))
    holding = [m for m in micrographs if micrograph_key(str(m)) in keys]
    others = [m for m in micrographs if micrograph_key(str(m)) not in keys]
    room = min(len(others), max(0, cfg.max_micrographs - len(holding)))
    drawn = np.random.default_rng([cfg.seed, 13]).choice(len(others), room, replace=False)
    chosen = set(holding) | {others[int(i)] for i in drawn}
    log.info("reading %d of the %d micrographs: the %d holding exemplars and %d others drawn "
             "for unlabeled regions and the student (--max-micrographs %d)", len(chosen),
             len(micrographs), len(holding), room, cfg.max_micrographs)
    return [m for m in micrographs if m in chosen]


def finetune(cfg: TrainConfig, micrographs: List[Path], exemplars: pd.DataFrame, out_dir: Path,
             source: str = "exemplars", progress: Optional[Callable] = None) -> dict:
    """Fine-tune on exemplars; writes ``model.pt`` (with the feature bank) and curves."""
    out_dir, micrographs = Path(out_dir), [Path(m) for m in micrographs]
    check_settings(cfg, len(exemplars), source)
    warn_if_few(len(exemplars), source)
    if len(micrographs) <= cfg.max_micrographs:
        cfg = replace(cfg, max_micrographs=0)  # recorded as what it does: all of them
    micrographs = training_micrographs(micrographs, exemplars, cfg)
    device = resolve_device(cfg.device)
    model = model_to_finetune(cfg, device)
    pre = Preprocess(box=cfg.box, img_size=model.cfg.img_size, highpass=cfg.highpass,
                     lowpass=cfg.lowpass, film_edges=cfg.film_edges)
    positives, pool, shifted, contrast = collect_regions(cfg, micrographs, exemplars, pre,
                                                         device, source)
    if exemplars_each_step(cfg, len(positives)) == len(positives):
        cfg = replace(cfg, exemplars_per_step=0)  # recorded as what it does: all each step
    k = freeze_for_finetuning(model, cfg)
    each = f" ({cfg.exemplars_per_step} drawn each step)" if cfg.exemplars_per_step else ""
    log.info("fine-tuning on %d exemplars%s and a pool of %d unlabeled regions; first %d "
             "of %d encoder blocks frozen; %s", len(positives), each, len(pool), k,
             model.cfg.depth, device)
    forward = torch.compile(model) if cfg.compile else model
    kept_student = finished_student(out_dir, to_dict(cfg), cfg.steps) \
        if cfg.student_steps > 0 else None
    model.train()
    history = train(model, finetune_step_fn(model, positives, pool, cfg, device, forward, shifted),
                    loop_settings(cfg, cfg.steps), out_dir,
                    {**to_dict(cfg), "inputs": inputs_fingerprint(
                        [m.stem for m in micrographs] + coordinate_items(exemplars))},
                    "exemplar fine-tuning",
                    (lambda it, total: progress(it, desc="train", total=total))
                    if progress else None)
    bank, centre, stats = exemplar_bank(model, positives, pool, cfg, device)
    if kept_student is not None:
        log.info("%s: this run had already finished; its student is kept, not distilled again",
                 out_dir / MODEL_FILE)
    student = kept_student or distil_student(model, bank, centre, micrographs, pre, cfg, device,
                                             progress)
    save_checkpoint(out_dir / MODEL_FILE, model_payload(model, "finetuned", pre, to_dict(cfg),
                                                        bank=bank, centre=centre,
                                                        n_exemplars=len(exemplars),
                                                        exemplar_contrast=contrast,
                                                        student=student,
                                                        pixel_size=cfg.pixel_size or
                                                        training_pixel_size(micrographs,
                                                                            exemplars)))
    return {"steps": cfg.steps, "exemplars": int(len(exemplars)), "bank": int(len(bank)),
            "final_loss": history[-1]["loss"], "device": str(device), **stats}

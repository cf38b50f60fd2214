"""Frozen dataclasses: the one source of truth for every parameter.

Each engine command has one config class. ``to_dict``/``from_dict`` round-trip
through JSON, and :func:`write_run_record` stores the config with the engine
version, the seed and the command line in the output folder (``config.json``),
so every run is a pure function of its recorded config and inputs.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Type, TypeVar

from . import __version__
from .errors import InputError
from .io.atomic import write_text_atomic

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    """Return a JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: Type[T], values: dict, source: str = "") -> T:
    """Build ``cls`` from ``values``; unknown keys and values of the wrong type are an error
    (named with ``source``, e.g. the file they came from); lists become tuples."""
    where = f"{source}: " if source else ""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(f"{where}Unknown parameter(s) {', '.join(unknown)} for "
                         f"{cls.__name__}.")
    kwargs = {k: _typed(cls, names[k], v, where) for k, v in values.items()}
    return cls(**kwargs)


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
          tuple: "a list"}


def _typed(cls: type, field: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` as the type of the field's default: ints pass as floats, integral numbers
    as ints, numbers as strings (a prior or threshold may be either), lists as tuples."""
    kind = type(field.default)
    if kind is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool and isinstance(value, bool) or kind is str and isinstance(value, str):
        return value
    if kind is float and number:
        return float(value)
    if kind is int and number and float(value).is_integer():
        return int(value)
    if kind is str and number:
        return str(value)
    if kind not in _KINDS:
        return value
    raise InputError(f"{where}{field.name} of {cls.__name__} must be {_KINDS[kind]}, "
                     f"not {value!r}.")


_INF = float("inf")
_POSITIVE = (0.0, _INF, True, True, "a finite number above 0")
_ZERO_UP = (0.0, _INF, False, True, "0 or more, a finite number")
_SHARE = (0.0, 1.0, False, False, "a share from 0 to 1")
_OPEN_SHARE = (0.0, 1.0, True, True, "a share above 0 and below 1")
_SHARE_ABOVE_0 = (0.0, 1.0, True, False, "a share above 0 and at most 1")
_COUNT = (1, _INF, False, True, "a whole number, 1 or more")
_COUNT_ZERO_UP = (0, _INF, False, True, "a whole number, 0 or more")

#: the numbers each setting may take, by field name or ``Config.field`` where one command
#: differs: ``(lo, hi, lo excluded, hi excluded, what)``. A setting whose 0 means "the default" or "off" lies in a range holding
#: 0; "required" is each command's own check.
RANGES = {
    **dict.fromkeys(("lr", "tau", "snr"), _POSITIVE),
    **dict.fromkeys(("box", "diameter", "min_lr", "weight_decay", "beta", "gamma", "highpass",
                     "lowpass", "unlabeled_ratio", "unsup_weight", "unlabeled_weight", "sigma",
                     "min_distance", "exclude_border", "stride", "radius", "pixel_size",
                     "model_pixel_size", "shoulder_reach"), _ZERO_UP),
    **dict.fromkeys(("warmup", "alpha", "shifted_negatives", "unsup_start", "ema", "quantile",
                     "max_overlap", "student", "prior"), _SHARE),
    "mask_ratio": _OPEN_SHARE,
    **dict.fromkeys(("regions_per_micrograph", "epochs", "checkpoint_every", "batch_positive",
                     "max_unlabeled", "unlabeled_pool", "crop", "batch_labeled", "k", "coarse",
                     "tile", "steps", "n_micrographs", "n_tomograms", "n_species"), _COUNT),
    **dict.fromkeys(("student_steps", "exemplars_per_step", "max_micrographs", "max_regions",
                     "input_size",
                     "max_shift",
                     "train_blocks", "dropblock", "batch_unlabeled", "gallery", "batch_size"),
                    _COUNT_ZERO_UP),
    **dict.fromkeys(("pseudo_threshold", "shoulder_dip"), _SHARE_ABOVE_0),
    "seed": (0, 2 ** 32 - 1, False, False, "a whole number from 0 to 2^32 - 1"),
    "freeze_blocks": (-1, _INF, False, True, "-1 (half of a pretrained encoder's blocks) or 0 "
                                             "or more"),
    "views": (1, 6, False, False, "from 1 to 6 (the views of a crop)"),
    "PretrainConfig.batch_size": _COUNT,  # where 0 is no default
}


#: what 0 means, for the settings where it means the same in every command
ZERO_MEANS = {"batch_size": "the device's default", "stride": "a fifth of the box",
              "min_distance": "the particle radius", "pixel_size": "the headers'",
              "model_pixel_size": "as the model records", "student": "off",
              "max_overlap": "off", "shoulder_reach": "off", "exemplars_per_step": "all",
              "max_micrographs": "all", "max_regions": "all",
              "student_steps": "no student", "input_size": "the pretrained model's",
              "sigma": "box / 8", "radius": "half the box"}


def check_ranges(config: Any, flags: Optional[dict] = None) -> None:
    """Refuse, in one sentence naming its flag (``flags``: argparse destination -> field;
    without them the field), a numeric setting outside :data:`RANGES`, NaN and infinities
    included."""
    names = {field: "--" + dest.replace("_", "-") for dest, field in (flags or {}).items()}
    other = "{} (in --config)" if flags else "{}"
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        rule = RANGES.get(f"{type(config).__name__}.{field.name}", RANGES.get(field.name))
        if rule is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        lo, hi, lo_out, hi_out, what = rule
        inside = (lo < value if lo_out else lo <= value) and (value < hi if hi_out else
                                                              value <= hi)
        if not inside:  # NaN is inside nothing
            name = names.get(field.name, other.format(field.name))
            zero = f" (0 = {ZERO_MEANS[field.name]})" if field.name in ZERO_MEANS and lo == 0 \
                else ""
            raise InputError(f"{name} {value}: must be {what}{zero}.")


def load_config(cls: Type[T], path: str | os.PathLike) -> T:
    """Read a config JSON file (a run record or a bare dict) into ``cls``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found.") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from None
    return from_dict(cls, data.get("config", data), str(path))


def write_run_record(out_dir: str | os.PathLike, command: str, config: Any,
                     argv: Optional[Sequence[str]] = None) -> Path:
    """Write ``out_dir/config.json``: command, config, version, seed, command line, host."""
    record = {
        "command": command,
        "version": __version__,
        "seed": getattr(config, "seed", None),
        "argv": list(sys.argv if argv is None else argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "host": platform.node(),
        "config": to_dict(config),
    }
    return write_text_atomic(Path(out_dir) / "config.json", json.dumps(record, indent=2) + "\n")


@dataclass(frozen=True)
class MicrographSimConfig:
    """Parameters of the micrograph simulator (``fewshotpicker simulate``).

    Lengths in pixels unless the name says Å or µm.
    """
    n_micrographs: int = 6
    shape: tuple = (1024, 1024)        # (h, w) px
    pixel_size: float = 5.0            # Å / px
    density: str = ""                  # MRC map path; "" = generated pseudo-atomic density
    particle_diameter_A: float = 200.0  # only for the generated density
    crowding: float = 0.25             # fraction of the area covered by particle discs
    min_separation: float = 1.05       # minimum centre distance, in particle diameters
    snr: float = 0.05                  # particle signal variance / shot-noise variance
    dose: float = 40.0                 # electrons per Å^2
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_um: tuple = (1.0, 2.5)     # uniform range, underfocus positive
    bfactor: float = 80.0              # Å^2, envelope exp(-B k^2 / 4)
    ice_gradient: float = 0.3          # relative thickness change across the image
    ice_texture: float = 0.5           # ice structure variance / particle variance
    carbon_edge: float = 0.5           # probability that a micrograph shows a carbon edge
    ice_crystals: float = 3.0          # mean number of ice-crystal contaminants
    aggregates: float = 2.0            # mean number of protein aggregates
    exemplars: int = 15                # exemplars drawn from the first micrograph
    seed: int = 0


@dataclass(frozen=True)
class TomogramSimConfig:
    """Parameters of the tomogram simulator. Shapes are (z, y, x) voxels."""
    n_tomograms: int = 2
    shape: tuple = (64, 192, 192)
    voxel_size: float = 10.0           # Å / voxel
    densities: tuple = ()              # MRC map paths; () = generated species
    n_species: int = 3                 # used when densities is empty
    diameters_A: tuple = (220.0, 160.0, 120.0)
    crowding: float = 0.08             # fraction of the volume covered by particles
    snr: float = 0.1
    tilt_range_deg: float = 60.0       # +- tilt; the missing wedge lies beyond it
    defocus_um: float = 4.0
    seed: int = 0


@dataclass(frozen=True)
class DogConfig:
    """Difference-of-Gaussians baseline picker. Lengths in pixels."""
    diameter: float = 0.0              # particle diameter, px (required)
    threshold: str = "auto"            # "auto" (noise-calibrated) or a number
    min_distance: float = 0.0          # 0 = particle radius
    exclude_border: float = 0.0        # px kept free at the edges (0 = half a radius)
    dark_particles: bool = True        # cryo-EM contrast: protein darker than ice


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of picks against ground truth."""
    box: float = 0.0                   # box side, px (required; the particle diameter)
    radius: float = 0.0                # matching radius for the Topaz rule, px (0 = box / 2)
    conventions: tuple = ("cryomae", "hydrapicker", "topaz")
    seed: int = 0


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised MAE pretraining on random regions (``fewshotpicker pretrain``).

    The paper pretrains on 7 data sets x 300 micrographs x 10 regions, Adam,
    lr 1e-5, 100 epochs; the defaults here suit a user's own set.
    """
    model: str = "tiny"               # tiny | small | base
    box: float = 0.0                  # region side in micrograph px (0 = the model input size)
    regions_per_micrograph: int = 32
    max_regions: int = 20000          # regions held in memory (the paper pretrained on 21000): of
                                      # more micrographs a seeded draw is read (0 = all)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup: float = 0.05              # fraction of the steps with a linear warm-up
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    highpass: float = 4.0             # background removal, in boxes (0 = none)
    lowpass: float = 0.03             # denoising blur sigma, in boxes (0 = none)
    film_edges: bool = True           # background per side of a carbon-film edge (data.film)
    checkpoint_every: int = 200       # steps
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    compile: bool = False             # torch.compile the model (pays off on GPUs for long runs)
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """Exemplar fine-tuning with MSE + beta * SCS (``fewshotpicker train``).

    Paper defaults: 75% masking, beta 5, alpha 0.7, tau 0.02, pi 0.018,
    unlabeled : positive = 2 : 1, half of the encoder frozen, 5000 epochs.
    Ours differ where measured (``fewshotpicker benchmark features``): alpha 0.5
    (0.7 first drives every feature apart and generalised far worse to unseen
    micrographs) and exact augmentation of the exemplars (90-degree turns,
    flips, integer shifts; never resampling, which the network learns as a cue).
    Half of the encoder stays frozen, as in the paper, which needs a long enough
    pretraining: on EMPIAR-10028, after 400 pretraining steps one draw of
    exemplars gave F1 0.718 frozen and 0.812 unfrozen, after 3200 steps 0.845
    both ways; on the tests' easy micro set, unfrozen fell from AUROC 0.94 to 0.65-0.69.
    """
    box: float = 0.0                  # particle box in micrograph px (required)
    model: str = "tiny"               # used only without --pretrained
    pretrained: str = ""              # folder or model.pt of a pretrain (or train) run
    steps: int = 300
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup: float = 0.05
    weight_decay: float = 0.05
    mask_ratio: float = 0.75
    beta: float = 5.0
    alpha: float = 0.5               # the paper's 0.7 generalised worse (see docstring)
    tau: float = 0.02
    prior: float = 0.018              # pi: probability that an unlabeled crop holds a particle
    uu_diagonal: bool = False         # count each unlabeled crop with itself in S_uu
    scs_features: str = "unmasked"    # features for SCS: "unmasked" (as in picking) or "masked"
    centre_features: bool = False     # cosines of features minus the background mean (measured worse)
    pooling: str = ""                 # region feature: "mean" of patch tokens, "cls"; "" = model's
    input_size: int = 0               # model input px a box becomes (0 = the pretrained model's);
                                      # smaller = faster picking (compute ~ input_size^2)
    exemplars_per_step: int = 64      # exemplars drawn each step when there are more (0 = all);
                                      # bounds a step's cost for users who label hundreds
    max_micrographs: int = 16         # micrographs read: those holding exemplars and a seeded
                                      # draw of others for unlabeled regions and the student
                                      # (0 = all); bounds time and memory for a whole data set
    unlabeled_ratio: float = 2.0      # unlabeled : positive crops per step
    unlabeled_pool: int = 40          # unlabeled crops drawn per exemplar (sampled each step)
    shifted_negatives: float = 0.5    # share of the unlabeled batch that are off-centre exemplars
    shift_range: tuple = (0.35, 0.6)  # their displacement, in boxes (IoU 0.5 allows 1/3)
    rotations: bool = True            # exemplars also at 90, 180, 270 degrees (the bank)
    augment: bool = True              # each step: exact views (90-degree turns, flips, shifts)
    max_shift: int = 2                # px of the model input, for augmented exemplars
    freeze_blocks: int = -1           # frozen encoder blocks; -1 = half when pretrained (paper)
    student_steps: int = 300          # training steps of the dense student (pick --student); 0 = none
    student_precision: str = "fp32"   # the student's convolutions but its last: fp32 | auto (bf16 on
                                      # GPUs and native-bf16 CPUs: 52-66% of the time on 2 cores,
                                      # F1 0.006-0.010 lower on three sets) | bf16
    highpass: float = 4.0
    lowpass: float = 0.03
    film_edges: bool = True           # background per side of a carbon-film edge (data.film)
    pixel_size: float = 0.0           # Å/px of the micrographs, recorded for pick (0 = the headers'
                                      # of those holding exemplars)
    checkpoint_every: int = 100
    device: str = "auto"
    compile: bool = False
    seed: int = 0


@dataclass(frozen=True)
class PickConfig:
    """Picking with a fine-tuned model (``fewshotpicker pick``). Lengths in micrograph px."""
    model: str = ""                   # folder or model.pt of a 'train' run
    stride: float = 0.0               # px between windows (0 = box / 5, the paper's 28 for ~150)
    coarse: int = 1                   # 2 = fast: every 2nd window first, the rest only near its peaks
    student: float = 0.0              # > 0: the student cascade, re-scoring this share of its peaks
    student_check: bool = True        # student 0, threshold auto: keep the lower of the cutoffs fitted
                                      # to the encoder's peaks and to the student cascade's
    min_distance: float = 0.0         # px between picks (0 = the particle radius, box / 2)
    shoulder_reach: float = 1.5       # boxes: drop a peak on the flank of a higher one this near (0 = off)
    shoulder_dip: float = 0.4         # ... unless the score falls by this share of its height between them
    max_contrast: float = 2.5         # drop peaks whose window's standard deviation exceeds this many
                                      # times the exemplars' median (ice, carbon, aggregates); 0 = off
    surround: float = 0.5             # rank picks against their surround: each score (Fisher z) less this
                                      # times its surround's excess (mean score 0.75 box away, over the
                                      # micrograph's median); the cutoff's count is kept; 0 = off
    max_overlap: float = 0.01         # an automatic cutoff rises until at most this share of the picks
                                      # overlaps a higher candidate (centres < 0.75 box); 0 = off
    crowded: bool = False             # crowded micrographs: an automatic cutoff may come down to the
                                      # valley above the background when the picks that adds do not
                                      # overlap higher candidates
    threshold: str = "auto"           # auto (anchored mixture) | gmm | otsu2 | density (CryoMAE) | quantile | number
    k: int = 10                       # neighbours of the density cutoff
    quantile: float = 0.9             # global quantile of candidate scores when threshold=quantile
    exclude_border: float = 0.0       # px kept free at the edges
    pixel_size: float = 0.0           # Å/px of these micrographs (0 = each header's, only compared
                                      # with the model's); given and more than 2% from the model's,
                                      # they are picked at the model's scale (its box rescaled)
    model_pixel_size: float = 0.0     # Å/px the model was trained at (0 = as its checkpoint records)
    edge_windows: bool = False        # also windows centred up to the edges (image extended by
                                      # reflection); False: only windows wholly inside
    batch_size: int = 0               # windows per encoder batch (0 = 1024 on a GPU, 128 on a CPU; shrinks on out-of-memory)
    device: str = "auto"              # auto | cpu | cuda | cuda:N | a list: 0,1,2
    precision: str = "auto"           # auto (bf16 on GPUs and CPUs with native bf16) | bf16 | fp32
    compile: bool = False             # GPU: compile the scoring encoder's norms (5-10 s once)
    plots: bool = False               # also save a PNG histogram per micrograph
    candidates: bool = False          # also write candidates.star: every peak, below the cutoff too
    only_unfinished: bool = False     # keep micrographs a run with the same settings and model
                                      # finished in this output folder (RELION's only_do_unfinished)
    seed: int = 0


@dataclass(frozen=True)
class PruneConfig:
    """PU-classifier pruning of picks from any picker (``fewshotpicker prune``).

    Positives are the exemplars (plus confirmed picks, if given), the
    unlabeled set is the picks to judge. Lengths in micrograph px.
    """
    box: float = 0.0                  # particle box, px (0 = the model's box)
    model: str = ""                   # folder or model.pt of 'train' or 'pretrain' ("" = new)
    model_size: str = "tiny"          # only without --model
    prior: str = "auto"               # share of the picks that are particles: auto | a number
    threshold: str = "auto"           # probability to keep: auto (mixture of logits) | bayes (0.5) | a number
    steps: int = 300
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup: float = 0.05
    weight_decay: float = 0.05
    train_blocks: int = 1             # last encoder blocks trained with the head
    loss: str = "logistic"            # nnPU surrogate: logistic (Topaz) | sigmoid (Kiryo; saturated here)
    beta: float = 0.0                 # nnPU: ascend when the negative risk < -beta
    gamma: float = 1.0                # nnPU: scale of that ascent
    batch_positive: int = 32          # exemplar views per step
    batch_unlabeled: int = 96         # picks per step
    max_unlabeled: int = 20000        # picks held in memory for training (all are scored)
    max_shift: int = 2                # px of the model input, for random views
    tta: bool = True                  # average the logit over 4 rotations when scoring
    gallery: int = 12                 # crops per gallery row
    checkpoint_every: int = 100
    device: str = "auto"
    precision: str = "auto"           # scoring: auto | bf16 | fp32
    seed: int = 0


@dataclass(frozen=True)
class Pick3dConfig:
    """Tomogram picking from a few labels (``fewshotpicker pick3d``). Lengths in voxels."""
    box: float = 0.0                  # particle diameter, voxels (required)
    model: str = ""                   # a trained pick3d model.pt: skip training
    size: str = "small"               # U-Net width: tiny | small | base
    steps: int = 600
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: float = 0.05
    weight_decay: float = 1e-4
    crop: int = 48                    # cubic training crops (multiple of 4; clipped to the volume)
    batch_labeled: int = 2            # crops around labels per step
    batch_unlabeled: int = 2          # random crops per step (pseudo-labels)
    semi: bool = True                 # teacher-student; False = supervised only
    ema: float = 0.99                 # teacher decay
    views: int = 4                    # views that must agree on a pseudo-label (max 6)
    pseudo_threshold: float = 0.4     # x the teacher's response at the labelled centres
    unsup_weight: float = 1.0         # weight of the pseudo-label loss after its ramp
    unsup_start: float = 0.25         # fraction of the steps before pseudo-labels are used
    unlabeled_weight: float = 0.25    # weight of background voxels (they may hide particles)
    dropblock: int = 2                # wedge-shaped blocks dropped per training crop
    sigma: float = 0.0                # target Gaussian, voxels (0 = box / 8)
    min_distance: float = 0.0         # between picks (0 = the particle radius)
    threshold: str = "auto"           # auto (mixture of peak scores) | a probability
    species_by: str = "profile"       # profile (nearest labelled radial profile) | network
    tile: int = 96                    # picking tile core side (memory: tiles, not tomograms)
    checkpoint_every: int = 100
    device: str = "auto"
    seed: int = 0

"""``fewshotpicker prune``: remove false positives from any picker's picks with a PU classifier.

Positives are the exemplars (plus ``--confirmed`` picks), the unlabeled set is
the picks to judge (STAR, autopick folder, .box or Topaz file). The classifier
is the encoder of a ``train`` or ``pretrain`` model (last blocks and a small
head trained with the non-negative PU risk). Writes ``scores.star`` (every
pick with its probability; class 1 kept, 2 rejected), ``kept/`` and
``rejected/`` (RELION autopick folders), ``gallery.png`` (the most confidently
rejected, the borderline and the most confidently kept crops),
``probabilities.png``, ``model.pt`` and ``summary.json``. Resumes when run again.
"""
from __future__ import annotations

import argparse

from ..config import PruneConfig
from ..device import PRECISIONS
from ..io.coordinates import read_coordinates
from ..models.mae import MODEL_SIZES
from ..pruning.run import prune
from .common import (IMAGES_HELP, add_config_argument, expand_images, log, progress, start_run,
                     write_summary)

FLAGS = {"box": "box", "model": "model", "model_size": "model_size", "prior": "prior",
         "threshold": "threshold", "steps": "steps", "lr": "lr", "train_blocks": "train_blocks",
         "loss": "loss", "beta": "beta", "max_unlabeled": "max_unlabeled", "device": "device",
         "precision": "precision", "checkpoint_every": "checkpoint_every", "seed": "seed"}


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="remove false positives from any picker's picks (nnPU)",
                       description=__doc__)
    p.add_argument("--micrographs", nargs="+", required=True,
                   help="micrographs holding the picks and the exemplars: " + IMAGES_HELP)
    p.add_argument("--picks", required=True, help="picks to judge: STAR file, autopick "
                                                  "folder, .box or Topaz file")
    p.add_argument("--exemplars", required=True, help="exemplar particles (positives)")
    p.add_argument("--confirmed", help="more positives: picks a user confirmed")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--box", type=float, help="particle box in px (default: the model's)")
    p.add_argument("--model", help="folder or model.pt of 'train' or 'pretrain' "
                                   "(recommended; without it the encoder starts untrained)")
    p.add_argument("--model-size", choices=sorted(MODEL_SIZES),
                   help="encoder size without --model (default tiny)")
    p.add_argument("--prior", help="share of the picks that are particles: auto (default, "
                                   "estimated) or a number in (0, 1)")
    p.add_argument("--threshold", help="probability to keep a pick: auto (default: a mixture of "
                                       "the scores cuts between two classes cleanly apart, "
                                       "else every pick is kept), bayes (0.5) or a number in "
                                       "(0, 1)")
    p.add_argument("--steps", type=int, help="training steps (default 300)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 3e-4)")
    p.add_argument("--train-blocks", type=int, help="last encoder blocks trained (default 1)")
    p.add_argument("--loss", choices=["sigmoid", "logistic"],
                   help="nnPU surrogate loss (default logistic)")
    p.add_argument("--beta", type=float, help="nnPU clipping level (default 0)")
    p.add_argument("--max-unlabeled", type=int, help="picks used for training (all are scored)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, help="scoring precision")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--seed", type=int)
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mics = expand_images(args.micrographs)
    picks = read_coordinates(args.picks)
    exemplars = read_coordinates(args.exemplars)
    confirmed = read_coordinates(args.confirmed) if args.confirmed else None
    cfg, out = start_run("prune", PruneConfig, args, FLAGS)
    summary = prune(cfg, mics, picks, exemplars, out, confirmed, (args.picks, args.exemplars),
                    progress)
    write_summary(out, summary)
    log.info("%d picks: %d kept, %d rejected; kept picks in %s, gallery %s", summary["picks"],
             summary["kept"], summary["rejected"], summary["files"]["kept"],
             summary["files"]["gallery"])
    return 0

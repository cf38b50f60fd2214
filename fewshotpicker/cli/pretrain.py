"""``fewshotpicker pretrain``: self-supervised MAE pretraining on unlabeled micrographs.

Any number of micrograph sets (globs or folders); no labels, no download. An
interrupted run continues from its last checkpoint when run again with the
same output folder. Several GPUs share one run when torchrun starts it:
``torchrun --nproc-per-node 4 -m fewshotpicker pretrain ...`` (each process
computes a quarter of every batch; the steps are those of one process).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import PretrainConfig
from ..models.mae import MODEL_SIZES
from ..training.distributed import launch_from_environment
from ..training.pretrain import pretrain
from .common import (IMAGES_HELP, add_training_arguments, build_config, expand_images, log,
                     progress, start_run, write_summary)

FLAGS = {"model": "model", "box": "box", "regions": "regions_per_micrograph",
         "max_regions": "max_regions",
         "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "mask_ratio": "mask_ratio",
         "checkpoint_every": "checkpoint_every", "film_edges": "film_edges",
         "device": "device", "compile": "compile", "seed": "seed"}


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="MAE pretraining on unlabeled micrographs",
                       description=__doc__)
    p.add_argument("--micrographs", nargs="+", required=True,
                   help=IMAGES_HELP + " (any number of sets)")
    p.add_argument("--out", required=True, help="output folder (model.pt, curves, checkpoint)")
    p.add_argument("--model", choices=sorted(MODEL_SIZES), help="model size (default tiny)")
    p.add_argument("--box", type=float, help="region side in px, best the particle box "
                                             "(default: the model input size)")
    p.add_argument("--regions", type=int, help="random regions per micrograph (default 32)")
    p.add_argument("--max-regions", type=int,
                   help="regions held in memory for the whole run (default 20000; the paper "
                        "pretrained on 21000): of more micrographs than give that many, a "
                        "seeded draw is read; 0 = all (224 px regions take 200 kB each)")
    p.add_argument("--epochs", type=int, help="passes over all regions (default 20); steps = "
                   "micrographs x regions x epochs / batch; 3200 gave a good encoder")
    p.add_argument("--batch-size", type=int, help="regions per step (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-4)")
    p.add_argument("--mask-ratio", type=float, help="fraction of patches hidden (default 0.75)")
    add_training_arguments(p, compile_help="torch.compile the model (GPU, long runs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mics = expand_images(args.micrographs, distinct_names=False)
    launch = launch_from_environment()
    if not launch.main:  # rank 0 of a torchrun launch records, reports and writes
        log.setLevel(logging.ERROR)  # its warnings would repeat rank 0's
        pretrain(build_config(PretrainConfig, args, FLAGS), mics, Path(args.out), None, launch)
        return 0
    cfg, out = start_run("pretrain", PretrainConfig, args, FLAGS)
    summary = pretrain(cfg, mics, out, progress, launch)
    write_summary(out, summary)
    log.info("pretrained for %d steps on %d regions (final loss %.4f)%s; model %s",
             summary["steps"], summary["regions"], summary["final_loss"],
             f", {len(summary['skipped'])} unreadable micrograph(s) skipped (named in "
             f"summary.json)" if summary["skipped"] else "", out / "model.pt")
    return 0

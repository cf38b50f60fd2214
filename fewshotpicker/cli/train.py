"""``fewshotpicker train``: fine-tune on ~15 exemplars with MSE + beta * SCS (CryoMAE).

Writes ``model.pt`` with the exemplar feature bank that ``pick`` uses, loss
curves (``losses.png``, ``losses.json``) and ``summary.json`` (including how
far exemplar features stand from unlabeled ones). Resumes when run again.
"""
from __future__ import annotations

import argparse

from ..config import TrainConfig
from ..device import PRECISIONS
from ..io.coordinates import read_coordinates
from ..models.mae import MODEL_SIZES
from ..training.finetune import finetune
from .common import (IMAGES_HELP, add_training_arguments, expand_images, log, progress, start_run,
                     write_summary)

FLAGS = {"box": "box", "model": "model", "pretrained": "pretrained", "steps": "steps",
         "lr": "lr", "beta": "beta", "alpha": "alpha", "tau": "tau", "prior": "prior",
         "mask_ratio": "mask_ratio", "freeze_blocks": "freeze_blocks",
         "student_steps": "student_steps", "student_precision": "student_precision",
         "input_size": "input_size",
         "exemplars_per_step": "exemplars_per_step", "max_micrographs": "max_micrographs",
         "scs_features": "scs_features", "checkpoint_every": "checkpoint_every",
         "film_edges": "film_edges", "pixel_size": "pixel_size", "device": "device",
         "compile": "compile", "seed": "seed"}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune on exemplars (MSE + PU self-cross similarity)",
                       description=__doc__)
    p.add_argument("--micrographs", nargs="+", required=True,
                   help="micrographs holding the exemplars (others add unlabeled regions, "
                        "--max-micrographs in all): "
                        + IMAGES_HELP)
    p.add_argument("--exemplars", required=True, help="STAR/.box/Topaz file of exemplar "
                                                      "centres (rlnMicrographName, X, Y)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--box", type=float, help="particle box in px (required)")
    p.add_argument("--pretrained", help="folder or model.pt from 'pretrain' (recommended)")
    p.add_argument("--model", choices=sorted(MODEL_SIZES),
                   help="model size when training from scratch (default tiny)")
    p.add_argument("--steps", type=int, help="optimisation steps (default 300)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    p.add_argument("--beta", type=float, help="weight of the SCS loss (default 5)")
    p.add_argument("--alpha", type=float, help="cross/self balance in SCS (default 0.5; the paper 0.7)")
    p.add_argument("--tau", type=float, help="floor of the SCS loss (default 0.02)")
    p.add_argument("--prior", type=float, help="PU class prior pi (default 0.018; 0 = plain)")
    p.add_argument("--mask-ratio", type=float, help="fraction of patches hidden (default 0.75)")
    p.add_argument("--freeze-blocks", type=int, help="encoder blocks kept frozen (default -1 "
                                                     "= half, as in the paper; 0 = none)")
    p.add_argument("--student-steps", type=int,
                   help="after fine-tuning, train the dense student that 'pick --student' uses "
                        "on the model's own score maps of these micrographs for this many steps "
                        "(default 300; on two CPU cores 1-3 min, 163 s for 1024^2 micrographs "
                        "with a 40 px box: it grows with the micrographs' area once a box is "
                        "scaled to the model input, not with their number); 0 = none")
    p.add_argument("--student-precision", choices=PRECISIONS,
                   help="arithmetic of the student's convolutions but its last, which stays "
                        "fp32 (default fp32). auto: bf16 on GPUs and on CPUs with native bf16 "
                        "(AVX512-BF16 or AMX), fp32 elsewhere; on two such cores it took 52-66%% "
                        "of the time (score maps included) and picked with F1 0.006-0.010 "
                        "lower on three data sets")
    p.add_argument("--input-size", type=int,
                   help="model input, px, that a box is scaled to for fine-tuning and picking "
                        "(default: the pretrained model's, 224 for base, 64 for tiny); a "
                        "multiple of the patch (16 for base, 8 for tiny). Three quarters of it "
                        "(160 for base, 48 for tiny) about halves the cost of every window, "
                        "for some F1 (tiny on EMPIAR-10028: 0.831 at 48 against 0.848 at 64; "
                        "0.769 at 32)")
    p.add_argument("--exemplars-per-step", type=int,
                   help="with more exemplars than this, each step trains on this many drawn "
                        "afresh (default 64), so that a step's cost stays bounded; 0 = all "
                        "of them every step")
    p.add_argument("--max-micrographs", type=int,
                   help="micrographs read for training (default 16): every one holding "
                        "exemplars, then a seeded draw of the others for unlabeled regions and "
                        "the student, so a whole data set given (a RELION micrograph list) "
                        "costs what 16 do; 0 = all of them (the student then holds every one "
                        "in memory)")
    p.add_argument("--pixel-size", dest="pixel_size", type=float,
                   help="Å per pixel of these micrographs, recorded in the model so that 'pick "
                        "--pixel-size' can pick micrographs of another pixel size at the "
                        "model's scale (default: the median that the headers of the "
                        "micrographs holding exemplars state; none if they state none)")
    p.add_argument("--scs-features", choices=["unmasked", "masked"],
                   help="features the SCS loss compares (default unmasked, as in picking)")
    add_training_arguments(p, compile_help="torch.compile the model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    mics = expand_images(args.micrographs)
    exemplars = read_coordinates(args.exemplars)
    cfg, out = start_run("train", TrainConfig, args, FLAGS)
    summary = finetune(cfg, mics, exemplars, out, args.exemplars, progress)
    write_summary(out, summary)
    log.info("fine-tuned for %d steps on %d exemplars; exemplar/unlabeled cosine gap %.3f; "
             "model %s", summary["steps"], summary["exemplars"], summary["cos_gap"],
             out / "model.pt")
    return 0

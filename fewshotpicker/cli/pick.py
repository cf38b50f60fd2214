"""``fewshotpicker pick``: score every sliding window against the exemplars and pick peaks.

Writes RELION ``<micrograph>_autopick.star`` files with ``autopick.star``, one
``thresholds/<micrograph>.json`` per micrograph (cutoff and score histogram;
PNG too with ``--plots``), ``summary.json`` and ``summary.png`` (picks and cutoff
of every micrograph; those with unusually many or few picks are named). A
micrograph that fails is reported and the others still finish.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import PickConfig
from ..device import PRECISIONS
from ..errors import InputError, none_picked
from ..picking.threshold import resolved_rule
from ..picking.run import pick_micrographs
from .common import (IMAGES_HELP, add_config_argument, expand_images, log, progress, start_run,
                     write_summary)

FLAGS = {"model": "model", "stride": "stride", "coarse": "coarse", "student": "student",
         "student_check": "student_check",
         "min_distance": "min_distance",
         "shoulder_reach": "shoulder_reach", "shoulder_dip": "shoulder_dip",
         "max_contrast": "max_contrast", "surround": "surround", "max_overlap": "max_overlap",
         "crowded": "crowded",
         "threshold": "threshold", "k": "k", "quantile": "quantile",
         "exclude_border": "exclude_border", "pixel_size": "pixel_size",
         "model_pixel_size": "model_pixel_size", "edge_windows": "edge_windows",
         "batch_size": "batch_size", "device": "device",
         "precision": "precision", "compile": "compile", "plots": "plots",
         "candidates": "candidates", "only_unfinished": "only_unfinished"}


def add_parser(sub) -> None:
    p = sub.add_parser("pick", help="pick particles with a fine-tuned model", description=__doc__)
    p.add_argument("--model", help="folder or model.pt of a 'train' run (required)")
    p.add_argument("--micrographs", nargs="+", required=True, help=IMAGES_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--stride", type=float, help="px between windows (default box / 5)")
    p.add_argument("--coarse", type=int,
                   help="the fast setting: 2 scores every 2nd window in each direction first "
                        "and the skipped ones only around that map's peaks and highest scores "
                        "(about 55%% of the windows); 1 scores every window (default); 3 or more "
                        "misses the narrow score peaks (F1 0.76 against 0.85 on EMPIAR-10028)")
    p.add_argument("--student", type=float,
                   help="the fastest setting: the model's distilled student scores the whole "
                        "micrograph in one convolutional pass and the encoder re-scores this "
                        "share of its peaks, the best by the student's score (0.4 measured "
                        "best; a fiftieth of the encoder passes); 0 = off (default)")
    p.add_argument("--no-student-check", dest="student_check", action="store_const",
                   const=False,
                   help="with --threshold auto and a model that holds a student (the default "
                        "since --student-steps 300), every-window and --coarse picking fit the "
                        "cutoff twice, to the encoder's peaks and to the student cascade's, and "
                        "keep the lower: a fit that splits the particles into two classes and "
                        "cuts between them seldom does so in both (about 2%% more encoder "
                        "windows); this flag keeps the encoder's fit alone")
    p.add_argument("--min-distance", type=float, help="px between picks (default box / 2)")
    p.add_argument("--shoulder-reach", type=float,
                   help="boxes: a peak on the flank of a higher peak this near is dropped "
                        "unless the score dips between them (default 1.5; 0 = off)")
    p.add_argument("--shoulder-dip", type=float,
                   help="the dip, as a share of the lower peak's height above the map's "
                        "median, that makes two peaks two particles (default 0.4)")
    p.add_argument("--max-contrast", type=float,
                   help="drop peaks whose window's standard deviation (before normalisation) "
                        "exceeds this many times the exemplars' median: ice crystals, carbon "
                        "edges and aggregates, which the model can mistake for particles "
                        "(RELION's 'max stddev noise', set by the exemplars; default 2.5; 0 = off)")
    p.add_argument("--surround", type=float,
                   help="rank the picks a cutoff keeps against their surround: each score, in "
                        "Fisher z, loses this many times how far the mean score 0.75 box "
                        "around it lies above the micrograph's typical surround, so a peak in "
                        "a region that scores high all over ranks below one that stands out; "
                        "the cutoff still sets how many picks; the corrected score is the "
                        "figure of merit written out (default 0.5; 0 = off)")
    p.add_argument("--max-overlap", type=float,
                   help="an automatic cutoff rises until at most this share of a micrograph's "
                        "picks (at least one) lies closer than 0.75 box to a higher candidate: "
                        "two such picks cannot both be particles, and many of them mean the "
                        "cut reaches into the background beside the particles (low SNR); "
                        "default 0.01; 0 = off; a fixed threshold is never changed")
    p.add_argument("--crowded", action="store_const", const=True,
                   help="for crowded micrographs (particles touching): an automatic cutoff may "
                        "come down to the valley between the background's scores and the "
                        "particles', when no more than 5%% of the picks that adds lie closer "
                        "than 0.75 box to a higher candidate; on a simulated set covering 40%% "
                        "of the area F1 rose from 0.937 to 0.970; off by default, since on "
                        "EMPIAR-10028 (not crowded) it cost 0.013")
    p.add_argument("--threshold", help="auto (default: a mixture of 2 to 4 classes of each "
                                       "micrograph's scores, the particle class placed where "
                                       "the exemplars score each other), gmm (a 2- or "
                                       "3-class mixture chosen by BIC), otsu2 (two-level "
                                       "Otsu), density (CryoMAE's cutoff), quantile (one "
                                       "global cut) or a score")
    p.add_argument("--k", type=int, help="neighbours of the density cutoff (default 10)")
    p.add_argument("--quantile", type=float, help="with --threshold quantile (default 0.9)")
    p.add_argument("--exclude-border", type=float, help="px kept free at the edges")
    p.add_argument("--pixel-size", dest="pixel_size", type=float,
                   help="Å per pixel of these micrographs (default: each header's, only "
                        "compared with the model's, with a warning when they differ). Given "
                        "and more than 2%% from the pixel size the model was trained at, the "
                        "micrographs are picked at the model's scale: its box, and with it "
                        "the windows, stride and distances, rescaled to these pixels; "
                        "coordinates stay in these micrographs' pixels")
    p.add_argument("--model-pixel-size", dest="model_pixel_size", type=float,
                   help="Å per pixel of the micrographs the model was trained on (default: "
                        "what the model records; for a model that records none)")
    p.add_argument("--edge-windows", dest="edge_windows", action="store_const", const=True,
                   help="also score windows centred within half a box of an edge, the "
                        "micrograph extended by reflection (as training extends exemplars "
                        "there), so particles whose box crosses the edge can be picked; RELION "
                        "extracts such boxes by repeating the edge pixels. Off by default: "
                        "only windows wholly inside")
    p.add_argument("--batch-size", type=int,
                   help="windows per encoder batch (default 0: 1024 on a GPU, 128 on a CPU; "
                        "halves by itself when the GPU runs out of memory)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or a list such as 0,1")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="encoder arithmetic: auto (default: bf16 on GPUs and on CPUs with "
                        "native bf16, else fp32), bf16 or fp32")
    p.add_argument("--compile", action="store_const", const=True,
                   help="GPU: compile the encoder's normalisation steps first (5-10 s once per "
                        "device, less once cached); then the encoder runs about 15%% and a "
                        "micrograph about 13%% faster (base model, H200: 1.45 s instead of 1.67 s "
                        "on 4096 x 4096), so it pays from a few dozen micrographs")
    p.add_argument("--plots", action="store_const", const=True,
                   help="save a score histogram PNG per micrograph")
    p.add_argument("--candidates", action="store_const", const=True,
                   help="also write candidates.star with every peak and its score, below the "
                        "cutoff too (for precision-recall curves)")
    p.add_argument("--only-unfinished", action="store_const", const=True,
                   help="keep the micrographs that a run with the same settings and the same "
                        "model file already picked into --out (their STAR files and records "
                        "are whole) and pick only the rest, e.g. after an interrupted run or "
                        "when more micrographs arrive; each micrograph's files are written as "
                        "soon as it is picked")
    add_config_argument(p)
    p.set_defaults(func=run)


def refuse_bad_settings(cfg: PickConfig) -> None:
    """Raise InputError (one sentence naming the flag) for a setting no run could use, before
    any micrograph is read (beyond the ranges of :data:`~fewshotpicker.config.RANGES`)."""
    if not cfg.model:
        raise InputError("A model is required (--model, the folder of a 'train' run).")
    resolved_rule(cfg.threshold)  # refuses an unknown rule before any work
    if cfg.coarse > 2:
        log.warning("--coarse %d: a grid that coarse misses the narrow score peaks (on "
                    "EMPIAR-10028 F1 0.76 at 3 against 0.85 at 2); 1 or 2 is advised.",
                    cfg.coarse)
    if cfg.only_unfinished and (cfg.threshold == "quantile" or cfg.candidates):
        raise InputError("--only-unfinished cannot keep micrographs picked before with "
                         + ("--threshold quantile, whose one cutoff needs every micrograph's "
                            "candidates." if cfg.threshold == "quantile" else
                            "--candidates, whose table needs every micrograph's peaks, which "
                            "are not saved."))
    if not (cfg.max_contrast == 0 or cfg.max_contrast >= 1):  # also refuses nan
        raise InputError(f"--max-contrast {cfg.max_contrast}: must be 0 (off) or at least 1 "
                         f"(times the exemplars' window contrast; 2.5 by default).")
    if not 0 <= cfg.surround <= 10:  # also refuses nan
        raise InputError(f"--surround {cfg.surround}: must be 0 (off) or a weight up to 10 "
                         f"(0.5 by default).")


def log_summary(summary: dict, out: Path) -> None:
    """Say how many picks, dropped peaks and failures the run had, and which micrographs had
    unusually many or few picks."""
    counts = [m["picks"] for m in summary["micrographs"].values()]
    dropped = sum(m["dropped_for_contrast"] for m in summary["micrographs"].values())
    log.info("%d picks on %d micrographs (%.1f per micrograph)%s%s; index %s",
             summary["n_picks"], len(counts), sum(counts) / max(1, len(counts)),
             f", {dropped} high-contrast peaks (ice, carbon, aggregates) dropped"
             if dropped else "",
             f", {len(summary['failed'])} failed" if summary["failed"] else "",
             out / "autopick.star")
    if summary["unusual"]:
        shown = ", ".join(summary["unusual"][:5]) + (" ..." if len(summary["unusual"]) > 5
                                                     else "")
        log.warning("%d micrograph(s) with unusually many or few picks (see summary.png): %s",
                    len(summary["unusual"]), shown)


def run(args: argparse.Namespace) -> int:
    mics = expand_images(args.micrographs)
    cfg, out = start_run("pick", PickConfig, args, FLAGS, check=refuse_bad_settings)
    summary = pick_micrographs(cfg, mics, out, lambda it, total: progress(it, "pick", total))
    write_summary(out, summary)  # when none was picked, it still names each one and why
    if not summary["micrographs"]:
        raise none_picked(summary["failed"])
    log_summary(summary, out)
    return 0

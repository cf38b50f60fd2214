"""``fewshotpicker evaluate``: score picks against ground truth under every convention."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import EvaluateConfig
from ..errors import InputError
from ..evaluate import evaluate_all, format_table, save_report
from ..evaluate.conventions import CONVENTIONS
from ..io.coordinates import read_coordinates
from .common import add_config_argument, expand_images, log, start_run

FLAGS = {"box": "box", "radius": "radius", "convention": "conventions"}


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score picks against ground truth", description=__doc__)
    p.add_argument("--picks", required=True,
                   help="picks: autopick.star, a folder of STAR/.box files, a STAR table, "
                        "or a Topaz .txt")
    p.add_argument("--truth", required=True, help="ground truth in any of the same forms")
    p.add_argument("--box", type=float, help="box side in px (the particle diameter)")
    p.add_argument("--radius", type=float, help="matching radius for topaz/czii, px "
                                                "(default box / 2)")
    p.add_argument("--convention", nargs="+", choices=sorted(CONVENTIONS),
                   help="conventions to report (default cryomae hydrapicker topaz)")
    p.add_argument("--micrographs", nargs="+",
                   help="the micrographs to evaluate, exactly: truth and picks on others are "
                        "left out, and ones with no particles or no picks count (default: "
                        "every micrograph of the truth)")
    p.add_argument("--per-micrograph", action="store_true", help="print a row per micrograph")
    p.add_argument("--out", help="folder for metrics.json and precision_recall.png "
                                 "(default: beside the picks)")
    p.add_argument("--label", default="picks", help="name of the picker in the plot legend")
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    picks = read_coordinates(args.picks)
    truth = read_coordinates(args.truth)
    picks_path = Path(args.picks)
    cfg, out = start_run("evaluate", EvaluateConfig, args, FLAGS, args.out or
                         (picks_path if picks_path.is_dir() else picks_path.parent) / "evaluation")
    if cfg.box == 0:
        raise InputError("The box size (--box, px) is required to match picks to particles.")
    mics = [str(m) for m in expand_images(args.micrographs)] if args.micrographs else None
    report = evaluate_all(picks, truth, cfg.box, cfg.conventions, cfg.radius or None, mics)
    if any(report["left_out"].values()):
        log.info("left out %(truth)d true particles and %(picks)d picks on micrographs that "
                 "--micrographs does not name", report["left_out"])
    print(format_table(report, args.per_micrograph))
    paths = save_report(report, out, args.label)
    log.info("wrote %s", ", ".join(paths.values()))
    return 0

"""``fewshotpicker dog``: the difference-of-Gaussians baseline picker."""
from __future__ import annotations

import argparse

from ..config import DogConfig
from ..errors import InputError, none_picked
from ..io.coordinates import write_autopick
from ..picking.run_dog import dog_pick_micrographs
from ..picking.threshold import fixed_rule
from .common import (IMAGES_HELP, add_config_argument, expand_images, log, progress, start_run,
                     write_summary)

FLAGS = {"diameter": "diameter", "threshold": "threshold", "min_distance": "min_distance",
         "exclude_border": "exclude_border"}


def add_parser(sub) -> None:
    p = sub.add_parser("dog", help="pick with the difference-of-Gaussians baseline",
                       description=__doc__)
    p.add_argument("--micrographs", nargs="+", required=True, help=IMAGES_HELP)
    p.add_argument("--diameter", type=float, required=False,
                   help="particle diameter in px (required unless in --config)")
    p.add_argument("--threshold", help="'auto' (default) or a height in robust-std units")
    p.add_argument("--min-distance", type=float, help="px between picks (default the radius)")
    p.add_argument("--exclude-border", type=float, help="px kept free at the edges")
    p.add_argument("--out", required=True, help="output folder for the STAR files")
    add_config_argument(p)
    p.set_defaults(func=run)


def refuse_bad_settings(cfg: DogConfig) -> None:
    """Raise InputError (one sentence naming the flag) for a setting no run could use (the
    ranges of numbers are checked with the config)."""
    if cfg.diameter == 0:
        raise InputError("The particle diameter (--diameter, px) is required.")
    if cfg.threshold != "auto":
        try:
            height = float(cfg.threshold)
        except ValueError:
            raise InputError(f"--threshold {cfg.threshold!r}: must be 'auto' or a height in "
                             f"robust standard deviations.") from None
        fixed_rule(height)


def run(args: argparse.Namespace) -> int:
    mics = expand_images(args.micrographs)
    cfg, out = start_run("dog", DogConfig, args, FLAGS, check=refuse_bad_settings)
    picks, thresholds, failed = dog_pick_micrographs(mics, cfg,
                                                     lambda it: progress(it, "dog"))
    done = [str(m) for m in mics if str(m) not in failed]
    counts = picks.groupby("micrograph").size().to_dict() if len(picks) else {}
    summary = {"micrographs": {m: {"picks": int(counts.get(m, 0)), "threshold": thresholds[m]}
                               for m in done},
               "failed": failed, "n_picks": int(len(picks))}
    if not done:  # the summary still names each micrograph and why
        write_summary(out, summary)
        raise none_picked(failed)
    index = write_autopick(picks, out, done)
    write_summary(out, summary)
    log.info("%d picks on %d micrographs%s; index %s", len(picks), len(done),
             f", {len(failed)} failed" if failed else "", index)
    return 0

"""``fewshotpicker pick3d``: pick tomograms after training a 3D heatmap detector on a few labels.

Labels are particle centres (RELION 4 voxels ``rlnCoordinateX/Y/Z`` or RELION 5
centred Å) with ``rlnTomoName`` and, for several species, ``rlnClassNumber``.
Training is teacher-student (``--supervised-only`` for the baseline); ``--model``
reuses a trained detector. Tomograms may come as RELION 5's ``tomograms.star``; the
picks then carry its ``rlnTomoName``. Writes ``picks3d.star`` (RELION 5, centred Å),
``picks3d_relion4.star`` (voxels), ``model.pt``, loss curves and ``summary.json``.
"""
from __future__ import annotations

import argparse

from ..config import Pick3dConfig
from ..io.coordinates import read_tomo_coordinates
from ..tomo.data import open_tomograms
from ..tomo.run import pick3d
from .common import (add_config_argument, expand_images, listed_names, log, progress, start_run,
                     write_summary)

FLAGS = {"box": "box", "model": "model", "size": "size", "steps": "steps", "lr": "lr",
         "crop": "crop", "threshold": "threshold", "tile": "tile", "views": "views",
         "min_distance": "min_distance", "device": "device", "seed": "seed", "semi": "semi",
         "checkpoint_every": "checkpoint_every", "pseudo_threshold": "pseudo_threshold",
         "species_by": "species_by"}


def add_parser(sub) -> None:
    p = sub.add_parser("pick3d", help="pick tomograms from a few labelled particles",
                       description=__doc__)
    p.add_argument("--tomograms", nargs="+", required=True,
                   help="MRC tomograms: files, globs, folders or RELION 5's tomograms.star")
    p.add_argument("--labels", help="a few labelled centres (STAR); optional with --model "
                                    "(then only left out of the cutoff's fit)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--box", type=float, help="particle diameter in voxels (required)")
    p.add_argument("--model", help="a trained pick3d model.pt (or its folder): skip training")
    p.add_argument("--size", choices=["tiny", "small", "base"], help="U-Net width (small)")
    p.add_argument("--steps", type=int, help="training steps (default 600)")
    p.add_argument("--lr", type=float)
    p.add_argument("--crop", type=int, help="training crop side, voxels (default 48)")
    p.add_argument("--views", type=int, help="views a pseudo-label must agree on (4)")
    p.add_argument("--pseudo-threshold", type=float,
                   help="a pseudo-label needs this fraction of the teacher's response at the "
                        "labelled particles, in every view (0.4)")
    p.add_argument("--supervised-only", dest="semi", action="store_const", const=False,
                   help="train on the labels alone (no teacher, no pseudo-labels), in less "
                        "than half the time; on the simulated benchmark, with one label per "
                        "species behind teacher-student (tiny U-Net) or level (small), with "
                        "two ahead (tiny) or level (small)")
    p.add_argument("--threshold", help="auto (default) or a probability")
    p.add_argument("--species-by", choices=["profile", "network"],
                   help="several species: each pick gets the species whose labelled radial "
                        "profile is nearest (profile, default) or of the detector's most "
                        "probable channel (network)")
    p.add_argument("--min-distance", type=float, help="voxels between picks (radius)")
    p.add_argument("--tile", type=int, help="picking tile side, voxels (default 96)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int)
    add_config_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths = expand_images(args.tomograms, "tomograms")
    names = listed_names(args.tomograms)
    labels = None
    if args.labels:
        tomos = open_tomograms(paths, names)
        labels = read_tomo_coordinates(args.labels, {t.key: t.shape for t in tomos},
                                       next((t.voxel_size for t in tomos if t.voxel_size), None))
    cfg, out = start_run("pick3d", Pick3dConfig, args, FLAGS)
    summary = pick3d(cfg, paths, labels, out, args.labels or "labels", progress, names)
    write_summary(out, summary)
    log.info("%d picks; mean %.1f s per tomogram", summary["picks"],
             summary["seconds_per_tomogram"])
    return 0

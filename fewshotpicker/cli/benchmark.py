"""``fewshotpicker benchmark <target>``: print figures measured in this run.

Targets:
- ``train-speed``: steps per second of pretraining and fine-tuning;
- ``features``: how well each training variant separates particles from
  background on micrographs without exemplars (AUROC), beside DoG and template
  matching, on a simulated set and, with ``--real``, the EMPIAR-10028 set.

Benchmarks report the device they ran on; nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..io.atomic import write_text_atomic
from ..models.mae import MODEL_SIZES

DEFAULT_VARIANTS = {
    "paper: alpha 0.7, 90-degree rotations only, no low-pass":
        {"alpha": 0.7, "augment": False, "lowpass": 0.0, "shifted_negatives": 0.0},
    "alpha 0.5 + exact augmentation, no low-pass": {"lowpass": 0.0, "shifted_negatives": 0.0},
    "alpha 0.5 + exact augmentation + low-pass": {"shifted_negatives": 0.0},
    "ours (defaults: + off-centre negatives)": {},
    "ours, plain SCS (prior 0)": {"prior": 0.0},
    "ours, centred features": {"centre_features": True},
    "ours, CLS token instead of mean pooling": {"pooling": "cls"},
}


def add_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="measure speed and quality; prints a table",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", choices=["train-speed", "features"])
    p.add_argument("--model", choices=sorted(MODEL_SIZES), default="tiny")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=128, help="train-speed: regions per step")
    p.add_argument("--steps", type=int, default=None,
                   help="train-speed: timed steps (10); features: fine-tuning steps (300)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--real", help="features: folder of the EMPIAR-10028 set "
                                  "(../shared/data/empiar-10028)")
    p.add_argument("--sets", default="simulated,real",
                   help="features: which data sets to run (default both; real needs --real)")
    p.add_argument("--variants", help="features: JSON {name: {TrainConfig overrides}}")
    p.add_argument("--work", default="benchmark_work", help="features: folder for runs")
    p.add_argument("--out", help="also save the figures as JSON here")
    p.set_defaults(func=run)


def _print_rows(rows: list) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
              for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def run(args: argparse.Namespace) -> int:
    if args.target == "train-speed":
        from ..benchmarks import train_speed
        result = train_speed.run(args.model, args.device, args.batch, args.steps or 10,
                                 args.compile)
        _print_rows([result])
    else:
        from ..benchmarks import features
        work = Path(args.work)
        sets = args.sets.split(",")
        datasets = [features.simulated_dataset(work / "simulated")] if "simulated" in sets else []
        if args.real and "real" in sets:
            datasets.append(features.empiar10028(Path(args.real)))
        variants = json.loads(args.variants) if args.variants else DEFAULT_VARIANTS
        result = features.run(datasets, variants, work, args.device, steps=args.steps or 300)
        _print_rows(result)
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0

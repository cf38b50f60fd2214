"""``fewshotpicker benchmark <target>``: print figures measured in this run.

Targets:
- ``train-speed``: steps per second of pretraining and fine-tuning;
- ``features``: how well each training variant separates particles from
  background on micrographs without exemplars (AUROC), beside DoG and template
  matching, on a simulated set and, with ``--real``, the EMPIAR-10028 set.
- ``picking``: precision/recall/F1 (IoU 0.5), best F1 over cutoffs, AP (IoU
  0.6), seconds per micrograph and peak memory of this picker, DoG and Topaz
  (installed into its own environment, trained on the same 15 exemplars) on
  simulated sets at several SNRs and crowdings and the real EMPIAR-10028 set,
  over several seeds (mean and spread); JSON and precision-recall plots.
- ``pruning``: precision and recall of DoG's and Topaz's picks before and after
  ``fewshotpicker prune``, on the simulated set with many lures and the real
  EMPIAR-10028 set, over several seeds; the share of lure picks removed and the
  estimated class prior beside the true share of particles.
- ``tomo``: tomogram picking from 1%, 5% and 20% labels, teacher-student against
  supervised-only, F-beta 4 and F1 (CZII rule) on the unlabelled particles,
  seconds per tomogram.
- ``tomo-memory``: peak anonymous memory and seconds of tomogram picking over a
  whole 1024 x 1024 x 300 volume (``--volume``), against the volume's size;
- ``pick-speed``: seconds per micrograph, windows/s and achieved TFLOP/s of the
  picking path (ratio to the GPU's bf16 peak where known), e.g. base on a
  4096 x 4096 micrograph with box 180 at stride 28. With ``--topaz-env``
  also whole commands: ``fewshotpicker pick`` beside ``topaz extract`` on
  the same micrographs (one, then all), start-up included.

Benchmarks report the device they ran on; nothing here is a pass/fail test.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InputError
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
    p.add_argument("target", choices=["train-speed", "features", "picking", "pruning",
                                          "tomo", "tomo-memory", "pick-speed"])
    p.add_argument("--model", choices=sorted(MODEL_SIZES), default="tiny",
                   help="MAE size (default tiny); picking and pruning pretrain one per data "
                        "set and keep each size's runs in their own folders; tomo and "
                        "tomo-memory: the U-Net width (tiny, small or base; tiny by default, "
                        "where pick3d defaults to small)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=None,
                   help="train-speed: regions per step (128); pick-speed: windows per encoder "
                        "batch (pick's default: 1024 on a GPU, 128 on a CPU)")
    p.add_argument("--steps", type=int, default=None,
                   help="train-speed: timed steps (10); features: fine-tuning steps (300)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--real", help="features, picking, pruning, pick-speed with --topaz-env: "
                                  "folder of the EMPIAR-10028 set "
                                  "(../shared/data/empiar-10028)")
    p.add_argument("--sets", default="simulated,real",
                   help="features: which data sets to run (default both; real needs "
                        "--real); picking: 'sim' (all simulated), 0-4 (one of them), 'real'; "
                        "pruning: the same (default 4,real: many lures, EMPIAR-10028)")
    p.add_argument("--variants", help="features: JSON {name: {TrainConfig overrides}}")
    p.add_argument("--work", default="benchmark_work", help="features: folder for runs")
    p.add_argument("--seeds", default="0,1,2", help="picking: exemplar/training seeds")
    p.add_argument("--exemplars", type=int, default=15,
                   help="picking, pruning: exemplars drawn from the exemplar micrograph per "
                        "seed (15, the paper's; another count keeps its runs in "
                        "seed<N>_<count>ex folders)")
    p.add_argument("--small-input", type=int, default=48,
                   help="picking: also fine-tune a model at this smaller input (train "
                        "--input-size) and pick every window with it; 0 = leave it out")
    p.add_argument("--topaz-env", default="",
                   help="picking, pruning: virtual environment for Topaz, created on first "
                        "use (e.g. benchmark_work/topaz-venv); empty = leave Topaz out; "
                        "pick-speed: also time our pick command beside Topaz's extract")
    # 500: Topaz's best ranking from 15 exemplars on the default simulated set among 250, 500,
    # 1000 and 2000 updates (AP 0.905, 0.944-0.948, 0.883, 0.812; docs/benchmarks.md "How long Topaz trains")
    p.add_argument("--topaz-updates", type=int, default=500,
                   help="picking: Topaz training updates (its own default is 10000; from 15 "
                        "exemplars it ranks best at about 500 and worse with more)")
    p.add_argument("--topaz-runs", type=int, default=1,
                   help="picking: Topaz trainings per exemplar draw, their figures averaged "
                        "(Topaz takes no training seed; its F1 at p > 0.5 moved by up to 0.20 "
                        "between two runs of one draw)")
    p.add_argument("--size", default="4096x4096", help="pick-speed: micrograph WxH in px")
    p.add_argument("--box", type=float, default=180.0, help="pick-speed: box in px")
    p.add_argument("--stride", type=float, default=0.0,
                   help="pick-speed: px between windows (default box / 5)")
    p.add_argument("--repeats", type=int, default=3, help="pick-speed: timed runs")
    p.add_argument("--coarse", default="1", help="pick-speed: 1 (every window), 2 (the fast "
                                                  "setting) or both as 1,2")
    p.add_argument("--student", type=float, default=0.4,
                   help="pick-speed: also time the student cascade (pick --student), the encoder "
                        "re-scoring this share of the student's peaks, and every window with "
                        "the cascade checking the cutoff (pick's default for a model with a "
                        "student; an upper bound with random weights); 0 = leave both out")
    p.add_argument("--input-size", default="0",
                   help="pick-speed: also time each --coarse setting with the model input made "
                        "this small (train --input-size; e.g. 160,112 for base); 0 = leave it out")
    p.add_argument("--film-edge", action="store_true",
                   help="pick-speed: the micrograph has a carbon film's edge crossing it, whose "
                        "preparation takes each side's background apart")
    p.add_argument("--fractions", default="0.01,0.05,0.2", help="tomo: labelled fractions")
    p.add_argument("--snr", type=float, default=0.1, help="tomo: simulated SNR")
    p.add_argument("--tomograms", type=int, default=2, help="tomo: simulated tomograms")
    p.add_argument("--volume", default="1024x1024x300",
                   help="tomo-memory: tomogram X x Y x Z in voxels")
    p.add_argument("--diameter", type=float, default=20.0,
                   help="tomo-memory: particle diameter in voxels")
    p.add_argument("--tile", type=int, default=96, help="tomo-memory: tile core side")
    p.add_argument("--out", help="also save the figures as JSON here")
    p.set_defaults(func=run)


def numbers(text: str, flag: str, kind=int, sep: str = ",", count: int = 0) -> list:
    """``text`` split at ``sep`` into ``kind`` values (exactly ``count`` of them when given);
    one sentence naming ``flag`` if not."""
    try:
        values = [kind(v) for v in str(text).lower().split(sep)]
    except ValueError:
        values = []
    if not values or (count and len(values) != count):
        what = "whole numbers" if kind is int else "numbers"
        example = sep.join((["1", "2"] if kind is int else ["0.1", "0.5"]) + ["3"] * (count - 2))
        raise InputError(f"{flag} {text!r}: expected {count or 'one or more'} {what} "
                         f"separated by {sep!r}, such as {example}.")
    return values


def _command_speed(args, shape: tuple) -> list:
    """pick-speed with --topaz-env: our command and Topaz's extract on the same micrographs
    (the real set's test micrographs with --real, else six noise micrographs of --size)."""
    from ..benchmarks import command_speed
    work = Path(args.work) / "command_speed"
    mics = sorted((Path(args.real) / "mics_test").glob("*.mrc")) if args.real else \
        command_speed.noise_micrographs(work / "noise", 6, shape)
    if not mics:
        raise InputError(f"{Path(args.real) / 'mics_test'}: holds no .mrc micrographs to time "
                         f"(--real names the EMPIAR-10028 folder).")
    rows = command_speed.run(work, mics, args.box, args.model, args.device,
                             Path(args.topaz_env), numbers(args.coarse, "--coarse"), args.student)
    print(f"\nwhole commands on {len(mics)} micrographs ({'real' if args.real else 'noise'}),"
          f" start-up included; ratio = ours / Topaz:")
    _print_rows(rows)
    return rows


def _print_rows(rows: list) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
              for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _bench_settings(args: argparse.Namespace):
    from ..benchmarks import picking, topaz_peer
    epochs = 5
    if args.topaz_runs < 1:
        raise InputError(f"--topaz-runs {args.topaz_runs}: must be 1 or more.")
    if args.exemplars < 1:
        raise InputError(f"--exemplars {args.exemplars}: must be 1 or more.")
    if args.small_input < 0:
        raise InputError(f"--small-input {args.small_input}: must be 0 (none) or a size in "
                         f"model pixels.")
    return picking.BenchSettings(
        device="cpu" if args.device == "auto" else args.device,
        model=args.model, train_steps=args.steps or 300, exemplars=args.exemplars,
        small_input=args.small_input,
        topaz=topaz_peer.TopazSettings(epochs=epochs,
                                       epoch_size=max(1, args.topaz_updates // epochs),
                                       runs=args.topaz_runs))


def _run_picking(args: argparse.Namespace, module) -> dict:
    sets = args.sets.split(",")
    if module.__name__.endswith("pruning"):
        if args.topaz_runs != 1:
            raise InputError("--topaz-runs: the pruning benchmark prunes one Topaz run's "
                             "picks; give it to the picking benchmark only.")
        sets = module.DEFAULT_SETS if args.sets == "simulated,real" else sets
    work = Path(args.work)
    result = module.run(work, sets, Path(args.real) if args.real else None,
                        numbers(args.seeds, "--seeds"), _bench_settings(args),
                        Path(args.topaz_env) if args.topaz_env else None)
    _print_rows(result["summary"])
    print(f"per-seed rows, plots: {work}/runs*/seed*/; Topaz {result['topaz'] or 'not run'}")
    return result


def run(args: argparse.Namespace) -> int:
    if args.target == "train-speed":
        from ..benchmarks import train_speed
        result = train_speed.run(args.model, args.device, args.batch or 128, args.steps or 10,
                                 args.compile)
        _print_rows([result])
    elif args.target == "pick-speed":
        from ..benchmarks import pick_speed
        w, h = numbers(args.size, "--size", sep="x", count=2)
        coarse = numbers(args.coarse, "--coarse")
        settings = [{"coarse": c} for c in coarse] + \
            ([{"student": args.student}, {"coarse": 1, "student_check": True}]
             if args.student > 0 else []) + \
            [{"input_size": n, "coarse": c} for n in numbers(args.input_size, "--input-size")
             if n for c in coarse]
        result = [pick_speed.time_picking(args.model, (h, w), args.box, args.stride, args.device,
                                          args.batch or 0, args.repeats, args.compile,
                                          film_edge=args.film_edge, **kw)
                  for kw in settings]
        _print_rows(result)
        if args.topaz_env:
            result = {"in_process": result, "commands": _command_speed(args, (h, w))}
    elif args.target == "tomo":
        from ..benchmarks import tomo
        result = tomo.run(Path(args.work), numbers(args.fractions, "--fractions", float),
                          numbers(args.seeds, "--seeds"), args.steps or 300,
                          args.model if args.model in ("small", "base") else "tiny",
                          "cpu" if args.device == "auto" else args.device,
                          tomo.default_sim(args.snr, args.tomograms))
        _print_rows(result["rows"])
    elif args.target == "tomo-memory":
        from ..benchmarks import tomo_memory
        x, y, z = numbers(args.volume, "--volume", sep="x", count=3)
        result = tomo_memory.run(Path(args.work), (z, y, x),
                                 args.model if args.model in ("small", "base") else "tiny",
                                 args.diameter, args.tile, args.device)
        _print_rows([result])
    elif args.target in ("picking", "pruning"):
        from ..benchmarks import picking, pruning
        result = _run_picking(args, picking if args.target == "picking" else pruning)
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

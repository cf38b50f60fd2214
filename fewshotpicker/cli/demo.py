"""``fewshotpicker demo``: the main job on a fresh machine, end to end, on the CPU.

1. simulate a small data set with exact ground truth;
2. pretrain a tiny MAE on random regions of all micrographs (no labels);
3. fine-tune it on the 15 exemplars of the first micrograph;
4. pick every micrograph (every window, and with the student cascade);
5. evaluate on the micrographs that gave no exemplars, beside the DoG baseline;
6. write the picks (RELION STAR), the plots and ``report.md``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..config import (DogConfig, MicrographSimConfig, PickConfig, PretrainConfig, TrainConfig,
                      write_run_record)
from ..data.synthetic import simulate_dataset
from ..evaluate import evaluate_all, format_table, save_report
from ..io.atomic import write_text_atomic
from ..io.coordinates import micrograph_key, read_coordinates, write_autopick
from ..io.mrc import read_image
from ..picking.plots import plot_picks
from ..picking.run import score_all, write_pick_outputs
from ..picking.run_dog import dog_pick_micrographs
from ..training.finetune import finetune
from ..training.pretrain import pretrain
from .common import log, progress
from .simulate import save_micrograph_preview


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="simulate, train, pick, evaluate and report (the main job)",
                       description=__doc__)
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--n", type=int, default=4, help="micrographs to simulate (default 4)")
    p.add_argument("--size", type=int, default=768, help="micrograph side in px (default 768)")
    p.add_argument("--snr", type=float, default=0.05, help="particle SNR (default 0.05)")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _stage(n: int, text: str) -> None:
    log.info("%d/6 %s", n, text)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    sim = MicrographSimConfig(n_micrographs=args.n, shape=(args.size, args.size), snr=args.snr,
                              seed=args.seed)
    write_run_record(out, "demo", sim)
    _stage(1, f"simulating {args.n} micrographs of {args.size} x {args.size} px")
    meta = simulate_dataset(sim, out / "data", lambda it: progress(it, "simulate"))
    save_micrograph_preview(out / "data", meta)
    mics = [out / "data" / name for name in sorted(meta["micrographs"])]
    box = float(meta["box_px"])

    _stage(2, "pretraining a tiny MAE on unlabeled regions (briefly, to keep the demo quick)")
    pretrain(PretrainConfig(model="tiny", box=box, epochs=args.pretrain_epochs,
                            regions_per_micrograph=128, device=args.device, seed=args.seed),
             mics, out / "pretrain", progress)
    _stage(3, "fine-tuning on the 15 exemplars of the first micrograph")
    exemplars = read_coordinates(out / "data" / "exemplars.star")
    exemplars["micrograph"] = str(mics[0])
    trained = finetune(TrainConfig(box=box, pretrained=str(out / "pretrain"),
                                   steps=args.train_steps, student_steps=args.student_steps,
                                   device=args.device, seed=args.seed),
                       mics, exemplars, out / "train", "exemplars.star", progress)

    _stage(4, "picking every micrograph")
    pick_cfg = PickConfig(model=str(out / "train"), device=args.device, plots=True)
    results = score_all(pick_cfg, mics, lambda it, total: progress(it, "pick", total))
    write_pick_outputs(results, pick_cfg, out / "picks")
    cascade_cfg = replace(pick_cfg, student=0.4, plots=False)
    cascade = score_all(cascade_cfg, mics, lambda it, total: progress(it, "pick --student", total))
    write_pick_outputs(cascade, cascade_cfg, out / "picks_student")
    dog, _, _ = dog_pick_micrographs(mics, DogConfig(diameter=meta["particle_diameter_px"]))
    write_autopick(dog, out / "picks_dog", [str(m) for m in mics])

    _stage(5, "evaluating on the micrographs without exemplars")
    return _evaluate_and_report(out, meta, mics, results, dog, trained)


def _evaluate_and_report(out: Path, meta: dict, mics: list, results: dict, dog, trained) -> int:
    held_out = [str(m) for m in mics[1:]]
    truth = read_coordinates(out / "data" / "truth.star")
    tables = {"fewshot": read_coordinates(out / "picks" / "autopick.star"),
              "fewshot_student": read_coordinates(out / "picks_student" / "autopick.star"),
              "dog": dog}
    reports = {label: evaluate_all(p, truth, meta["box_px"], micrographs=held_out)
               for label, p in tables.items()}
    for label, rep in reports.items():
        save_report(rep, out / f"evaluation_{label}", label)
    _stage(6, "writing the report")
    first = mics[1]
    cands = results[str(first)]
    mine = truth[truth["micrograph"].map(micrograph_key) == micrograph_key(first)]
    plot_picks(read_image(first).data, cands.score_map, cands.kept()[0], meta["box_px"],
               out / "picks_example.png", mine[["x", "y"]].to_numpy(),
               f"{micrograph_key(first)}: picks (yellow), truth (green)")
    text = _report_text(meta, reports, trained)
    write_text_atomic(out / "report.md", text)
    summary = {label: rep["conventions"]["cryomae"]["pooled"] for label, rep in reports.items()}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(text)
    return 0


def _report_text(meta: dict, reports: dict, trained: dict) -> str:
    rows = []
    for label, rep in reports.items():
        c = rep["conventions"]
        rows.append(f"| {label} | {c['cryomae']['pooled']['precision'] or 0:.3f} | "
                    f"{c['cryomae']['pooled']['recall'] or 0:.3f} | "
                    f"{c['cryomae']['pooled']['f1'] or 0:.3f} | "
                    f"{c['hydrapicker']['pooled']['ap'] or 0:.3f} | "
                    f"{c['topaz']['pooled']['ap'] or 0:.3f} |")
    return f"""# fewshotpicker demo report

Data: {len(meta['micrographs'])} simulated micrographs (`data/micrographs/`), pixel size
{meta['pixel_size_A']} Å, particle diameter {meta['particle_diameter_px']} px, box {meta['box_px']} px,
{meta['n_particles']} particles, SNR {meta['config']['snr']}, with ice crystals, aggregates and
carbon edges as lures. Preview: `data/preview.png`.

Few-shot picker: tiny MAE pretrained on unlabeled regions (`pretrain/`), fine-tuned on the 15
exemplars of `mic_000` (`train/`, curves in `train/losses.png`; exemplar/background cosine gap
{trained['cos_gap']:.3f}), picks in `picks/autopick.star` (RELION), score histograms in
`picks/thresholds/`, an example in `picks_example.png`. `fewshot_student`: the same model's
student cascade (`pick --student 0.4`, `picks_student/`): a small convolutional network
distilled from the model's score maps proposes, the model re-scores the best of its peaks.
Baseline: difference of Gaussians (`picks_dog/`).

Scores on the {len(meta['micrographs']) - 1} micrographs that gave no exemplars:

| picker | precision (IoU 0.5) | recall | F1 | AP (IoU 0.6) | AP (Topaz radius) |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

Full tables: `evaluation_fewshot/metrics.json`, `evaluation_dog/metrics.json`, curves in
`evaluation_*/precision_recall.png`.

```
{format_table(reports['fewshot'])}
```
"""

"""Pick many micrographs: shard across devices, survive out-of-memory and bad files.

Each device gets a share of the micrographs and its own copy of the model
(threads: the heavy work runs in torch, outside the GIL; with ``--compile`` the
calls into compiled ops go one at a time, since torch.compile is not
thread-safe: :func:`~fewshotpicker.models.inference.one_at_a_time`). On CUDA out of
memory the batch is halved and the micrograph retried; a micrograph that
cannot be read or picked is reported and the others still finish. Each worker
reads the next micrograph while it picks the current one.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd
import torch

from ..config import PickConfig
from ..data.regions import Preprocess
from ..device import resolve_devices
from ..errors import InputError, failure_message
from ..io.atomic import write_text_atomic
from ..io.coordinates import (empty_coordinates, make_coordinates, micrograph_key, write_autopick,
                              write_coordinate_table)
from ..io.mrc import pixel_size_mismatch, read_image
from ..models.inference import scoring_encoder
from ..training.common import load_mae
from .cascade import load_student
from .picker import Candidates, pick_micrograph
from .plots import plot_picks, plot_score_histogram, summarise_counts
from .scoring import Bank

log = logging.getLogger("fewshotpicker")


def pick_with_retry(model, bank, image, pre, cfg: PickConfig, device, batch: int,
                    student=None) -> tuple:
    """Pick one micrograph, halving the batch on CUDA out-of-memory; returns (cands, batch)."""
    while True:
        try:
            return pick_micrograph(model, bank, image, pre, cfg, device, batch, student), batch
        except torch.cuda.OutOfMemoryError:
            if batch <= 1:
                raise
            batch //= 2
            torch.cuda.empty_cache()
            log.warning("out of GPU memory on %s: batch reduced to %d windows", device, batch)


def worker_student(payload: dict, cfg: PickConfig, device: torch.device, source: str):
    """The model's student for the cascade (``cfg.student`` > 0; refused if there is none) or
    for checking the automatic cutoff (when the model holds one; else None, said once)."""
    if cfg.student > 0:
        return load_student(payload, device, source)
    if not (cfg.student_check and cfg.threshold == "auto"):
        return None
    if not payload.get("student"):
        log.warning("%s holds no student (trained with --student-steps 0 or by an older "
                    "version): the automatic cutoff is not checked against the student "
                    "cascade's", source)
        return None
    return load_student(payload, device, source)


GPU_BATCH, CPU_BATCH = 1024, 128


def window_batch(requested: int, device: torch.device) -> int:
    """Windows per encoder batch: ``requested``, or for 0 the device's default.

    On a CPU small batches stay in cache: the tiny model on 2 cores scored a
    1024^2 micrograph in 3.74 s with 128 windows per batch and 5.48 s with 1024
    (64: 3.54 s, 256: 3.73 s; ``benchmark pick-speed --batch``).
    """
    if requested > 0:
        return requested
    return GPU_BATCH if device.type == "cuda" else CPU_BATCH


def warn_pixel_size(image: Optional[float], model: Optional[float], path: Path,
                    box: float) -> bool:
    """Warn (once per worker: returns True) when a micrograph's header states another pixel
    size (Å) than the model's training micrographs: the box in pixels no longer fits."""
    if not pixel_size_mismatch(image, model):
        return False
    log.warning("%s: pixel size %.3f Å, but the model was trained on micrographs of %.3f Å, so "
                "a particle spans %.0f px here, not the model's %.0f; if the header is right, "
                "pick with --pixel-size %.3f to pick at the model's scale (further such "
                "micrographs are not named)", path, image, model, box * model / image, box, image)
    return True


def rescaled_preprocess(pre: Preprocess, pixel_size: float, model: Optional[float],
                        source: str) -> Preprocess:
    """The preparation for micrographs of ``pixel_size`` Å (0: as the model's): with the
    model's pixel size known and more than 2% away, its box rescaled to these pixels
    (``box * model / pixel_size``), so that each window covers the same area in Å as in
    training; the stride, distances and edges, all in boxes or derived from the box, follow."""
    if not pixel_size or not pixel_size_mismatch(pixel_size, model):
        if pixel_size and not model:
            log.warning("%s records no pixel size (its training micrographs' headers stated "
                        "none), so --pixel-size %.3f cannot rescale it: picking with its box "
                        "of %.0f px; give --model-pixel-size, or train with --pixel-size to "
                        "record one", source, pixel_size, pre.box)
        return pre
    scaled = replace(pre, box=pre.box * model / pixel_size)
    log.info("micrographs at %.3f Å/px, the model trained at %.3f: picking at the model's scale, "
             "a box of %.1f px here (the model's %.0f)", pixel_size, model, scaled.box, pre.box)
    return scaled


def read_ahead(paths: List[Path], read: Callable) -> Iterator[tuple]:
    """``(path, future of read(path))`` for each of ``paths`` in order, the next file read in a
    background thread while the caller works on the current one; a failed read raises from
    its own future. Reading a 4096 x 4096 float32 MRC took 0.03 s, a 5760 x 4092 float16 one
    0.14 s (page cache, two CPU cores), against 0.29-1.4 s of GPU picking each."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, paths[0]) if paths else None
        for i, path in enumerate(paths):
            current = pending
            pending = pool.submit(read, paths[i + 1]) if i + 1 < len(paths) else None
            yield path, current


def _worker(model_path: str, device: torch.device, paths: List[Path], cfg: PickConfig,
            results: Dict[str, object], tick: Callable, log_failures: bool = True) -> None:
    model, payload = load_mae(model_path, device, kinds=["finetuned"])
    model = scoring_encoder(model, device, cfg.precision, cfg.compile)
    model_pixel_size = cfg.model_pixel_size or payload.get("pixel_size")
    pre = rescaled_preprocess(Preprocess(**payload["preprocess"]), cfg.pixel_size,
                              model_pixel_size, model_path)
    bank = Bank.from_payload(payload, device)
    if cfg.max_contrast > 0 and bank.contrast_limit(cfg.max_contrast) is None:
        log.warning("%s holds no exemplar contrast (trained by an older version): peaks are not "
                    "checked for ice, carbon or aggregates (--max-contrast); train again to "
                    "use that check", model_path)
    student = worker_student(payload, cfg, device, model_path)
    batch = window_batch(cfg.batch_size, device)
    warned = False
    for path, reading in read_ahead(paths, lambda p: read_image(p, pre.box)):
        try:
            start = time.perf_counter()
            mrc = reading.result()
            warned = warned or bool(cfg.pixel_size) or warn_pixel_size(
                mrc.pixel_size, model_pixel_size, path, pre.box)
            image = mrc.data
            cands, batch = pick_with_retry(model, bank, image, pre, cfg, device, batch, student)
            cands.seconds = time.perf_counter() - start
            results[str(path)] = cands
        except (InputError, RuntimeError, ValueError) as exc:
            results[str(path)] = failure_message(path, exc)
            if log_failures:  # a batch of one says it once, in the command's error
                log.error("not picked: %s", results[str(path)])
        tick()


def score_all(cfg: PickConfig, micrographs: List[Path],
              progress: Optional[Callable] = None) -> Dict[str, object]:
    """Candidates (or an error message) for every micrograph, keyed by path string."""
    devices = resolve_devices(cfg.device)
    for dev in devices:
        if dev.type == "cuda":
            torch.cuda.init()  # the memory statistics refuse a device CUDA has not started
            torch.cuda.reset_peak_memory_stats(dev)
    bar = progress(range(len(micrographs)), total=len(micrographs)) if progress else None
    lock = threading.Lock()

    def tick():
        if bar is not None:
            with lock:
                bar.update(1)

    results: Dict[str, object] = {}
    shards = [micrographs[i::len(devices)] for i in range(len(devices))]
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        futures = [pool.submit(_worker, cfg.model, dev, shard, cfg, results, tick,
                               len(micrographs) > 1)
                   for dev, shard in zip(devices, shards) if shard]
        try:
            for f in futures:
                f.result()
        finally:  # an error (a wrong model, say) then starts on a line of its own
            if bar is not None:
                bar.close()
    return results


def apply_global_quantile(cands: List[Candidates], quantile: float) -> float:
    """One cutoff for all micrographs: a quantile of every candidate score."""
    scores = np.concatenate([c.scores for c in cands]) if cands else np.empty(0)
    cut = float(np.quantile(scores, quantile)) if len(scores) else np.inf
    for c in cands:
        c.cutoff = cut
    return cut


def _histogram(c: Candidates) -> dict:
    counts, edges = np.histogram(c.scores, bins=40) if len(c.scores) else ([], [])
    return {"counts": np.asarray(counts).tolist(), "edges": np.asarray(edges).tolist()}


def peak_gpu_memory_mb(cfg: PickConfig) -> Dict[str, float]:
    """Peak GPU memory allocated by torch on each CUDA device of the run, MiB."""
    return {str(d): torch.cuda.max_memory_allocated(d) / 2 ** 20
            for d in resolve_devices(cfg.device) if d.type == "cuda"}


def write_candidates(results: Dict[str, object], path: Path) -> Path:
    """Every peak of every micrograph with its score, above and below the cutoff."""
    frames = [make_coordinates(name, res.xy, res.scores) for name, res in results.items()
              if not isinstance(res, str) and len(res.scores)]
    table = pd.concat(frames, ignore_index=True) if frames else empty_coordinates()
    return write_coordinate_table(table, path, with_scores=True)


def crowded_record(res: Candidates) -> dict:
    """What ``--crowded`` found on one micrograph (nothing when it was not asked for)."""
    if res.valley_picks < 0:
        return {}
    share = None if np.isnan(res.valley_overlap) else round(res.valley_overlap, 4)
    return {"valley_picks": res.valley_picks, "valley_overlap_share": share,
            "filled_to_valley": res.filled}


def write_pick_outputs(results: Dict[str, object], cfg: PickConfig, out_dir: Path) -> dict:
    """STAR files, per-micrograph threshold JSON (and PNG), and the summary dict."""
    frames, summary, failed = [], {}, {}
    for name, res in results.items():
        if isinstance(res, str):
            failed[name] = res
            continue
        xy, scores = res.kept()
        frames.append(make_coordinates(name, xy, scores))
        key = micrograph_key(name)
        record = {"micrograph": name, "cutoff": res.cutoff, "rule": res.rule,
                  "encoder_cutoff": None if np.isnan(res.encoder_cutoff) else res.encoder_cutoff,
                  "student_cutoff": None if np.isnan(res.student_cutoff) else res.student_cutoff,
                  "fitted_cutoff": None if np.isnan(res.fitted_cutoff) else res.fitted_cutoff,
                  "surround": 0.0 if np.isnan(res.fitted_cutoff) else cfg.surround,
                  "unchecked_cutoff": None if np.isnan(res.unchecked_cutoff)
                  else res.unchecked_cutoff,
                  "overlapping_picks": res.overlapping,
                  **crowded_record(res),
                  "exemplar_anchor": None if np.isnan(res.anchor) else round(res.anchor, 6),
                  "candidates": int(len(res.scores)),
                  "picks": int(len(scores)), "stride_px": res.score_map.stride_px,
                  "contrast_limit": None if np.isnan(res.contrast_limit)
                  else round(res.contrast_limit, 4),
                  "dropped_for_contrast": res.too_contrasty,
                  "windows_scored": round(res.score_map.scored, 4),
                  "histogram": _histogram(res)}
        write_text_atomic(out_dir / "thresholds" / f"{key}.json", json.dumps(record) + "\n")
        if cfg.plots:
            plot_score_histogram(res.scores, res.cutoff, out_dir / "thresholds" / f"{key}.png",
                                 key)
            plot_picks(read_image(name).data, res.score_map, xy, res.box,
                       out_dir / "thresholds" / f"{key}_picks.png",
                       title=f"{key}: {len(xy)} picks above {res.cutoff:.3f}")
        summary[name] = {"picks": record["picks"], "cutoff": res.cutoff, "rule": res.rule,
                         "dropped_for_contrast": res.too_contrasty,
                         "seconds": round(res.seconds, 3)}
    frames = [f for f in frames if len(f)]
    picks = pd.concat(frames, ignore_index=True) if frames else empty_coordinates()
    done = [n for n in results if n not in failed]
    write_autopick(picks, out_dir, done)
    if cfg.candidates:
        write_candidates(results, out_dir / "candidates.star")
    seconds = [m["seconds"] for m in summary.values()]
    return {"micrographs": summary, "failed": failed, "n_picks": int(len(picks)),
            "unusual": summarise_counts(summary, out_dir / "summary.png", len(failed)),
            "seconds_per_micrograph": float(np.mean(seconds)) if seconds else None,
            "peak_gpu_memory_mb": peak_gpu_memory_mb(cfg)}

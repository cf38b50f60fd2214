"""Pick many micrographs: shard across devices, survive out-of-memory and bad files.

Each device gets a share of the micrographs and its own copy of the model
(threads: the heavy work runs in torch, outside the GIL; with ``--compile`` the
calls into compiled ops go one at a time, since torch.compile is not
thread-safe: :func:`~fewshotpicker.models.inference.one_at_a_time`). On CUDA out of
memory the batch is halved and the micrograph retried; a micrograph that
cannot be read or picked is reported and the others still finish. Each worker
reads the next micrograph while it picks the current one. Each micrograph's files
are written as soon as it is picked, in a thread of their own
(:class:`BackgroundWriter`), so memory does not grow with the score maps of a long
job and an interrupted one keeps what it finished; a rerun with ``only_unfinished``
keeps those of the same settings and model and picks the rest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd
import torch

from ..config import PickConfig, to_dict
from ..data.regions import Preprocess
from ..device import resolve_devices
from ..errors import InputError, failure_message
from ..io.atomic import write_text_atomic
from ..io.checkpoint import resolve_model_file
from ..io.coordinates import (empty_coordinates, make_coordinates, micrograph_key,
                              read_star_coordinates, write_autopick, write_autopick_file,
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
            results: Dict[str, object], tick: Callable, log_failures: bool = True,
            on_done: Optional[Callable] = None,
            stop: Optional[threading.Event] = None) -> None:
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
        if stop is not None and stop.is_set():  # interrupted: the micrograph at hand was last
            break
        try:
            start = time.perf_counter()
            mrc = reading.result()
            warned = warned or bool(cfg.pixel_size) or warn_pixel_size(
                mrc.pixel_size, model_pixel_size, path, pre.box)
            image = mrc.data
            cands, batch = pick_with_retry(model, bank, image, pre, cfg, device, batch, student)
            cands.seconds = time.perf_counter() - start
            results[str(path)] = on_done(str(path), cands) if on_done else cands
        except (InputError, RuntimeError, ValueError) as exc:
            results[str(path)] = failure_message(path, exc)
            if log_failures:  # a batch of one says it once, in the command's error
                log.error("not picked: %s", results[str(path)])
        tick()


def score_all(cfg: PickConfig, micrographs: List[Path], progress: Optional[Callable] = None,
              on_done: Optional[Callable] = None) -> Dict[str, object]:
    """Candidates (or an error message) for every micrograph, keyed by path string;
    ``on_done(name, candidates)``, when given, is called as each is picked and its return
    value kept instead (so the score maps need not all stay in memory)."""
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
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        futures = [pool.submit(_worker, cfg.model, dev, shard, cfg, results, tick,
                               len(micrographs) > 1, on_done, stop)
                   for dev, shard in zip(devices, shards) if shard]
        try:
            for f in futures:
                f.result()
        except BaseException:  # Ctrl-C or an error: the other devices stop after their
            stop.set()         # micrograph at hand instead of finishing their share
            raise
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


def write_candidates(picked: Dict[str, "Picked"], path: Path) -> Path:
    """Every peak of every micrograph with its score, above and below the cutoff."""
    frames = [make_coordinates(name, p.all_xy, p.all_scores) for name, p in picked.items()
              if p.all_xy is not None and len(p.all_scores)]
    table = pd.concat(frames, ignore_index=True) if frames else empty_coordinates()
    return write_coordinate_table(table, path, with_scores=True)


def crowded_record(res: Candidates) -> dict:
    """What ``--crowded`` found on one micrograph (nothing when it was not asked for)."""
    if res.valley_picks < 0:
        return {}
    share = None if np.isnan(res.valley_overlap) else round(res.valley_overlap, 4)
    return {"valley_picks": res.valley_picks, "valley_overlap_share": share,
            "filled_to_valley": res.filled}


@dataclass
class Picked:
    """One micrograph once its files are written: picks ``(n, 2)`` px, their scores ``(n,)``,
    its threshold record, and every peak ``(m, 2)`` / ``(m,)`` when candidates are kept."""
    xy: np.ndarray
    scores: np.ndarray
    record: dict
    all_xy: Optional[np.ndarray] = None
    all_scores: Optional[np.ndarray] = None


#: settings that change no pick, left out of :func:`settings_digest`
_NOT_SETTINGS = ("model", "device", "batch_size", "compile", "plots", "candidates",
                 "only_unfinished")


def settings_digest(cfg: PickConfig) -> str:
    """A fingerprint of what decides a micrograph's picks: the settings and the model file
    (path, size, modification time). A micrograph picked under another fingerprint is
    picked again by ``--only-unfinished``."""
    model = resolve_model_file(cfg.model)
    values = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_SETTINGS}
    if model.is_file():  # else loading it says what is wrong
        stat = model.stat()
        values["model_file"] = [str(model.resolve()), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]


def _nan_none(value: float, digits: Optional[int] = None):
    if np.isnan(value):
        return None
    return round(value, digits) if digits is not None else value


def micrograph_record(name: str, res: Candidates, cfg: PickConfig, digest: str) -> dict:
    """What ``thresholds/<micrograph>.json`` says of one micrograph: cutoffs, counts, the
    score histogram, seconds and the settings' fingerprint."""
    return {"micrograph": name, "cutoff": res.cutoff, "rule": res.rule,
            "encoder_cutoff": _nan_none(res.encoder_cutoff),
            "student_cutoff": _nan_none(res.student_cutoff),
            "fitted_cutoff": _nan_none(res.fitted_cutoff),
            "surround": 0.0 if np.isnan(res.fitted_cutoff) else cfg.surround,
            "unchecked_cutoff": _nan_none(res.unchecked_cutoff),
            "overlapping_picks": res.overlapping,
            **crowded_record(res),
            "exemplar_anchor": _nan_none(res.anchor, 6),
            "candidates": int(len(res.scores)),
            "picks": int((res.scores > res.cutoff).sum()), "stride_px": res.score_map.stride_px,
            "contrast_limit": _nan_none(res.contrast_limit, 4),
            "dropped_for_contrast": res.too_contrasty,
            "windows_scored": round(res.score_map.scored, 4),
            "seconds": round(res.seconds, 3), "settings": digest,
            "histogram": _histogram(res)}


def write_micrograph_files(name: str, res: Candidates, cfg: PickConfig, out_dir: Path,
                           digest: str) -> Picked:
    """``<micrograph>_autopick.star`` and ``thresholds/<micrograph>.json`` (with ``--plots``
    its PNGs) of one micrograph, written as soon as it is picked; returns what the run's
    index and summary need, without the score map."""
    key = micrograph_key(name)
    xy, scores = res.kept()
    record = micrograph_record(name, res, cfg, digest)
    if cfg.plots:
        thresholds = out_dir / "thresholds"
        plot_score_histogram(res.scores, res.cutoff, thresholds / f"{key}.png", key)
        plot_picks(read_image(name).data, res.score_map, xy, res.box,
                   thresholds / f"{key}_picks.png",
                   title=f"{key}: {len(xy)} picks above {res.cutoff:.3f}")
    write_autopick_file(make_coordinates(name, xy, scores), out_dir / f"{key}_autopick.star")
    write_text_atomic(out_dir / "thresholds" / f"{key}.json", json.dumps(record) + "\n")
    keep_all = cfg.candidates
    return Picked(xy, scores, record, res.xy if keep_all else None,
                  res.scores if keep_all else None)


def picked_before(micrographs: List[Path], out_dir: Path, digest: str) -> Dict[str, Picked]:
    """The micrographs whose files in ``out_dir`` a run with the same settings and model
    wrote (the threshold record last, so its presence means both are whole)."""
    found = {}
    for path in micrographs:
        key = micrograph_key(str(path))
        record_file = out_dir / "thresholds" / f"{key}.json"
        star = out_dir / f"{key}_autopick.star"
        try:
            record = json.loads(record_file.read_text())
            if record.get("settings") != digest or not star.exists():
                continue
            picks = read_star_coordinates(star)
        except (OSError, ValueError, InputError):  # absent or unreadable: picked again
            continue
        found[str(path)] = Picked(picks[["x", "y"]].to_numpy(float),
                                  picks["score"].to_numpy(float), record)
    return found


def write_pick_outputs(results: Dict[str, object], cfg: PickConfig, out_dir: Path,
                       digest: Optional[str] = None) -> dict:
    """The run's index (``autopick.star``, ``picks.star``), candidates and summary dict, over
    micrographs already written (:class:`Picked`), ones still to write (:class:`Candidates`,
    after a global cutoff, or when the caller keeps the score maps) and failures (their
    message)."""
    digest = digest or settings_digest(cfg)
    picked = {name: write_micrograph_files(name, res, cfg, out_dir, digest)
              if isinstance(res, Candidates) else res
              for name, res in results.items() if not isinstance(res, str)}
    failed = {name: res for name, res in results.items() if isinstance(res, str)}
    frames = [make_coordinates(name, p.xy, p.scores) for name, p in picked.items() if len(p.xy)]
    picks = pd.concat(frames, ignore_index=True) if frames else empty_coordinates()
    write_autopick(picks, out_dir, list(picked), per_micrograph=False)
    if cfg.candidates:
        write_candidates(picked, out_dir / "candidates.star")
    summary = {name: {"picks": p.record["picks"], "cutoff": p.record["cutoff"],
                      "rule": p.record["rule"],
                      "dropped_for_contrast": p.record["dropped_for_contrast"],
                      "seconds": p.record.get("seconds")} for name, p in picked.items()}
    seconds = [m["seconds"] for m in summary.values() if m["seconds"] is not None]
    return {"micrographs": summary, "failed": failed, "n_picks": int(len(picks)),
            "unusual": summarise_counts(summary, out_dir / "summary.png", len(failed)),
            "seconds_per_micrograph": float(np.mean(seconds)) if seconds else None,
            "peak_gpu_memory_mb": peak_gpu_memory_mb(cfg)}


class BackgroundWriter:
    """Writes each picked micrograph's files (its STAR file, threshold record and, with
    ``--plots``, figures) in one thread of its own, so that the devices go on picking while
    matplotlib draws (a figure of a 4096 x 4096 micrograph can take longer than picking it
    on a GPU). At most ``backlog`` micrographs wait to be written; a device that finds the
    queue full waits. Once a write has failed for want of the disk (an OSError: full,
    read-only), the next ``submit`` raises it and the run stops, since every write would
    fail alike; leaving the ``with`` block (Ctrl-C included) writes what waits."""

    def __init__(self, write: Callable, backlog: int = 4):
        self.write = write
        self.room = threading.BoundedSemaphore(backlog)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="writer")
        self.disk_error: Optional[OSError] = None
        self.pending = 0  # submitted, not yet written
        self.lock = threading.Lock()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def submit(self, name: str, res: Candidates) -> Future:
        """Queue ``res`` of micrograph ``name`` for writing, waiting while the queue is full;
        the future's result is the :class:`Picked`."""
        self.room.acquire()
        if self.disk_error is not None:
            self.room.release()
            raise self.disk_error
        with self.lock:
            self.pending += 1
        future = self.pool.submit(self.write, name, res)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        if isinstance(future.exception(), OSError) and self.disk_error is None:
            self.disk_error = future.exception()
        with self.lock:
            self.pending -= 1
        self.room.release()

    def say_what_waits(self) -> None:
        """Log how many micrographs wait to be written, if any (the progress bar counts
        picked micrographs, so it is full before their figures are drawn)."""
        with self.lock:
            waiting = self.pending
        if waiting == 1:
            log.info("writing the last picked micrograph's files")
        elif waiting:
            log.info("writing the files of the last %d picked micrographs", waiting)

    @staticmethod
    def outcome(name: str, result):
        """What a micrograph's entry of :func:`score_all` stands for once written: the
        :class:`Picked` of a write, else the entry itself (candidates, an error message);
        a write that failed on this micrograph (its figure could not read it) gives the
        error message, one that failed on the disk raises."""
        if not isinstance(result, Future):
            return result
        try:
            return result.result()
        except (InputError, RuntimeError, ValueError) as exc:
            message = failure_message(Path(name), exc)
            log.error("not written: %s", message)
            return message


def pick_micrographs(cfg: PickConfig, micrographs: List[Path], out_dir: Path,
                     progress: Optional[Callable] = None) -> dict:
    """The whole of ``pick``: score every micrograph (those a same-settings run finished
    kept with ``cfg.only_unfinished``), write each one's files as it is done (after all of
    them for a global quantile cutoff), then the index and summary; returns the summary
    (``kept_from_before``: how many were kept). Raises when no micrograph could be picked."""
    digest = settings_digest(cfg)
    before = picked_before(micrographs, out_dir, digest) if cfg.only_unfinished else {}
    if before:
        log.info("%d of %d micrographs were picked before with these settings and this "
                 "model: kept (--only-unfinished)", len(before), len(micrographs))
    todo = [m for m in micrographs if str(m) not in before]
    quantile = cfg.threshold == "quantile"
    with BackgroundWriter(lambda name, res: write_micrograph_files(
            name, res, cfg, out_dir, digest)) as writer:
        scored = score_all(cfg, todo, progress, None if quantile else writer.submit) if todo else {}
        writer.say_what_waits()
    scored = {name: writer.outcome(name, res) for name, res in scored.items()}
    results = {str(m): before.get(str(m), scored.get(str(m))) for m in micrographs}
    fresh = [r for r in scored.values() if isinstance(r, Candidates)]
    if quantile and fresh:
        cut = apply_global_quantile(fresh, cfg.quantile)
        log.info("global cutoff %.4f (quantile %.2f of all candidate scores)", cut, cfg.quantile)
    summary = write_pick_outputs(results, cfg, out_dir, digest)
    summary["kept_from_before"] = len(before)
    return summary

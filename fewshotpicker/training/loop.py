"""One generic training loop for every runner.

A runner gives a ``step_fn(step) -> (loss, metrics)`` whose batch and random
masking depend only on ``(seed, step)``; the learning rate is a pure function
of the step. A training state is therefore just the model, the optimizer and
the step, which makes resuming exact: an interrupted run continued from its
last checkpoint ends with the same weights, bit for bit, as an uninterrupted one.

Checkpoints (``checkpoint.pt``) are written atomically every
``checkpoint_every`` steps, at the end, and when the run is stopped (Ctrl-C or
SIGTERM, which is how Scipion stops a protocol): a stop takes effect at the
next step boundary, so the saved state is always consistent.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from ..errors import InputError
from ..io.atomic import write_text_atomic
from ..io.checkpoint import RESUME_FILE, load_checkpoint, save_checkpoint
from .distributed import Launch, any_rank, summed
from .plots import plot_losses

log = logging.getLogger("fewshotpicker")
StepFn = Callable[[int], Tuple[torch.Tensor, dict]]

# config fields that may change between an interrupted run and its continuation (the student
# is distilled after fine-tuning: its settings never make a checkpoint stale)
RESUMABLE_CHANGES = {"steps", "epochs", "checkpoint_every", "device", "compile",
                     "student_steps", "student_precision"}
# settings added after runs were first checkpointed, with the value that does what those runs
# did, so that a run saved before a setting existed still resumes where nothing changed
ADDED_SETTINGS = {"exemplars_per_step": 0, "student_precision": "fp32", "pixel_size": 0.0,
                  "max_micrographs": 0, "max_regions": 0}


def with_added_settings(config: dict) -> dict:
    """``config`` of a saved run, with the settings it predates at their old behaviour."""
    return {**ADDED_SETTINGS, **config}


@dataclass(frozen=True)
class LoopSettings:
    steps: int
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    checkpoint_every: int


def learning_rate(step: int, s: LoopSettings) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(1, s.steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """A torch generator that depends only on (seed, step), on ``device``."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    return gen


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop stops at the next step boundary.

    A second SIGINT stops at once (without saving), as users expect of Ctrl-C.
    """

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


@contextlib.contextmanager
def stop_at_step_boundary():
    """Install :class:`StopRequest` for SIGINT and SIGTERM (main thread only)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def inputs_fingerprint(items) -> str:
    """A short hash of a run's inputs given as strings (micrograph names, ``name:x:y``
    coordinates; order ignored), kept as ``config["inputs"]`` so that a checkpoint made on
    other data is never resumed."""
    return hashlib.sha256(json.dumps(sorted(map(str, items))).encode()).hexdigest()[:16]


def coordinate_items(table) -> list:
    """``micrograph:x:y`` strings (0.1 px) of a coordinate table, for :func:`inputs_fingerprint`."""
    keys = table["micrograph"].astype(str).map(lambda m: Path(m).stem)
    return [f"{k}:{x:.1f}:{y:.1f}" for k, x, y in zip(keys, table["x"], table["y"])]


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def _resume(out_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
            config: dict) -> Tuple[int, List[dict]]:
    path = out_dir / RESUME_FILE
    if not path.exists():
        return 0, []
    state = load_checkpoint(path, kinds=["resume"])
    old = _comparable(with_added_settings(state["config"]))
    new = _comparable(with_added_settings(config))
    if "inputs" not in old:  # a checkpoint from before the inputs were recorded
        new.pop("inputs", None)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if "inputs" in changed:
        raise InputError(f"{path}: belongs to a run on other micrographs or coordinates; "
                         f"choose a new output folder or remove it to start over.")
    if changed:
        raise InputError(f"{path}: belongs to a run with other settings ({', '.join(changed)} "
                         f"differ); choose a new output folder or remove it to start over.")
    model.load_state_dict(state["state_dict"])
    opt.load_state_dict(state["optimizer"])
    log.info("resuming from step %d of %s", state["step"], path)
    return int(state["step"]), list(state["history"])


def _save(out_dir: Path, model, opt, step: int, history: List[dict], config: dict,
          title: str) -> None:
    save_checkpoint(out_dir / RESUME_FILE, {"kind": "resume", "state_dict": model.state_dict(),
                                            "optimizer": opt.state_dict(), "step": step,
                                            "history": history, "config": config})
    write_text_atomic(out_dir / "losses.json", json.dumps(history) + "\n")
    if history:
        plot_losses(history, out_dir / "losses.png", title)


def train(model: torch.nn.Module, step_fn: StepFn, settings: LoopSettings, out_dir: Path,
          config: dict, title: str = "training",
          progress: Optional[Callable] = None, launch: Launch = Launch()) -> List[dict]:
    """Run ``settings.steps`` optimisation steps (resuming if a checkpoint is there).

    Returns the loss history: one dict per step with ``step``, ``lr``, ``loss``
    and the runner's metrics. With several processes (``launch``, see
    :mod:`.distributed`) ``step_fn`` returns this rank's weighted loss, the history holds
    their sum over the ranks divided by their number (the whole batch's loss), all ranks
    stop at the same step, and rank 0 alone writes the checkpoints.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    start, history = _resume(out_dir, model, opt, config)
    steps = range(start, settings.steps)
    with stop_at_step_boundary() as stop:
        for step in (progress(steps, total=len(steps)) if progress else steps):
            lr = learning_rate(step, settings)
            for group in opt.param_groups:
                group["lr"] = lr
            loss, metrics = step_fn(step)
            whole = summed(loss.detach(), launch) / launch.world
            if not torch.isfinite(whole):
                raise RuntimeError(f"training diverged at step {step} (loss {whole.item()}); "
                                   f"lower the learning rate.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({"step": step, "lr": lr, "loss": float(whole), **metrics})
            if any_rank(stop.requested, launch, whole.device):
                if launch.main:
                    _save(out_dir, model, opt, step + 1, history, config, title)
                    log.warning("stopped: saved the state after %d steps; run the same "
                                "command again to continue.", step + 1)
                raise KeyboardInterrupt
            if (step + 1) % settings.checkpoint_every == 0 and launch.main:
                _save(out_dir, model, opt, step + 1, history, config, title)
    if launch.main:
        _save(out_dir, model, opt, settings.steps, history, config, title)
    return history

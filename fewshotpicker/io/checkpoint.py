"""Checkpoints: ``{"state_dict", "config", "version", "kind", ...}`` saved atomically,
loaded with ``torch.load(..., weights_only=True)``.

``kind`` says what a file holds: ``pretrained`` / ``finetuned`` (MAE models),
``resume`` (a training state with optimizer), and later ``pruner``, ``tomo``.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import torch

from .. import __version__
from ..errors import InputError
from .atomic import atomic_path

MODEL_FILE = "model.pt"
RESUME_FILE = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Save ``payload`` (tensors, numbers, strings, lists, dicts) atomically with the version."""
    payload = {**payload, "version": __version__}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def resolve_model_file(path: str | os.PathLike) -> Path:
    """A run folder means its ``model.pt``; a file is taken as is."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def load_checkpoint(path: str | os.PathLike, kinds: Optional[Iterable[str]] = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; refuse files that are not ours or of the wrong kind."""
    path = resolve_model_file(path)
    if not path.exists():
        raise InputError(f"{path}: checkpoint not found.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError,
            OSError) as exc:  # a truncated file can fail in the zip reader's seek (OSError)
        reason = "not a torch file" if isinstance(exc, pickle.UnpicklingError) or \
            "Weights only load failed" in str(exc) or "zip" in str(exc).lower() else \
            f"truncated or damaged: {exc.strerror}" if isinstance(exc, OSError) else \
            (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise InputError(f"{path}: not a readable fewshotpicker checkpoint ({reason}).") \
            from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "kind" not in payload:
        raise InputError(f"{path}: is a torch file but not a fewshotpicker checkpoint "
                         f"(no state_dict/kind).")
    kinds = list(kinds or [])
    if kinds and payload["kind"] not in kinds:
        raise InputError(f"{path}: holds a '{payload['kind']}' checkpoint, but "
                         f"{' or '.join(repr(k) for k in kinds)} is needed here.")
    return payload


def load_state_strict(module: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    """Load ``state`` into ``module``; a shape or key mismatch becomes one clear sentence."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        detail = (f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)} instead of "
                  f"{tuple(own[wrong[0]].shape)}" if wrong else
                  f"{len(missing)} missing and {len(unexpected)} unexpected weights")
        raise InputError(f"{path}: the checkpoint is from another model than {what} "
                         f"({detail}).")
    module.load_state_dict(state)

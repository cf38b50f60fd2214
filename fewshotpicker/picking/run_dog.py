"""Run the DoG baseline over many micrographs and collect the picks."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import pandas as pd

from ..config import DogConfig
from ..errors import InputError, failure_message
from ..io.coordinates import empty_coordinates, make_coordinates
from ..io.mrc import read_image
from .dog import pick_dog

log = logging.getLogger("fewshotpicker")


def dog_pick_micrographs(paths: Iterable[Path], cfg: DogConfig,
                         progress: Optional[Callable] = None) -> tuple:
    """Pick every micrograph; returns ``(picks table, {name: threshold}, {name: why failed})``.

    Picks are named by the micrograph path as given. A micrograph that cannot be read or
    picked is named in the third dict (one sentence) and the others still run.
    """
    paths = list(paths)
    frames: List[pd.DataFrame] = []
    thresholds: Dict[str, float] = {}
    failed: Dict[str, str] = {}
    for path in (progress(paths) if progress else paths):
        try:
            image = read_image(path, cfg.diameter).data
            xy, scores, threshold = pick_dog(image, cfg)
        except (InputError, ValueError) as exc:
            failed[str(path)] = failure_message(path, exc)
            if len(paths) > 1:  # a batch of one says it once, in the command's error
                log.error("not picked: %s", failed[str(path)])
            continue
        frames.append(make_coordinates(str(path), xy, scores))
        thresholds[str(path)] = threshold
    frames = [f for f in frames if len(f)]
    picks = pd.concat(frames, ignore_index=True) if frames else empty_coordinates()
    return picks, thresholds, failed

"""Run the DoG baseline over many micrographs and collect the picks."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, List, Optional

import pandas as pd

from ..config import DogConfig
from ..io.coordinates import empty_coordinates, make_coordinates
from ..io.mrc import read_image
from .dog import pick_dog


def dog_pick_micrographs(paths: Iterable[Path], cfg: DogConfig,
                         progress: Optional[Callable] = None) -> tuple:
    """Pick every micrograph; returns ``(picks table, {name: threshold})``.

    Picks are named by the micrograph path as given.
    """
    paths = list(paths)
    frames: List[pd.DataFrame] = []
    thresholds = {}
    for path in (progress(paths) if progress else paths):
        image = read_image(path, cfg.diameter).data
        xy, scores, threshold = pick_dog(image, cfg)
        frames.append(make_coordinates(str(path), xy, scores))
        thresholds[str(path)] = threshold
    frames = [f for f in frames if len(f)]
    picks = pd.concat(frames, ignore_index=True) if frames else empty_coordinates()
    return picks, thresholds

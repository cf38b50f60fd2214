"""Crops around coordinates, micrograph by micrograph, prepared as for picking."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Tuple

import numpy as np
import pandas as pd
import torch

from ..data.regions import Preprocess, check_inside, crop_windows, prepare_micrograph
from ..io.mrc import read_image


def crops_per_micrograph(coords: pd.DataFrame, pre: Preprocess, size: int,
                         device: torch.device, source: str, warn: bool = False
                         ) -> Iterator[Tuple[str, np.ndarray, torch.Tensor]]:
    """For each micrograph named in ``coords`` (paths): ``(path, row positions, crops)``.

    Crops are ``(n, 1, size, size)`` float32 on the CPU, windows of the prepared
    micrograph (model pixels) centred on the coordinates, normalised per crop;
    row positions index ``coords`` (0-based, in its order). Coordinates outside
    a micrograph are refused; boxes crossing its border are padded by
    reflection (logged when ``warn``: exemplars, not every picker's edge picks).
    """
    positions = np.arange(len(coords))
    names = coords["micrograph"].astype(str).to_numpy()
    for path in dict.fromkeys(names):
        mine = positions[names == path]
        xy = coords[["x", "y"]].to_numpy(float)[mine]
        image = read_image(Path(path), pre.box).data
        check_inside(xy, image.shape, pre.box, source, warn)
        prepared = prepare_micrograph(image, pre, device)
        centres = torch.as_tensor(xy * pre.scale, dtype=torch.float32, device=device)
        yield path, mine, crop_windows(prepared, centres, size).cpu()


def crop_all(coords: pd.DataFrame, pre: Preprocess, size: int, device: torch.device,
             source: str, warn: bool = False) -> torch.Tensor:
    """Crops of every row of ``coords``, in its order: ``(n, 1, size, size)``."""
    out = torch.empty(len(coords), 1, size, size)
    for _, rows, crops in crops_per_micrograph(coords, pre, size, device, source, warn):
        out[torch.as_tensor(rows)] = crops
    return out

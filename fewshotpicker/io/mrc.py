"""MRC images and volumes: memory-mapped reads, float32, pixel size kept.

Array convention: ``data[y, x]`` for images and ``data[z, y, x]`` for volumes;
pixel (0, 0) is the first value of the MRC data block, x runs along columns,
y along rows. Every problem with a file raises :class:`InputError` with one
sentence naming the file.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import mrcfile
import numpy as np

from ..errors import InputError
from .atomic import atomic_path

_FINITE_CHUNK = 1 << 24  # values checked per step when scanning for NaN/inf


@dataclass
class MrcData:
    """An image ``(h, w)`` or volume ``(d, h, w)`` with its pixel size in Å (None if unset)."""
    data: np.ndarray
    pixel_size: Optional[float]
    path: Path


def _open(path: Path):
    """Open ``path`` memory-mapped read-only, turning mrcfile's errors into InputError."""
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an MRC file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mrcfile.mmap(path, mode="r", permissive=False)
    except ValueError as exc:
        expected = _size_promised_by_header(path)
        if expected is not None and path.stat().st_size < expected:
            raise InputError(f"{path}: truncated MRC file ({path.stat().st_size} bytes, but "
                             f"its header describes {expected}).") from None
        raise InputError(f"{path}: not a valid MRC file ({str(exc).rstrip('.')}).") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as MRC ({exc}).") from None


def _size_promised_by_header(path: Path) -> Optional[int]:
    """File size in bytes that a readable MRC header describes, or None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                h = mrc.header
                if h is None or mrc.header.map != mrcfile.constants.MAP_ID:
                    return None
                dtype = mrcfile.utils.data_dtype_from_header(h)
                n = int(h.nx) * int(h.ny) * int(h.nz)
                return 1024 + int(h.nsymbt) + n * dtype.itemsize
    except Exception:  # any failure means the header itself is unusable
        return None


def _pixel_size(mrc) -> Optional[float]:
    size = float(mrc.voxel_size.x)
    return size if size > 0 else None


def _check_finite(data: np.ndarray, path: Path) -> None:
    flat = data.reshape(-1)
    for start in range(0, flat.size, _FINITE_CHUNK):
        if not np.isfinite(flat[start:start + _FINITE_CHUNK]).all():
            raise InputError(f"{path}: contains NaN or infinite values.")


def read_image(path: str | os.PathLike, min_side: float = 0) -> MrcData:
    """Read one 2D image as float32 ``(h, w)``.

    A file holding a single-section volume ``(1, h, w)`` is accepted; a stack
    or volume with several sections is refused, as are complex values (a
    Fourier transform), NaN and inf values, an image of one value everywhere (a
    blank exposure) and, with ``min_side`` (px, a particle box), an image
    narrower than that.
    """
    path = Path(path)
    mrc = _open(path)
    try:
        raw = mrc.data
        if raw is None or raw.size == 0:
            raise InputError(f"{path}: holds no data.")
        if raw.dtype.kind == "c":
            raise InputError(f"{path}: holds complex values (MRC mode {int(mrc.header.mode)}, "
                             f"a Fourier transform), but a real-valued micrograph is expected.")
        if raw.ndim == 3 and raw.shape[0] == 1:
            raw = raw[0]
        if raw.ndim != 2:
            raise InputError(f"{path}: holds a stack or volume of shape {tuple(raw.shape)}, "
                             f"but one 2D micrograph is expected.")
        data = np.array(raw, dtype=np.float32)
        pixel = _pixel_size(mrc)
    finally:
        mrc.close()
    _check_finite(data, path)
    _check_image_content(data, path, min_side)
    return MrcData(data, pixel, path)


def read_pixel_size(path: str | os.PathLike) -> Optional[float]:
    """The pixel size in Å that an MRC header states (None when unset or unreadable);
    reads the header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, header_only=True, permissive=True) as mrc:
                return _pixel_size(mrc)
    except Exception:  # an unreadable file is reported where its data are read
        return None


def pixel_size_mismatch(image: Optional[float], model: Optional[float],
                        tolerance: float = 0.02) -> bool:
    """Whether two pixel sizes (Å, None = unknown) are both known and differ by more than
    ``tolerance`` of the model's."""
    return bool(image and model and abs(image - model) > tolerance * model)


def _check_image_content(data: np.ndarray, path: Path, min_side: float) -> None:
    """Refuse a blank image ``(h, w)`` and one with a side under ``min_side`` px."""
    h, w = data.shape
    if min(h, w) < min_side:
        raise InputError(f"{path}: the micrograph is {w} x {h} px, smaller than one particle "
                         f"box ({min_side:g} px).")
    if data.min() == data.max():
        raise InputError(f"{path}: every pixel holds the same value ({data.flat[0]:g}); "
                         f"a blank exposure, not a micrograph.")


def open_volume(path: str | os.PathLike, check_finite: bool = True) -> MrcData:
    """Open a 3D volume ``(d, h, w)`` memory-mapped, without loading it.

    The returned array is a read-only ``np.memmap`` in the file's dtype: slice
    it (for example tile by tile) and convert the slices with
    ``np.asarray(tile, dtype=np.float32)``. The file stays open as long as the
    array is referenced.
    """
    path = Path(path)
    mrc = _open(path)
    data = mrc.data
    if data is None or data.ndim != 3:
        shape = None if data is None else tuple(data.shape)
        mrc.close()
        raise InputError(f"{path}: holds data of shape {shape}, but a 3D volume is expected.")
    if data.dtype.kind == "c":
        mode = int(mrc.header.mode)
        mrc.close()
        raise InputError(f"{path}: holds complex values (MRC mode {mode}, a "
                         f"Fourier transform), but a real-valued volume is expected.")
    if check_finite:
        _check_finite(data, path)
    return MrcData(data, _pixel_size(mrc), path)


def read_volume(path: str | os.PathLike) -> MrcData:
    """Read a whole 3D volume as float32 ``(d, h, w)`` into memory."""
    vol = open_volume(path)
    return MrcData(np.array(vol.data, dtype=np.float32), vol.pixel_size, vol.path)


def write_mrc(path: str | os.PathLike, data: np.ndarray,
              pixel_size: Optional[float] = None) -> Path:
    """Write ``data`` (2D or 3D) as float32 MRC, atomically; return the path."""
    path = Path(path)
    array = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_path(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(array)
            if pixel_size:
                mrc.voxel_size = float(pixel_size)
    return path

"""Particle coordinates in and out: RELION STAR, EMAN .box, Topaz tab-separated text.

Inside the engine a coordinate set is a ``pandas.DataFrame`` with columns

- ``micrograph`` (str): the image name as given (a path or a bare name);
- ``x``, ``y`` (float, px) and, for tomograms, ``z``; origin at the first
  array element, x along columns, y along rows (z along sections);
- ``score`` (float, optional), ``class`` (int, optional).

Images are matched by :func:`micrograph_key`: the file name without folder,
extension and a coordinate file's suffix (``_autopick``, RELION's ``_manualpick``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np
import pandas as pd
import starfile

from ..errors import InputError
from .atomic import atomic_path
from .star import read_star_blocks, resolve_listed

COLUMNS = ["micrograph", "x", "y", "score", "class"]
_SUFFIXES = re.compile(r"(_autopick|_manualpick|_picks|_coords|_truth)$")


def micrograph_key(name: str) -> str:
    """Return the matching key of an image name: ``'a/b/mic_01.mrc' -> 'mic_01'``."""
    stem = Path(str(name)).name
    for ext in (".mrcs", ".mrc", ".star", ".box", ".txt", ".tsv", ".tif", ".tiff"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    return _SUFFIXES.sub("", stem)


def empty_coordinates(three_d: bool = False) -> pd.DataFrame:
    """An empty coordinate table with the standard columns."""
    cols = ["micrograph", "x", "y"] + (["z"] if three_d else []) + ["score", "class"]
    return pd.DataFrame({c: pd.Series(dtype=object if c == "micrograph" else float)
                         for c in cols})


def make_coordinates(micrograph: str | Iterable[str], xy: np.ndarray,
                     score: Optional[np.ndarray] = None,
                     klass: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Build a coordinate table from positions ``xy`` of shape ``(n, 2)`` or ``(n, 3)`` px."""
    xy = np.asarray(xy, dtype=float).reshape(-1, np.shape(xy)[-1] if np.ndim(xy) == 2 else 2)
    n = len(xy)
    names = [micrograph] * n if isinstance(micrograph, str) else list(micrograph)
    table = {"micrograph": names, "x": xy[:, 0], "y": xy[:, 1]}
    if xy.shape[1] == 3:
        table["z"] = xy[:, 2]
    table["score"] = np.ones(n) if score is None else np.asarray(score, dtype=float)
    table["class"] = np.ones(n, dtype=int) if klass is None else np.asarray(klass, dtype=int)
    return pd.DataFrame(table)


# ---------------------------------------------------------------- STAR reading

def _numbers(df: pd.DataFrame, cols: list, path: Path) -> np.ndarray:
    """Columns ``cols`` of ``df`` as float ``(n, len(cols))``; refuses text, NaN and inf."""
    for col in cols:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad))
            raise InputError(f"{path}: {col} holds {int(bad.sum())} value(s) that are not "
                             f"finite numbers (first {df[col].iloc[row]!r}, row {row + 1}).")
    return df[cols].apply(pd.to_numeric).to_numpy(float)


def _table_from_star(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Convert one STAR loop with RELION coordinate columns to the engine table."""
    name_col = next((c for c in ("rlnMicrographName", "rlnTomoName") if c in df), None)
    if "rlnCoordinateX" in df and "rlnCoordinateY" in df:
        cols = ["rlnCoordinateX", "rlnCoordinateY"] + (["rlnCoordinateZ"]
                                                       if "rlnCoordinateZ" in df else [])
        xyz = _numbers(df, cols, path)
    else:
        raise InputError(f"{path}: has no rlnCoordinateX/rlnCoordinateY columns, "
                         f"so it holds no particle coordinates.")
    names = df[name_col].astype(str) if name_col else [micrograph_key(path.name)] * len(df)
    score, klass = _score_and_class(df, path)
    return make_coordinates(list(names), xyz, score, klass)


def _score_and_class(df: pd.DataFrame, path: Path) -> tuple:
    """The figure of merit ``(n,)`` float and class ``(n,)`` int columns, each None if absent."""
    score = _numbers(df, ["rlnAutopickFigureOfMerit"], path)[:, 0] \
        if "rlnAutopickFigureOfMerit" in df else None
    klass = _numbers(df, ["rlnClassNumber"], path)[:, 0].astype(int) \
        if "rlnClassNumber" in df else None
    return score, klass


def read_star_coordinates(path: str | os.PathLike) -> pd.DataFrame:
    """Read coordinates from a STAR file: a table, or a RELION ``autopick.star`` index."""
    path = Path(path)
    blocks = read_star_blocks(path)
    index = blocks.get("coordinate_files")
    if index is not None:
        frames = []
        for mic, ref in zip(index["rlnMicrographName"], index["rlnMicrographCoordinates"]):
            part = read_star_coordinates(resolve_listed(str(ref), path, "coordinate file"))
            part["micrograph"] = str(mic)
            frames.append(part)
        return _concat(frames)
    tables = [df for df in blocks.values() if "rlnCoordinateX" in df]
    if not tables:
        if not blocks or all(len(df) == 0 for df in blocks.values()):
            return empty_coordinates()
        raise InputError(f"{path}: has no rlnCoordinateX/rlnCoordinateY columns, "
                         f"so it holds no particle coordinates.")
    return _concat([_table_from_star(df, path) for df in tables])


def _concat(frames: list) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_coordinates()
    return pd.concat(frames, ignore_index=True)


def read_coordinates(path: str | os.PathLike) -> pd.DataFrame:
    """Read coordinates from a STAR, .box or Topaz file, or from a folder of them.

    A folder is read through its ``autopick.star`` index when present, else
    every ``*.star`` (or ``*.box``) file in it, each named after its micrograph (our
    ``picks.star``, which repeats them all, only when it is the folder's one STAR file).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "autopick.star").exists():
            return read_star_coordinates(path / "autopick.star")
        files = [f for f in sorted(path.glob("*.star")) if f.name != "picks.star"] or \
            sorted(path.glob("*.star")) or sorted(path.glob("*.box"))
        if not files:
            raise InputError(f"{path}: folder holds no autopick.star, *.star or *.box files.")
        return _concat([read_coordinates(f) for f in files])
    suffix = path.suffix.lower()
    if suffix == ".box":
        return read_box(path)
    if suffix in (".txt", ".tsv"):
        return read_topaz(path)
    return read_star_coordinates(path)


# ---------------------------------------------------------------- STAR writing

def _write_star(blocks: Mapping[str, pd.DataFrame], path: Path) -> Path:
    with atomic_path(path) as tmp:
        starfile.write(dict(blocks), tmp, overwrite=True, float_format="%.6f")
    return path


def write_coordinate_table(coords: pd.DataFrame, path: str | os.PathLike,
                           with_scores: bool = False) -> Path:
    """Write an exemplar / truth table: ``rlnMicrographName``, ``rlnCoordinateX/Y[/Z]``."""
    return _write_star({"": _coordinate_frame(coords, with_scores)}, Path(path))


def _coordinate_frame(coords: pd.DataFrame, with_scores: bool) -> pd.DataFrame:
    """The STAR columns of a coordinate table, micrograph names included."""
    three_d = "z" in coords
    name_col = "rlnTomoName" if three_d else "rlnMicrographName"
    df = pd.DataFrame({name_col: coords["micrograph"].astype(str),
                       "rlnCoordinateX": coords["x"].astype(float),
                       "rlnCoordinateY": coords["y"].astype(float)})
    if three_d:
        df["rlnCoordinateZ"] = coords["z"].astype(float)
    if "class" in coords:
        df["rlnClassNumber"] = coords["class"].astype(int)
    if with_scores and "score" in coords:
        df["rlnAutopickFigureOfMerit"] = coords["score"].astype(float)
    return df


def _autopick_table(picks: pd.DataFrame) -> pd.DataFrame:
    n = len(picks)
    score = picks["score"] if "score" in picks else np.ones(n)
    klass = picks["class"] if "class" in picks else np.ones(n)
    return pd.DataFrame({
        "rlnCoordinateX": np.asarray(picks["x"], dtype=float),
        "rlnCoordinateY": np.asarray(picks["y"], dtype=float),
        "rlnClassNumber": np.asarray(klass, dtype=int),
        "rlnAutopickFigureOfMerit": np.asarray(score, dtype=float),
        "rlnAnglePsi": np.full(n, -999.0),
    })


def write_autopick_file(picks: pd.DataFrame, path: str | os.PathLike) -> Path:
    """One micrograph's RELION ``_autopick.star`` (coordinates, class, figure of merit)."""
    return _write_star({"": _autopick_table(picks)}, Path(path))


def write_autopick(picks: pd.DataFrame, out_dir: str | os.PathLike,
                   micrographs: Optional[Iterable[str]] = None,
                   per_micrograph: bool = True) -> Path:
    """Write RELION autopick output: one ``<stem>_autopick.star`` per micrograph + index,
    and every pick in one table, ``picks.star`` (block ``particles``: ``rlnMicrographName``,
    coordinates, class, figure of merit), the form of file cryoSPARC's Import Particle
    Stack takes as its particle meta path.

    Parameters
    ----------
    picks : coordinate table (``micrograph``, ``x``, ``y``, ``score``, ``class``).
    out_dir : folder for the files; the index is ``out_dir/autopick.star``.
    micrographs : every micrograph name that was picked, so that micrographs
        with no picks still get an (empty) file and an index entry.
    per_micrograph : False when each micrograph's file was written as it was picked
        (:func:`write_autopick_file`): only the index and ``picks.star`` are written.

    Returns the index path. The index block is ``data_coordinate_files`` with
    ``rlnMicrographName`` and ``rlnMicrographCoordinates`` (the file path as
    written under ``out_dir``), as RELION 4/5 ``relion_autopick`` writes it.
    """
    out_dir = Path(out_dir)
    names = list(dict.fromkeys(list(micrographs or []) + list(picks["micrograph"].astype(str))))
    by_key = dict(tuple(picks.groupby(picks["micrograph"].astype(str).map(micrograph_key)))) \
        if per_micrograph and len(picks) else {}
    index_rows = []
    for name in names:
        key = micrograph_key(name)
        star = out_dir / f"{key}_autopick.star"
        if per_micrograph:
            write_autopick_file(by_key.get(key, picks.iloc[:0]), star)
        index_rows.append((name, str(star)))
    _write_star({"particles": _coordinate_frame(picks.assign(
        micrograph=picks["micrograph"].astype(str)), with_scores=True)}, out_dir / "picks.star")
    index = pd.DataFrame(index_rows, columns=["rlnMicrographName", "rlnMicrographCoordinates"])
    return _write_star({"coordinate_files": index}, out_dir / "autopick.star")


def write_tomo_coordinates(coords: pd.DataFrame, path: str | os.PathLike,
                           shapes: Mapping[str, tuple], pixel_size: float,
                           relion: int = 5) -> Path:
    """Write 3D picks for RELION 5 (centred Å) or RELION 4 (pixels).

    RELION 5 columns ``rlnCenteredCoordinateX/Y/ZAngst`` are measured from the
    tomogram centre, ``(coordinate - size / 2) * pixel_size``; ``shapes`` maps
    each tomogram key to its ``(d, h, w)`` voxel shape.
    """
    keys = coords["micrograph"].astype(str).map(micrograph_key)
    df = pd.DataFrame({"rlnTomoName": keys})
    if relion == 5:
        for axis, dim in (("x", 2), ("y", 1), ("z", 0)):
            missing = sorted(set(keys) - set(shapes))
            if missing:
                raise InputError(f"No tomogram shape given for {', '.join(missing)}.")
            centre = keys.map(lambda k: shapes[k][dim] / 2.0)
            df[f"rlnCenteredCoordinate{axis.upper()}Angst"] = \
                (coords[axis].astype(float) - centre) * pixel_size
    elif relion == 4:
        for axis in "xyz":
            df[f"rlnCoordinate{axis.upper()}"] = coords[axis].astype(float)
    else:
        raise InputError(f"RELION version {relion} is not supported for tomogram coordinates "
                         f"(use 4 or 5).")
    df["rlnClassNumber"] = coords["class"].astype(int) if "class" in coords else 1
    df["rlnAutopickFigureOfMerit"] = coords["score"].astype(float) if "score" in coords else 1.0
    return _write_star({"particles": df}, Path(path))


def read_tomo_coordinates(path: str | os.PathLike, shapes: Optional[Mapping[str, tuple]] = None,
                          pixel_size: Optional[float] = None) -> pd.DataFrame:
    """Read 3D coordinates in RELION 4 pixels or RELION 5 centred Å (needs shapes, pixel size)."""
    path = Path(path)
    blocks = read_star_blocks(path)
    df = next((d for d in blocks.values()
               if "rlnCenteredCoordinateXAngst" in d or "rlnCoordinateX" in d), None)
    if df is None:
        raise InputError(f"{path}: has no 3D coordinate columns (rlnCoordinateX/Y/Z or "
                         f"rlnCenteredCoordinateX/Y/ZAngst).")
    if "rlnCoordinateX" in df:
        return _table_from_star(df, path)
    if shapes is None or not pixel_size:
        raise InputError(f"{path}: holds RELION 5 centred coordinates; the tomogram shapes "
                         f"and pixel size are needed to convert them to pixels.")
    if "rlnTomoName" not in df:
        raise InputError(f"{path}: holds RELION 5 centred coordinates without rlnTomoName, so "
                         f"they cannot be placed in a tomogram.")
    keys = df["rlnTomoName"].astype(str).map(micrograph_key)
    unknown = sorted(set(keys) - set(shapes))
    if unknown:
        raise InputError(f"{path}: names {len(unknown)} tomogram(s) that match no given "
                         f"tomogram ({', '.join(unknown[:3])}).")
    centred = _numbers(df, [f"rlnCenteredCoordinate{a}Angst" for a in "XYZ"], path)
    xyz = np.stack([centred[:, i] / pixel_size
                    + keys.map(lambda k: shapes[k][d] / 2.0).to_numpy(float)
                    for i, d in ((0, 2), (1, 1), (2, 0))], axis=1)
    score, klass = _score_and_class(df, path)
    return make_coordinates(list(keys), xyz, score, klass)


# ---------------------------------------------------------------- EMAN / Topaz

def write_box(coords: pd.DataFrame, path: str | os.PathLike, box: int) -> Path:
    """Write one micrograph's picks as EMAN ``.box``: corner x, corner y, width, height."""
    corner = np.stack([coords["x"], coords["y"]], axis=1).astype(float) - box / 2.0
    lines = [f"{int(round(cx))}\t{int(round(cy))}\t{box}\t{box}" for cx, cy in corner]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def read_box(path: str | os.PathLike) -> pd.DataFrame:
    """Read an EMAN ``.box`` file; centres are corner + size / 2, named after the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    try:
        rows = np.loadtxt(path, ndmin=2)
    except ValueError:
        raise InputError(f"{path}: is not an EMAN .box file (expected 4 numbers a line).") \
            from None
    if rows.size == 0:
        return empty_coordinates()
    if rows.shape[1] < 4:
        raise InputError(f"{path}: is not an EMAN .box file (expected 4 numbers a line).")
    if not np.isfinite(rows[:, :4]).all():
        raise InputError(f"{path}: line {int(np.argmin(np.isfinite(rows[:, :4]).all(1))) + 1} "
                         f"holds a value that is not a finite number.")
    centres = rows[:, :2] + rows[:, 2:4] / 2.0
    return make_coordinates(micrograph_key(path.name), centres)


def write_topaz(coords: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write Topaz's tab-separated table: ``image_name  x_coord  y_coord  score``."""
    df = pd.DataFrame({
        "image_name": coords["micrograph"].astype(str).map(micrograph_key),
        "x_coord": np.round(coords["x"].astype(float)).astype(int),
        "y_coord": np.round(coords["y"].astype(float)).astype(int),
        "score": coords["score"].astype(float) if "score" in coords else 1.0,
    })
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return Path(path)


def read_topaz(path: str | os.PathLike) -> pd.DataFrame:
    """Read Topaz's tab-separated coordinates (``image_name x_coord y_coord [score]``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    try:
        df = pd.read_csv(path, sep="\t")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: is not a Topaz coordinate table ({type(exc).__name__}).") \
            from None
    needed = {"image_name", "x_coord", "y_coord"}
    if not needed <= set(df.columns):
        raise InputError(f"{path}: is not a Topaz coordinate table (needs columns "
                         f"image_name, x_coord, y_coord).")
    score = _numbers(df, ["score"], path)[:, 0] if "score" in df else None
    return make_coordinates(list(df["image_name"].astype(str)),
                            _numbers(df, ["x_coord", "y_coord"], path), score)


def match_micrographs(coords: pd.DataFrame, micrographs: Iterable[str],
                      source: str) -> pd.DataFrame:
    """Check that every image named in ``coords`` is one of ``micrographs``.

    Raises InputError naming ``source`` and the first unmatched names.
    Returns ``coords`` with the micrograph column replaced by the matching name.
    """
    by_key = {micrograph_key(m): m for m in micrographs}
    keys = coords["micrograph"].astype(str).map(micrograph_key)
    unknown = sorted(set(keys) - set(by_key))
    if unknown:
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        raise InputError(f"{source}: names {len(unknown)} image(s) that match no given "
                         f"micrograph ({shown}).")
    out = coords.copy()
    out["micrograph"] = keys.map(by_key)
    return out

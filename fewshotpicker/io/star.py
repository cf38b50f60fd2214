"""STAR files as RELION writes them: reading the blocks, and the files a STAR file lists.

RELION names files relative to its project folder (``MotionCorr/job002/Movies/a.mrc``),
so a listed name is looked up in the current folder first (RELION's own rule, for
commands run in the project) and then under each folder above the STAR file (the
project, when the command runs elsewhere). Every problem raises :class:`InputError`
with one sentence naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd
import starfile

from ..errors import InputError

#: columns that name image files, in the order they are looked for
IMAGE_COLUMNS = ("rlnMicrographName", "rlnTomoReconstructedTomogram")


def read_star_blocks(path: Path) -> Dict[str, pd.DataFrame]:
    """The table blocks of a STAR file, ``{block name: table}`` (key-value blocks left out)."""
    if not path.exists():
        raise InputError(f"{path}: file not found.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a STAR file.")
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    if head.strip() and b"data_" not in head:  # an empty file is an empty table
        raise InputError(f"{path}: not a STAR file (it holds no data_ block).")
    try:
        blocks = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises several types on malformed text
        raise InputError(f"{path}: cannot be parsed as a STAR file ({exc}).") from None
    return {name: df for name, df in blocks.items() if isinstance(df, pd.DataFrame)}


def resolve_listed(ref: str, star: Path, what: str = "file") -> Path:
    """Find the file ``ref`` that ``star`` lists.

    Tried in order: ``ref`` as given (absolute, or relative to the current folder),
    ``ref`` under each folder above ``star`` (its RELION project), and a file of that
    name beside ``star``. A name found as given is returned unchanged, so names that
    RELION wrote stay RELION's."""
    ref_path = Path(ref)
    candidates = [ref_path]
    if not ref_path.is_absolute():
        candidates += [folder / ref_path for folder in star.resolve().parents]
    candidates.append(star.parent / ref_path.name)
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise InputError(f"{star}: lists {what} {ref}, which is neither in the current folder "
                     f"nor under a folder above the STAR file.")


def read_image_table(star: Path) -> List[Tuple[Path, str]]:
    """The image files a RELION STAR file lists, in its order, each with its RELION name.

    Reads the first table with an ``rlnMicrographName`` column (a MotionCorr or CtfFind
    job's ``corrected_micrographs.star`` / ``micrographs_ctf.star``) or an
    ``rlnTomoReconstructedTomogram`` column (RELION 5's ``tomograms.star``). The name is
    the table's ``rlnTomoName`` where it has one (RELION 5 names a tomogram apart from its
    file: ``TS_01`` for ``rec_TS_01.mrc``), else ``""``."""
    blocks = read_star_blocks(star)
    for column in IMAGE_COLUMNS:
        for table in blocks.values():
            if column in table:
                files = [str(n) for n in table[column]]
                if not files:
                    raise InputError(f"{star}: its {column} column lists no images.")
                names = [str(n) for n in table["rlnTomoName"]] if "rlnTomoName" in table \
                    else [""] * len(files)
                return [(resolve_listed(f, star, "image"), n) for f, n in zip(files, names)]
    raise InputError(f"{star}: lists no images (it has no "
                     f"{' or '.join(IMAGE_COLUMNS)} column).")


def read_image_list(star: Path) -> List[Path]:
    """The image files a RELION STAR file lists (see :func:`read_image_table`)."""
    return [path for path, _ in read_image_table(star)]

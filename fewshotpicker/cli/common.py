"""Helpers shared by the command modules: configs from flags, globs, progress, logging."""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Type, TypeVar

from tqdm import tqdm

from ..config import check_ranges, from_dict, load_config, to_dict, write_run_record
from ..errors import InputError
from ..io.atomic import write_text_atomic
from ..io.coordinates import micrograph_key
from ..io.star import read_image_list, read_image_table

T = TypeVar("T")
IMAGES_HELP = ("MRC files, globs, folders, or a RELION STAR file listing them "
               "(rlnMicrographName, e.g. a CtfFind job's micrographs_ctf.star)")
log = logging.getLogger("fewshotpicker")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr as ``fewshotpicker: message`` (INFO, or DEBUG with --verbose)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="fewshotpicker: %(message)s", stream=sys.stderr, force=True)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="JSON",
                        help="read parameters from a JSON file (a run's config.json works); "
                             "flags given on the command line override it")


def add_training_arguments(parser: argparse.ArgumentParser, compile_help: str) -> None:
    """The flags ``pretrain`` and ``train`` share: film edges, checkpoints, device, compile,
    seed, and ``--config``."""
    parser.add_argument("--no-film-edges", dest="film_edges", action="store_const", const=False,
                        help="where a carbon-film edge crosses a micrograph, its background is "
                             "by default taken on each side of the edge apart, so the step "
                             "leaves no bright and dark bands for the particles beside it; this "
                             "flag keeps one Gaussian background for the whole micrograph")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    parser.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_const", const=True, help=compile_help)
    parser.add_argument("--seed", type=int)
    add_config_argument(parser)


def build_config(cls: Type[T], args: argparse.Namespace, flags: dict) -> T:
    """Defaults <- ``--config`` file <- flags set on the command line.

    ``flags`` maps argparse destinations to config field names; a flag whose
    value is None was not given and leaves the field alone.
    """
    values = to_dict(load_config(cls, args.config)) if getattr(args, "config", None) else {}
    for dest, name in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            values[name] = value
    cfg = from_dict(cls, values)
    check_ranges(cfg, flags)
    return cfg


def start_run(command: str, cls: Type[T], args: argparse.Namespace, flags: dict,
              out: Optional[Path] = None, check: Optional[Callable[[T], None]] = None) -> tuple:
    """Build the command's config, ``check`` it, and record it: returns ``(config, output
    folder)``. A refused setting leaves no output folder behind."""
    cfg = build_config(cls, args, flags)
    if check is not None:
        check(cfg)
    out = Path(out or args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; the output (--out) must be a folder.")
    write_run_record(out, command, cfg)
    return cfg, out


def write_summary(out: Path, summary: dict) -> Path:
    """``summary.json`` in the output folder, written atomically."""
    return write_text_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")


def expand_images(patterns: Sequence[str], what: str = "micrographs",
                  distinct_names: bool = True) -> List[Path]:
    """Expand files, globs, folders and RELION STAR lists into MRC files, without repeats.

    Every pattern must give something: a named file that does not exist, or a glob or
    folder without a match, is refused with its name rather than left out (a typo in
    one of many paths would otherwise drop that micrograph without a word). A ``.star``
    file stands for the images it lists (``rlnMicrographName``, or a RELION 5
    ``tomograms.star``). With ``distinct_names`` two files that share a name in
    different folders are refused: picks are matched to images by name, so their picks
    would be mixed."""
    files: List[Path] = []
    for pattern in patterns:
        matched = _images_of(pattern)
        if not matched:
            raise InputError(f"No {what} found for {pattern}.")
        files += matched
    if not files:
        raise InputError(f"No {what} given.")
    unique: dict = {}
    for f in files:
        unique.setdefault(os.path.abspath(f), f)
    files = list(unique.values())
    if distinct_names:
        refuse_shared_names(files, what)
    return files


def _images_of(pattern: str) -> List[Path]:
    """The image files one command-line pattern stands for (possibly none)."""
    path = Path(os.path.expanduser(pattern))
    if path.is_dir():
        return sorted(path.glob("*.mrc"))
    if path.exists():  # before globbing: a file may have [ or * in its name
        return _listed_or_itself(path)
    if glob.has_magic(pattern):
        return [image for match in sorted(glob.glob(os.path.expanduser(pattern)))
                for image in _listed_or_itself(Path(match))]
    raise InputError(f"{pattern}: file not found.")


def _listed_or_itself(path: Path) -> List[Path]:
    """The images a STAR file lists, or the file itself."""
    return read_image_list(path) if path.suffix.lower() == ".star" else [path]


def listed_names(patterns: Sequence[str]) -> Dict[str, str]:
    """``{absolute path: RELION name}`` of the images that the STAR lists among ``patterns``
    name apart from their files (RELION 5's ``rlnTomoName``)."""
    names: Dict[str, str] = {}
    for pattern in patterns:
        path = Path(os.path.expanduser(pattern))
        if path.is_file() and path.suffix.lower() == ".star":
            names.update({os.path.abspath(p): n for p, n in read_image_table(path) if n})
    return names


def refuse_shared_names(files: Sequence[Path], what: str = "micrographs") -> None:
    """Refuse two files whose names give one matching key (``a/m.mrc`` and ``b/m.mrc``)."""
    first: dict = {}
    for path in files:
        key = micrograph_key(str(path))
        if key in first:
            raise InputError(f"{first[key]} and {path} have the same name ({key}); picks are "
                             f"matched to {what} by name, so give each a distinct name "
                             f"(link them under distinct names, or pick them in separate runs).")
        first[key] = path


def progress(items: Iterable, desc: str, total: Optional[int] = None):
    """A tqdm progress bar on stderr (off when FEWSHOTPICKER_NO_PROGRESS is set)."""
    return tqdm(items, desc=desc, total=total, file=sys.stderr, dynamic_ncols=True,
                disable=bool(os.environ.get("FEWSHOTPICKER_NO_PROGRESS")))


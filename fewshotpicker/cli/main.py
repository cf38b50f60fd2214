"""``fewshotpicker <command>``: the engine's command-line entry point.

Each command lives in its own module with ``add_parser`` and ``run``. Bad
input ends with one sentence on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import InputError
from ..training.distributed import launch_from_environment
from . import (benchmark, demo, dog, evaluate, inspect_model, pick, pick3d, pretrain, prune,
               simulate, train)
from .common import setup_logging

COMMANDS = [simulate, pretrain, train, pick, prune, pick3d, dog, evaluate, inspect_model,
            benchmark, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fewshotpicker",
        description="Few-shot cryo-EM particle picking: simulate, train, pick, evaluate.")
    parser.add_argument("--version", action="version", version=f"fewshotpicker {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def refuse_several_processes(command: str) -> None:
    """Only ``pretrain`` splits its work among processes started by torchrun; any other
    command would run whole in each of them."""
    launch = launch_from_environment()
    if launch.active and command != "pretrain":
        raise InputError(f"{command} runs in one process (pick shares micrographs among "
                         f"GPUs with --device 0,1,...); start it without torchrun "
                         f"({launch.world} processes were started).")


def torchrun_launch():
    """This process's place in a torchrun launch of several processes, else None (also when
    the environment torchrun sets is broken: ``refuse_several_processes`` says so)."""
    try:
        launch = launch_from_environment()
    except InputError:
        return None
    return launch if launch.active else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 a file the system would not read or
    write, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        refuse_several_processes(args.command)
        return int(args.func(args) or 0)
    except InputError as exc:  # a rank's own error (its GPU missing) names the rank
        launch = torchrun_launch()
        rank = f" (rank {launch.rank} of {launch.world})" if launch else ""
        print(f"fewshotpicker {args.command}{rank}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be made, a full disk: say which file
        if not exc.filename:
            raise
        print(f"fewshotpicker {args.command}: error: {exc.filename}: {exc.strerror or exc}.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches every rank; rank 0 alone says so
        launch = torchrun_launch()
        if launch is None or launch.main:
            print(f"fewshotpicker {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""One pretraining run spread over several processes (one per GPU), launched by ``torchrun``.

``torchrun --nproc-per-node 4 -m fewshotpicker pretrain ...`` starts four copies of the
command; each learns its rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``). Every rank draws the same global batch, the same augmentation and the same
masking noise, computes its own rows of it, and DistributedDataParallel averages the
gradients. Each rank's mean loss is weighted by its share of the rows, so the step is the
step one process would take on the whole batch: the run follows the same trajectory (up to
the order of floating-point sums) whatever the number of processes, and a checkpoint
written with four processes continues with one. Rank 0 alone writes files and logs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..device import resolve_device
from ..errors import InputError
from ..io.atomic import atomic_path


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a run: ``rank`` of ``world`` processes, GPU ``local_rank``."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launch_from_environment(env: Mapping[str, str] = os.environ) -> Launch:
    """The launch torchrun describes in ``env`` (one process when it set nothing)."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise InputError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers ({exc}).") from exc
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} does not fit WORLD_SIZE {world}.")
    if world > 1 and not env.get("MASTER_ADDR"):
        raise InputError(f"WORLD_SIZE is {world} but MASTER_ADDR is not set: start several "
                         f"processes with torchrun (it sets both), or unset WORLD_SIZE.")
    return Launch(rank=rank, world=world, local_rank=local)


def start(launch: Launch, device_spec: str) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPUs) and return this rank's device:
    GPU ``local_rank``, or the CPU when ``device_spec`` is ``cpu`` or no GPU is present."""
    if not launch.active:
        return resolve_device(device_spec)
    spec = (device_spec or "auto").strip().lower()
    if spec != "auto" and spec not in ("cpu", "cuda"):
        raise InputError(f"--device {device_spec!r}: with torchrun each process takes the GPU "
                         f"of its local rank; give auto, cuda or cpu.")
    use_cuda = spec != "cpu" and torch.cuda.is_available()
    if spec == "cuda" and not use_cuda:
        raise InputError("--device cuda was asked for, but no CUDA GPU is available here.")
    if use_cuda:
        if launch.local_rank >= torch.cuda.device_count():
            raise InputError(f"Local rank {launch.local_rank} has no GPU: this machine has "
                             f"{torch.cuda.device_count()}; start at most that many processes "
                             f"per node.")
        device = torch.device(f"cuda:{launch.local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return device


def finish(launch: Launch) -> None:
    """Leave the process group (after the last collective)."""
    if launch.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_rows(n: int, launch: Launch) -> Tuple[slice, float]:
    """This rank's rows of a global batch of ``n`` and the weight of its mean loss.

    The rows are split as evenly as possible; the weight ``rows * world / n`` makes
    DDP's average of the ranks' gradients the gradient of the whole batch's mean loss.
    A rank left without rows (``n < world``) computes row 0 with weight 0, so that every
    parameter still takes part in the gradient exchange.
    """
    if not launch.active:
        return slice(0, n), 1.0
    bounds = np.linspace(0, n, launch.world + 1).round().astype(int)
    lo, hi = int(bounds[launch.rank]), int(bounds[launch.rank + 1])
    if hi == lo:
        return slice(0, 1), 0.0
    return slice(lo, hi), (hi - lo) * launch.world / n


def summed(value: torch.Tensor, launch: Launch) -> torch.Tensor:
    """``value`` summed over the ranks (itself with one process)."""
    if not launch.active:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, launch: Launch, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank, so that all stop at the same step."""
    if not launch.active:
        return flag
    return bool(summed(torch.tensor([float(flag)], device=device), launch).item() > 0)


def shared_bank(build: Callable[[], tuple], path: Path, launch: Launch) -> tuple:
    """The region bank built once: rank 0 runs ``build() -> (bank (n, 1, s, s), skipped)``
    and saves the bank to ``path`` (atomically); the other ranks map that file, so the
    micrographs are read once and the host holds one copy. Returns ``(bank, skipped)``;
    the other ranks get ``{}`` for ``skipped`` (rank 0 writes the summary)."""
    if not launch.active:
        return build()
    bank, skipped = build() if launch.main else (None, {})
    if launch.main:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, bank.numpy())
    dist.barrier()
    if not launch.main:
        bank = torch.from_numpy(np.load(path, mmap_mode="c"))
    dist.barrier()
    if launch.main:
        path.unlink()  # every rank holds its mapping; the file's pages go when they close
    return bank, skipped

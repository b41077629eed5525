"""Data parallelism with ``torch.distributed``: batches of prompt pairs split across processes,
their sums all-reduced.

Launch a command with torchrun, e.g. ``torchrun --nproc_per_node 2 .venv/bin/circuits discover
...``. `init` joins the process group that torchrun's environment describes (gloo on CPU, NCCL on
CUDA). Node effects, edge effects, ablation means and evaluation then take every
``world_size``-th batch from their rank on (`shard`, which keeps each batch's index in the whole
dataset: random ablations are seeded by it) and add up their per-batch sums across processes
(`all_sum`, in float64), so every number equals a single process's up to the order of float
additions. Batches are cut before they are split, so a batch holds the same pairs however many
processes run. Dictionary training splits the forwards that fill its activation buffer and
gathers what they read (`gathered`), so every process trains the same SAEs on the same buffer,
and splits its held-out metrics like evaluation. In a distributed run only rank 0 writes files
(`circuits.files`) and prints.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "all_sum",
    "alone",
    "finish",
    "gathered",
    "init",
    "initialised",
    "rank",
    "shard",
    "world_size",
]

T = TypeVar("T")


def initialised() -> bool:
    """Whether this process is part of a process group (torch need not be imported to ask)."""
    torch = sys.modules.get("torch")
    return (
        torch is not None
        and torch.distributed.is_available()
        and (torch.distributed.is_initialized())
    )


_alone = [False]  # inside `alone`


def rank() -> int:
    """This process's rank (0 outside a distributed run, and inside `alone`)."""
    return sys.modules["torch"].distributed.get_rank() if initialised() and not _alone[0] else 0


def world_size() -> int:
    """How many processes share the work (1 outside a distributed run, and inside `alone`)."""
    if not initialised() or _alone[0]:
        return 1
    return sys.modules["torch"].distributed.get_world_size()


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside the block this process works as if it ran by itself: it takes every batch, and
    its sums and gatherings stay its own (no collective call, so the processes may diverge)."""
    before = _alone[0]
    _alone[0] = True
    try:
        yield
    finally:
        _alone[0] = before


def init() -> bool:
    """Join the process group torchrun describes; False when not launched with WORLD_SIZE > 1."""
    if initialised():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch

    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def finish(*, wait: bool) -> None:
    """Leave the process group, after the other processes reach this point when ``wait``.

    A process that exits with its group still open can abort in the communication threads'
    teardown while a peer is still talking to it; ``wait=False`` after an error, when the peers
    may never arrive (torchrun stops them).
    """
    if not initialised():
        return
    torch = sys.modules["torch"]
    if wait:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def shard(items: Sequence[T]) -> list[tuple[int, T]]:
    """``[(index, item)]`` this process handles: every ``world_size``-th item from its rank.

    Raises:
        ValueError: fewer items than processes (some would have nothing to add).
    """
    size = world_size()
    if size > 1 and len(items) < size:
        raise ValueError(
            f"{len(items)} batches for {size} processes; give more pairs or a smaller "
            "--batch-size, or start fewer processes"
        )
    return [(i, item) for i, item in enumerate(items) if i % size == rank()]


def all_sum(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each tensor summed over the processes (one all-reduce, in float64), in its own dtype and
    device; the tensors themselves outside a distributed run."""
    if world_size() == 1 or not tensors:
        return list(tensors)
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if (
        torch.distributed.get_backend() == "nccl"
    ) else torch.device("cpu")  # fmt: skip
    flat = torch.cat([t.detach().to(device, torch.float64).reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.device, t.dtype))
        start += t.numel()
    return out


def gathered(value: T) -> list[T]:
    """Every process's ``value``, in rank order (pickled; tensors on the CPU travel best);
    ``[value]`` outside a distributed run."""
    if world_size() == 1:
        return [value]
    torch = sys.modules["torch"]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, value)
    return out

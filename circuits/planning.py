"""Batch sizes that fit a memory budget, from the measured peak memory of a few batches.

Attribution and evaluation add their results up batch by batch, so their peak memory is what a
batch needs above what the process already holds (the model, the dictionaries, the task),
whatever the number of pairs. That extra peak grows about linearly with the batch size. The
planner runs the real work (a few batches at a time) at two small batch sizes, measures the
extra peak of each (`peak_bytes`), fits ``peak(b) = fixed + per_example * b``, takes the largest
batch whose predicted peak stays within ``budget`` times ``headroom``, then measures that batch
size too and shrinks it in proportion while it is over (small batches under-predict large ones:
allocator and kernel workspaces grow in steps):

    longest = sorted(pairs, key=lambda p: -len(model.tokenize([p.clean_prefix]).input_ids[0]))
    run = lambda b, n: node_effects(model, saes, longest[:n], batch_size=b, progress=False)
    plan = plan_batch_size(run, budget)
    node_effects(model, saes, pairs, batch_size=plan.batch_size)

Peak memory is the device's (``torch.cuda.max_memory_allocated``) on CUDA and the process's
resident set on CPU (Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``).
Where neither can be measured the planner says so instead of guessing.
"""

from __future__ import annotations

import ctypes
import gc
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["BatchPlan", "parse_size", "peak_bytes", "plan_batch_size"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes in ``"4GiB"``, ``"512 MB"``, ``"1e9"`` (decimal and binary units)."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r}; write e.g. 4GiB, 512MB or 2e9")
    size = float(match.group(1)) * _UNITS[unit]
    if not size > 0:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(size)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Hand freed heap memory back and reset the resident-set peak; False where unable."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except (OSError, AttributeError):
        return False
    return _status_kib("VmHWM") is not None


def peak_bytes(call: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[int, Any]:
    """``(extra peak bytes, result)`` of ``call()``: the most memory it held above what was held
    before it, on ``device`` (CUDA) or in this process's resident set (CPU).

    Raises:
        RuntimeError: where the peak cannot be measured (not Linux, no /proc access).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, result
    if not _reset_rss_peak():
        raise RuntimeError(
            "cannot measure peak memory here (it needs Linux's /proc/self/clear_refs); "
            "give a batch size instead"
        )
    before = _status_kib("VmRSS")
    result = call()
    return max(0, (_status_kib("VmHWM") - before) * 1024), result


@dataclass(frozen=True)
class BatchPlan:
    """A planned batch size and what it was planned from.

    Attributes:
        batch_size: The largest batch predicted to fit.
        predicted: Its extra peak as measured on ``batches`` batches of that size, bytes.
        budget: The budget, bytes.
        measured: ``((batch size, extra peak bytes), ...)`` of the probe batches.
    """

    batch_size: int
    predicted: int
    budget: int
    measured: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        mib = 2**20
        probes = ", ".join(f"{b}: {p / mib:.0f} MiB" for b, p in self.measured)
        return (
            f"batch size {self.batch_size}: peak {self.predicted / mib:.0f} MiB of the "
            f"{self.budget / mib:.0f} MiB budget (measured at batch sizes {probes})"
        )


def plan_batch_size(
    run: Callable[[int, int], Any],
    budget: int,
    *,
    device: torch.device | str = "cpu",
    probes: tuple[int, int] = (2, 8),
    batches: int = 3,
    largest: int = 4096,
    headroom: float = 0.8,
) -> BatchPlan:
    """The largest batch size whose measured extra peak memory is within ``headroom * budget``.

    Args:
        run: ``run(batch_size, examples)`` does the real work on the first ``examples``
            examples in batches of ``batch_size``; give it the longest examples first, since
            padding makes their batches the largest. It is called once per measured size, after
            one unmeasured warm-up call.
        budget: Bytes the work may use above what the process holds when it starts.
        device: Where the work's tensors live (``model.device``).
        probes: The two batch sizes the line is fitted on.
        batches: Batches per measurement (``examples = batches * batch_size``): a run of a
            few batches peaks above a single one. Each size is measured twice and the smaller
            peak kept, since memory the allocator or other threads touch meanwhile only adds.
        largest: The largest batch size returned.
        headroom: The share of ``budget`` the prediction may fill (allocator slack, noise).

    Raises:
        ValueError: when even one example is predicted not to fit.
    """
    small, large = probes
    if not 0 < small < large:
        raise ValueError(f"probes must be two increasing batch sizes, got {probes}")

    def peak(b: int) -> int:  # the smaller of two: a resident-set peak only errs upwards
        return min(peak_bytes(lambda: run(b, batches * b), device)[0] for _ in range(2))

    run(small, small)  # warm-up: lazy allocations and caches are not per-batch memory
    measured = tuple((b, peak(b)) for b in (small, large))
    (b1, p1), (b2, p2) = measured
    per_example = max((p2 - p1) / (b2 - b1), 1.0)
    fixed = max(p1 - per_example * b1, 0.0)
    allowed = headroom * budget
    if fixed + per_example > allowed:
        raise ValueError(
            f"one example is predicted to need {(fixed + per_example) / 2**20:.0f} MiB, more "
            f"than {headroom:.0%} of the {budget / 2**20:.0f} MiB budget; raise the budget"
        )
    batch = int(min(largest, (allowed - fixed) // per_example))
    # The line is fitted on small batches; measure the chosen one and shrink while it is over.
    for _ in range(4):
        used = peak(batch)
        measured += ((batch, used),)
        if used <= allowed or batch == 1:
            break
        batch = max(1, int(batch * allowed / used))
    else:
        used = peak(batch)
        measured += ((batch, used),)
    if used > allowed:
        raise ValueError(
            f"batches of {batch} need {used / 2**20:.0f} MiB, more than {headroom:.0%} of the "
            f"{budget / 2**20:.0f} MiB budget; raise the budget"
        )
    return BatchPlan(batch, used, budget, measured)

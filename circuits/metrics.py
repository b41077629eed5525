"""Metrics: one number per prompt, read from the logits at each prompt's last position.

A metric is a function ``(logits_last [batch, vocab], info: BatchInfo) -> [batch]``. The shipped
ones follow Sparse Feature Circuits:

- ``logit_diff``: ``logit[patch_answer] - logit[clean_answer]``, so patching towards the patch
  prompt makes the effect positive;
- ``answer_logprob``: ``log p(clean_answer)`` (for tasks without patch prompts);
- ``kl_to_clean``: ``KL(p_clean || p_run)``, how far this run's next-token distribution moved
  from the clean run's (zero, with a zero gradient, on the clean run itself, so first-order
  methods such as AtP see no effect through it).

Any callable with the same signature works too; `get_metric` wraps it in a `Metric`, whose
``__call__`` checks the shape and raises `MetricError` naming the metric and the offending
examples when a value is NaN or infinite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = [
    "BatchInfo",
    "Metric",
    "MetricError",
    "METRICS",
    "answer_logprob",
    "get_metric",
    "kl_to_clean",
    "logit_diff",
]


class MetricError(ValueError):
    """A metric that cannot be computed, or that returned NaN / infinite values."""


@dataclass(frozen=True, eq=False)
class BatchInfo:
    """What a metric may read about each row besides its logits.

    Rows may repeat an example (integrated-gradient steps, patched runs); every field follows the
    rows.

    Attributes:
        clean_answer: ``[batch]`` token id of each row's clean answer.
        patch_answer: ``[batch]`` token id of each row's patch answer, or None for a task without
            patch prompts.
        example: ``[batch]`` index of each row's example in the whole dataset (for messages).
        clean_logits: ``[batch, vocab]`` last-position logits of the unpatched clean run, once a
            method has run it; None before.
    """

    clean_answer: Tensor
    patch_answer: Tensor | None
    example: Tensor
    clean_logits: Tensor | None = None

    def __len__(self) -> int:
        return self.clean_answer.shape[0]

    def take(self, rows: Tensor) -> BatchInfo:
        """The rows ``rows`` (``[n]`` indices), in that order."""
        return BatchInfo(
            clean_answer=self.clean_answer[rows],
            patch_answer=None if self.patch_answer is None else self.patch_answer[rows],
            example=self.example[rows],
            clean_logits=None if self.clean_logits is None else self.clean_logits[rows],
        )

    def repeat(self, n: int) -> BatchInfo:
        """``n`` stacked copies: row ``k * batch + j`` is row ``j``, as ``Tensor.repeat`` stacks."""
        rows = torch.arange(len(self), device=self.clean_answer.device).repeat(n)
        return self.take(rows)

    def with_clean_logits(self, clean_logits: Tensor) -> BatchInfo:
        """A copy holding the clean run's ``[batch, vocab]`` last-position logits (detached)."""
        return replace(self, clean_logits=clean_logits.detach())


def logit_diff(logits_last: Tensor, info: BatchInfo) -> Tensor:
    """``logit[patch_answer] - logit[clean_answer]``, ``[batch]``."""
    if info.patch_answer is None:
        raise MetricError(
            "logit_diff needs patch answers, and this task has no patch prompts; use "
            "metric='answer_logprob' (or a custom metric) for zero-ablation tasks"
        )
    logits = logits_last.float()
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, info.patch_answer] - logits[rows, info.clean_answer]


def answer_logprob(logits_last: Tensor, info: BatchInfo) -> Tensor:
    """``log p(clean_answer)`` at the last position, ``[batch]``."""
    logprobs = logits_last.float().log_softmax(dim=-1)
    rows = torch.arange(logprobs.shape[0], device=logprobs.device)
    return logprobs[rows, info.clean_answer]


def kl_to_clean(logits_last: Tensor, info: BatchInfo) -> Tensor:
    """``KL(p_clean || p_run) = sum_v p_clean (log p_clean - log p_run)``, ``[batch]``."""
    if info.clean_logits is None:
        raise MetricError("kl_to_clean needs the clean run's logits (BatchInfo.clean_logits)")
    clean = info.clean_logits.float().log_softmax(dim=-1)  # [batch, vocab]
    run = logits_last.float().log_softmax(dim=-1)  # [batch, vocab]
    return (clean.exp() * (clean - run)).sum(dim=-1)


METRICS: dict[str, Callable[[Tensor, BatchInfo], Tensor]] = {
    "logit_diff": logit_diff,
    "answer_logprob": answer_logprob,
    "kl_to_clean": kl_to_clean,
}
"""The shipped metrics by name."""


@dataclass(frozen=True, eq=False)
class Metric:
    """A named metric whose values are checked: ``[batch]`` and finite.

    Attributes:
        name: How results and messages name it (a shipped name, or the callable's ``__name__``).
        fn: ``(logits_last [batch, vocab], info) -> [batch]``.
    """

    name: str
    fn: Callable[[Tensor, BatchInfo], Tensor]

    def __call__(self, logits_last: Tensor, info: BatchInfo) -> Tensor:
        """The metric of each row, ``[batch]``.

        Raises:
            MetricError: when the result is not a ``[batch]`` tensor, or holds NaN / inf values
                (the message names the examples, as indices into the dataset).
        """
        values = self.fn(logits_last, info)
        rows = logits_last.shape[0]
        if not isinstance(values, Tensor) or tuple(values.shape) != (rows,):
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise MetricError(
                f"metric {self.name!r} must return one value per row, a [{rows}] tensor; "
                f"got {shape}"
            )
        bad = ~torch.isfinite(values)
        if bool(bad.any()):
            examples = sorted(set(info.example[bad.to(info.example.device)].tolist()))
            shown = ", ".join(map(str, examples[:20])) + (" ..." if len(examples) > 20 else "")
            raise MetricError(
                f"metric {self.name!r} returned NaN or infinite values for {len(examples)} "
                f"example(s) (dataset indices): {shown}"
            )
        return values


def get_metric(metric: str | Callable[[Tensor, BatchInfo], Tensor] | Metric) -> Metric:
    """A `Metric` from a shipped name, a callable, or a `Metric` (returned as it is).

    Raises:
        ValueError: for an unknown name (the message lists the shipped ones).
        TypeError: for anything else.
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; shipped metrics: {', '.join(METRICS)}")
        return Metric(metric, METRICS[metric])
    if callable(metric):
        return Metric(getattr(metric, "__name__", type(metric).__name__), metric)
    raise TypeError(
        f"a metric is a shipped name ({', '.join(METRICS)}) or a callable "
        f"(logits_last [batch, vocab], info) -> [batch]; got {type(metric).__name__}"
    )

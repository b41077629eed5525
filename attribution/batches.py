"""Prompt pairs as tokenized batches: the input every attribution method takes.

`pair_batches` validates a whole dataset first (`circuits.tasks.validate`: single-token answers,
equal clean/patch token lengths, no unknown words), then tokenizes it into `PairBatch` records.
Each record remembers which dataset examples it holds, so effects can be averaged over all
examples however the batches were cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from circuits.metrics import BatchInfo
from circuits.models import Batch, Model
from circuits.tasks import PromptPair, Task, TaskError, validate

__all__ = ["PairBatch", "TaskLike", "pair_batches"]

TaskLike = Task | Sequence[PromptPair] | Iterable[Sequence[PromptPair] | Task]
"""A task, a list of pairs, or an iterable of batches (each a task or a list of pairs)."""


@dataclass(frozen=True, eq=False)
class PairBatch:
    """Tokenized clean (and patch) prompts of a batch of examples, padded on the right.

    Attributes:
        clean: The clean prompts; ``input_ids [batch, pos]``.
        patch: The patch prompts, same shape and lengths, or None (zero-ablation counterfactual).
        info: Answers and dataset indices for the metric (`circuits.metrics.BatchInfo`).
    """

    clean: Batch
    patch: Batch | None
    info: BatchInfo

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def mask(self) -> torch.Tensor:
        """``[batch, pos]`` 1.0 at real tokens and 0.0 at padding."""
        return self.clean.attention_mask.float()


def _as_batches(data: TaskLike, batch_size: int) -> tuple[list[list[PromptPair]], str]:
    """Split ``data`` into lists of pairs (keeping given batches) and name where it came from."""
    if isinstance(data, Task):
        pairs, source = list(data.pairs), data.source
    elif isinstance(data, Sequence) and data and all(isinstance(p, PromptPair) for p in data):
        pairs, source = list(data), "the given prompt pairs"
    else:
        batches = []
        for index, item in enumerate(data):
            chunk = list(item.pairs) if isinstance(item, Task) else list(item)
            if not chunk or not all(isinstance(p, PromptPair) for p in chunk):
                raise TypeError(
                    f"batch {index} is not a non-empty list of PromptPair; give a Task, a list of "
                    "PromptPair, or an iterable of such lists"
                )
            batches.append(chunk)
        if not batches:
            raise TaskError("no prompt pairs given")
        return batches, "the given batches"
    if not pairs:
        raise TaskError("no prompt pairs given")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)], source


def _answer_ids(tokenizer, answers: Sequence[str], device: torch.device) -> torch.Tensor:
    """``[batch]`` token id of each (validated, single-token) answer."""
    ids = [tokenizer(answer, add_special_tokens=False)["input_ids"][0] for answer in answers]
    return torch.tensor(ids, device=device)


def pair_batches(model: Model, data: TaskLike, *, batch_size: int = 16) -> list[PairBatch]:
    """Validate prompt pairs and tokenize them into batches.

    Args:
        model: Whose tokenizer and device to use.
        data: A `Task`, a list of `PromptPair`, or an iterable of batches (each a `Task` or a list
            of `PromptPair`, kept as given; ``batch_size`` is then ignored).
        batch_size: Examples per batch when ``data`` is one task or list.

    Raises:
        TaskError: listing every unusable pair (multi-token answers, clean/patch prompts of
            different token lengths, unknown words), or when some pairs have patch prompts and
            others do not.
    """
    chunks, source = _as_batches(data, batch_size)
    every = tuple(pair for chunk in chunks for pair in chunk)
    validate(Task(name="attribution", split="input", pairs=every, source=source), model.tokenizer)
    with_patch = {pair.patch_prefix is not None for pair in every}
    if len(with_patch) > 1:
        raise TaskError(
            f"{source}: either every pair has a patch prompt or none does (zero-ablation)"
        )
    has_patch = with_patch.pop()

    device = model.device
    batches, start = [], 0
    for chunk in chunks:
        clean = model.tokenize([pair.clean_prefix for pair in chunk])
        patch = model.tokenize([pair.patch_prefix for pair in chunk]) if has_patch else None
        if patch is not None and not torch.equal(patch.attention_mask, clean.attention_mask):
            raise TaskError(
                f"{source}: clean and patch prompts of examples {start}..{start + len(chunk) - 1} "
                "tokenize to different lengths"
            )
        info = BatchInfo(
            clean_answer=_answer_ids(model.tokenizer, [p.clean_answer for p in chunk], device),
            patch_answer=(
                _answer_ids(model.tokenizer, [p.patch_answer for p in chunk], device)
                if has_patch
                else None
            ),
            example=torch.arange(start, start + len(chunk), device=device),
        )
        batches.append(PairBatch(clean=clean, patch=patch, info=info))
        start += len(chunk)
    return batches

"""`node_effects`: one entry point for every node-attribution method.

Steps:

1. Check the submodules (each must exist and have a dictionary) and the options.
2. Validate and tokenize the prompt pairs into batches (`attribution.batches.pair_batches`):
   multi-token answers, clean/patch prompts of different token lengths and unknown words are
   refused before anything runs. No patch prompts means zero-ablation (delta = -clean).
3. Per batch, the method's per-example effects (`atp_effects`, `ig_effects`, `ig_joint_effects`,
   `exact_effects`): ``[batch, pos, width]`` features and ``[batch, pos]`` errors.
4. Aggregate each example (``"sum"`` over positions, or ``"none"`` to keep them) and add the
   examples up; divide by the number of examples at the end, so uneven batches weigh each example
   the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Literal

import torch
from tqdm.auto import tqdm

from attribution.atp import atp_effects
from attribution.batches import PairBatch, TaskLike, pair_batches
from attribution.effects import BatchEffects, NodeEffects, SubmoduleEffects
from attribution.exact import exact_effects, exact_run_count, runs_error
from attribution.ig import ig_effects, ig_joint_effects
from attribution.splice import check_submodules
from circuits.dictionaries import Dictionary
from circuits.distributed import all_sum, shard
from circuits.metrics import BatchInfo, Metric, get_metric
from circuits.models import Model

__all__ = ["Aggregation", "Method", "node_effects"]

Method = Literal["atp", "ig", "ig-joint", "exact"]
Aggregation = Literal["none", "sum"]
METHODS = ("atp", "ig", "ig-joint", "exact")
AGGREGATIONS = ("none", "sum")


def _check_equal_lengths(batches: list[PairBatch]) -> None:
    """Aggregation "none" compares positions across prompts: all must have the same length."""
    lengths: dict[int, list[int]] = {}
    for batch in batches:
        for example, last in zip(
            batch.info.example.tolist(), batch.clean.last.tolist(), strict=True
        ):
            lengths.setdefault(last + 1, []).append(example)
    if len(lengths) > 1:
        found = "; ".join(
            f"{n} tokens: examples {', '.join(map(str, ex[:8]))}{' ...' if len(ex) > 8 else ''}"
            for n, ex in sorted(lengths.items())
        )
        raise ValueError(
            "aggregation='none' keeps positions, so every prompt must have the same number of "
            f"tokens; found {found}. Use aggregation='sum', or one template per call."
        )


def node_effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task_or_batches: TaskLike,
    *,
    method: Method,
    metric: str | Callable[[torch.Tensor, BatchInfo], torch.Tensor] | Metric | None = None,
    aggregation: Aggregation = "sum",
    steps: int = 10,
    batch_size: int = 16,
    submodules: Iterable[str] | None = None,
    max_runs: int | None = 20_000,
    progress: bool = True,
) -> NodeEffects:
    """Effect of every feature and error node on a metric, averaged over examples.

    Args:
        model: The model (`circuits.models.load_model`).
        dictionaries: ``{submodule: Dictionary}`` (`circuits.dictionaries.load_dictionaries`).
        task_or_batches: A `circuits.tasks.Task`, a list of `PromptPair`, or an iterable of
            batches (each a task or list of pairs, kept as given).
        method: ``"atp"`` (attribution patching), ``"ig"`` (integrated gradients per submodule),
            ``"ig-joint"`` (all submodules interpolated together; see `attribution.ig`) or
            ``"exact"`` (each node patched alone).
        metric: A shipped name (``"logit_diff"``, ``"answer_logprob"``, ``"kl_to_clean"``) or a
            callable ``(logits_last [batch, vocab], info) -> [batch]``. None: ``"logit_diff"``
            when the task has patch prompts, else ``"answer_logprob"``.
        aggregation: ``"sum"`` sums each example's effects over positions; ``"none"`` keeps
            positions (all prompts must then have the same token length).
        steps: Interpolation steps for ``"ig"`` and ``"ig-joint"``.
        batch_size: Examples per batch.
        submodules: Names to attribute; None for every submodule with a dictionary.
        max_runs: For ``"exact"``: refuse, before any patched run, when the whole dataset needs
            more patched runs (counting costs one clean and one patch forward per batch); None
            for no limit and no count.
        progress: Show progress bars (batches, and submodules for ``"ig"``).

    Returns:
        `NodeEffects` with ``[pos, width]`` / ``[pos]`` (``"none"``) or ``[width]`` / ``[]``
        (``"sum"``) tensors per submodule, in float32 on the model's device.

    Raises:
        circuits.tasks.TaskError: unusable prompt pairs (every one listed).
        ValueError: an unknown method, aggregation or submodule; a submodule without a
            dictionary; unequal prompt lengths with ``aggregation="none"``.
        circuits.metrics.MetricError: a metric returning NaN / inf (naming the examples).
        attribution.exact.ExactRunsError: ``"exact"`` beyond ``max_runs``.
    """
    # 1. Options and submodules.
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    names = check_submodules(model, dictionaries, submodules)

    # 2. Validated, tokenized batches.
    batches = pair_batches(model, task_or_batches, batch_size=batch_size)
    has_patch = batches[0].patch is not None
    checked = get_metric(
        metric if metric is not None else ("logit_diff" if has_patch else "answer_logprob")
    )
    if aggregation == "none":
        _check_equal_lengths(batches)

    run: Callable[..., BatchEffects] = {
        "atp": atp_effects,
        "ig": partial(ig_effects, steps=steps, progress=progress),
        "ig-joint": partial(ig_joint_effects, steps=steps),
        "exact": partial(exact_effects, max_runs=None),
    }[method]
    if method == "exact" and max_runs is not None:
        runs = sum(
            exact_run_count(model, dictionaries, batch, metric=checked, submodules=names)
            for batch in batches
        )
        if runs > max_runs:
            n = sum(len(batch) for batch in batches)
            raise runs_error(runs, max_runs, f"{n} examples over {len(names)} submodules")

    # 3-4. Per batch, summed over examples.
    keep_positions = aggregation == "none"
    feature_sums: dict[str, torch.Tensor] = {}
    error_sums: dict[str, torch.Tensor] = {}
    clean_sum, patch_sum, count = 0.0, 0.0, 0
    for _, batch in tqdm(shard(batches), desc=f"{method} node effects", disable=not progress):
        effects = model.in_session(
            run, model, dictionaries, batch, metric=checked, submodules=names
        )
        for name in names:
            f, e = effects.features[name], effects.errors[name]  # [b, pos, width], [b, pos]
            if not keep_positions:
                f, e = f.sum(dim=1), e.sum(dim=1)  # [b, width], [b]
            f, e = f.sum(dim=0), e.sum(dim=0)  # [(pos,) width], [(pos)]
            feature_sums[name] = feature_sums[name] + f if name in feature_sums else f
            error_sums[name] = error_sums[name] + e if name in error_sums else e
        clean_sum += float(effects.metric_clean.double().sum())
        if effects.metric_patch is not None:
            patch_sum += float(effects.metric_patch.double().sum())
        count += len(batch)
    totals = torch.tensor([clean_sum, patch_sum, count], dtype=torch.float64)
    *summed, totals = all_sum([*feature_sums.values(), *error_sums.values(), totals])
    feature_sums = dict(zip(names, summed[: len(names)], strict=True))
    error_sums = dict(zip(names, summed[len(names) :], strict=True))
    clean_sum, patch_sum, count = totals[0].item(), totals[1].item(), int(totals[2].item())

    return NodeEffects(
        effects={
            name: SubmoduleEffects(
                features=feature_sums[name] / count, error=error_sums[name] / count
            )
            for name in names
        },
        method=method,
        aggregation=aggregation,
        metric=checked.name,
        total_effect=(patch_sum - clean_sum) / count if has_patch else None,
        metric_clean=clean_sum / count,
        n_examples=count,
        steps=steps if method in ("ig", "ig-joint") else None,
    )

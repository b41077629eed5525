"""Exact activation patching: each node patched alone, the metric measured.

The oracle Sparse Feature Circuits (Marks et al., ICLR 2025) validates AtP and IG against. For a
batch of prompt pairs:

1. Clean and patch forwards (no gradients): each chosen submodule's features and error at both
   ends; zeros at the patch end for zero-ablation.
2. The nodes to patch: every (example, position, feature) whose patch value differs from its
   clean value, and every (example, position) error node whose ``[d_model]`` vectors differ;
   padding positions are skipped.
3. One patched run per node: the example's clean prompt with that one node set to its patch
   value (the rest of its submodule at clean values, everything downstream recomputed). Runs
   are rows of large batches, one submodule per forward, ``runs_per_forward`` rows at a time.
4. Effect = ``m(patched run) - m(clean)``.

Cost: one forward row per differing node, which grows with positions x active features; the
``max_runs`` guard refuses before any patched run when the count is too large.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from attribution.batches import PairBatch
from attribution.effects import BatchEffects
from attribution.splice import Endpoints, Values, endpoints, run_spliced, take_batch
from circuits.dictionaries import Dictionary
from circuits.metrics import Metric
from circuits.models import Model

__all__ = ["ExactRunsError", "exact_effects", "exact_run_count"]


class ExactRunsError(ValueError):
    """Exact patching would need more runs than the ``max_runs`` guard allows."""


def _targets(ends: Endpoints, name: str, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The nodes of ``name`` to patch, as ``[runs]`` example, position and feature indices.

    The feature index is -1 for an error node. Features come first, then error nodes.
    """
    clean, patch = ends.clean[name], ends.patch[name]
    real = mask.to(clean.features.device).bool()  # [batch, pos]
    features = ((patch.features != clean.features) & real[..., None]).nonzero()  # [n, 3]
    errors = ((patch.error != clean.error).any(dim=-1) & real).nonzero()  # [m, 2]
    example = torch.cat([features[:, 0], errors[:, 0]])
    position = torch.cat([features[:, 1], errors[:, 1]])
    index = torch.cat([features[:, 2], torch.full_like(errors[:, 0], -1)])
    return example, position, index


def _count(ends: Endpoints, names: Sequence[str], mask: torch.Tensor) -> int:
    return sum(len(_targets(ends, name, mask)[0]) for name in names)


def exact_run_count(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    *,
    metric: Metric,
    submodules: Sequence[str],
) -> int:
    """How many patched runs `exact_effects` would make for ``batch`` (two plain forwards)."""
    ends = endpoints(model, dictionaries, batch, submodules, metric)
    return _count(ends, submodules, batch.mask)


def runs_error(runs: int, max_runs: int, where: str) -> ExactRunsError:
    """The refusal message for ``runs`` patched runs over ``max_runs``."""
    return ExactRunsError(
        f"exact patching needs {runs} patched runs for {where} (one per feature or error node "
        f"whose clean and patch values differ), more than max_runs={max_runs}. Raise max_runs, "
        "use fewer examples or submodules, or use method='ig' or 'atp'."
    )


def exact_effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    *,
    metric: Metric,
    submodules: Sequence[str],
    max_runs: int | None = 20_000,
    runs_per_forward: int = 256,
) -> BatchEffects:
    """Exact patching effects of one batch, per example.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``.
        batch: Tokenized prompt pairs (`attribution.batches.pair_batches`).
        metric: A checked metric (`circuits.metrics.get_metric`).
        submodules: Submodule names in forward order (`attribution.splice.check_submodules`).
        max_runs: Refuse (`ExactRunsError`) when this batch needs more patched runs; None for
            no limit.
        runs_per_forward: Patched runs stacked into one forward.

    Returns:
        `BatchEffects`: ``[batch, pos, width]`` feature and ``[batch, pos]`` error effects; 0 for
        nodes whose clean and patch values are equal.
    """
    if not isinstance(runs_per_forward, int) or runs_per_forward < 1:
        raise ValueError(f"runs_per_forward must be a positive integer, got {runs_per_forward!r}")
    # 1. Both ends.
    ends = endpoints(model, dictionaries, batch, submodules, metric)
    # 2. The nodes to patch, counted before any patched run.
    runs = _count(ends, submodules, batch.mask)
    if max_runs is not None and runs > max_runs:
        raise runs_error(runs, max_runs, f"a batch of {len(batch)} examples")

    features, errors = {}, {}
    for name in submodules:
        clean, patch = ends.clean[name], ends.patch[name]
        feature_effects = torch.zeros(clean.features.shape, device=clean.features.device)
        error_effects = torch.zeros(clean.error.shape[:-1], device=clean.error.device)
        example, position, index = _targets(ends, name, batch.mask)
        # 3. Patched runs, runs_per_forward rows at a time.
        for start in range(0, len(example), runs_per_forward):
            rows = slice(start, start + runs_per_forward)
            j, p, i = example[rows], position[rows], index[rows]  # [runs]
            run = torch.arange(len(j), device=j.device)
            is_feature = i >= 0
            f = clean.features[j].clone()  # [runs, pos, width]
            e = clean.error[j].clone()  # [runs, pos, d_model]
            jf, pf, i_f, rf = j[is_feature], p[is_feature], i[is_feature], run[is_feature]
            f[rf, pf, i_f] = patch.features[jf, pf, i_f]
            je, pe, re = j[~is_feature], p[~is_feature], run[~is_feature]
            e[re, pe] = patch.error[je, pe]
            spliced = run_spliced(
                model, dictionaries, take_batch(batch.clean, j), values={name: Values(f, e)}
            )
            # 4. m(patched) - m(clean).
            delta = metric(spliced.logits, ends.info.take(j)) - ends.metric_clean[j]  # [runs]
            feature_effects[jf, pf, i_f] = delta[is_feature].float()
            error_effects[je, pe] = delta[~is_feature].float()
        features[name], errors[name] = feature_effects, error_effects
    return BatchEffects(
        features=features,
        errors=errors,
        metric_clean=ends.metric_clean,
        metric_patch=ends.metric_patch,
    )

"""Integrated gradients (IG) node effects: per submodule (``ig``) and all at once (``ig-joint``).

**ig** (Sparse Feature Circuits, Marks et al., ICLR 2025; integrated gradients, Sundararajan et al.
2017). For a batch of ``b`` prompt pairs and ``N = steps``:

1. Clean and patch forwards (no gradients): each chosen submodule's features and error at both
   ends; zeros at the patch end for zero-ablation.
2. For one submodule at a time: one forward of ``N * b`` rows (the clean prompts stacked ``N``
   times) with that submodule's features and error set to ``(1 - a) * clean + a * patch``,
   ``a = k / N`` for rows ``k * b ... k * b + b - 1``, ``k = 0 ... N - 1``; everything downstream
   is recomputed. Each row carries its own interpolated value, so every step really runs at its
   own point of the path.
3. One backward of the summed metric; the mean of the ``N`` gradients of each node is its
   integrated gradient, and effect = mean gradient * (patch - clean).

Cost: ``N`` forward+backward rows per example per submodule, as one batched pass per submodule.
Completeness: for one submodule, the effects of all its nodes (every feature and the error, over
all positions) add up to ``m(that submodule set to its patch value) - m(clean)`` up to the
left-Riemann error, which vanishes as ``N`` grows. For a residual submodule (and ``embed``), which
carries the whole state forward, that is the total effect ``m(patch) - m(clean)``.

**ig-joint**: every chosen submodule is interpolated in the same pass. Step 2 becomes one forward
of ``N * b`` rows in which each chosen submodule ``s`` is set to
``(1 - a) * clean_s + a * patch_s`` (same ``a`` for all) while its gradient passes through to what
computed it upstream, and step 3 reads every node's gradient from that one backward. Cost:
``N`` forward+backward rows per example in all, whatever the number of submodules.

How the two differ. ``ig`` moves one submodule along its straight line and lets everything
downstream follow from it, so the effects of that submodule's nodes add up to the effect of
patching the whole submodule (completeness, above). ``ig-joint`` pins every chosen submodule to
its own straight line at the same ``a``: a downstream submodule holds its own interpolated value
instead of what the interpolated upstream would compute, and a node's gradient is the chain rule
taken with every Jacobian evaluated at those interpolated points. That costs one pass instead of
one per submodule, but per-submodule completeness is no longer guaranteed when more than one
submodule is chosen, and the effects depend on which submodules are chosen together. With a
single chosen submodule ``ig-joint`` equals ``ig``; with ``steps=1`` both equal AtP; where the
metric is linear in the nodes every method gives the same effects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from attribution.batches import PairBatch
from attribution.effects import BatchEffects
from attribution.splice import (
    Values,
    contract,
    endpoints,
    repeat_batch,
    run_spliced,
)
from circuits.dictionaries import Dictionary
from circuits.metrics import BatchInfo, Metric
from circuits.models import Batch, Model

__all__ = ["ig_effects", "ig_joint_effects", "mean_gradients"]


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _path(clean: Values, patch: Values, steps: int) -> Values:
    """``(1 - a) * clean + a * patch`` for ``a = k / steps``, stacked: ``[steps * batch, ...]``."""
    alphas = torch.arange(steps, device=clean.features.device) / steps  # [steps]

    def interpolate(c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        a = alphas.to(c.dtype).view(steps, 1, 1, 1)  # [steps, 1, 1, 1]
        mixed = (1 - a) * c.unsqueeze(0) + a * p.unsqueeze(0)  # [steps, batch, pos, width]
        return mixed.reshape(steps * c.shape[0], *c.shape[1:])  # [steps * batch, pos, width]

    return Values(
        interpolate(clean.features, patch.features), interpolate(clean.error, patch.error)
    )


def _mean_over_steps(grad: Values, steps: int) -> Values:
    """``[steps * batch, ...]`` gradients -> their mean over steps, ``[batch, ...]``."""
    return Values(*(g.view(steps, -1, *g.shape[1:]).mean(dim=0) for g in grad))


def mean_gradients(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    clean_batch: Batch,
    clean: Mapping[str, Values],
    patch: Mapping[str, Values],
    info: BatchInfo,
    metric: Metric,
    *,
    steps: int,
    targets: Sequence[str],
    joint: bool,
    progress: bool = False,
) -> dict[str, Values]:
    """The integrated gradient (mean over the ``steps`` points of the clean -> patch path) of
    every node of ``targets``: ``{name: Values}``, ``[batch, pos, width]`` / ``[batch, pos,
    d_model]``.

    ``joint=False`` (``ig``): one forward + backward of ``steps * batch`` rows per target, that
    target alone on its path. ``joint=True`` (``ig-joint``): one forward + backward in all, every
    submodule of ``clean`` on its path, gradients passing through to upstream.
    """
    stacked = repeat_batch(clean_batch, steps)  # [steps * batch, pos]
    info = info.repeat(steps)
    if joint:
        paths = {name: _path(clean[name], patch[name], steps) for name in clean}
        run = run_spliced(
            model,
            dictionaries,
            stacked,
            values=paths,
            grad=True,
            pass_through=True,
            metric=lambda logits, _: metric(logits, info),
        )
        return {name: _mean_over_steps(run.grads[name], steps) for name in targets}
    out = {}
    for name in tqdm(targets, desc="ig submodules", disable=not progress, leave=False):
        path = {name: _path(clean[name], patch[name], steps)}
        run = run_spliced(
            model,
            dictionaries,
            stacked,
            values=path,
            grad=True,
            metric=lambda logits, _: metric(logits, info),
        )
        out[name] = _mean_over_steps(run.grads[name], steps)
    return out


def ig_effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    *,
    metric: Metric,
    submodules: Sequence[str],
    steps: int = 10,
    progress: bool = False,
) -> BatchEffects:
    """Per-submodule IG node effects of one batch, per example.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``.
        batch: Tokenized prompt pairs (`attribution.batches.pair_batches`).
        metric: A checked metric (`circuits.metrics.get_metric`).
        submodules: Submodule names in forward order (`attribution.splice.check_submodules`).
        steps: ``N``, the number of interpolation points ``a = 0, 1/N, ..., (N-1)/N``.
        progress: Show a progress bar over submodules.

    Returns:
        `BatchEffects`: ``[batch, pos, width]`` feature and ``[batch, pos]`` error effects.
    """
    return _effects(model, dictionaries, batch, metric, submodules, steps, False, progress)


def ig_joint_effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    *,
    metric: Metric,
    submodules: Sequence[str],
    steps: int = 10,
) -> BatchEffects:
    """Joint IG node effects of one batch, per example: all submodules interpolated at once.

    Same arguments and result as `ig_effects`; see the module docstring for how the two differ.
    """
    return _effects(model, dictionaries, batch, metric, submodules, steps, True, False)


def _effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    metric: Metric,
    submodules: Sequence[str],
    steps: int,
    joint: bool,
    progress: bool,
) -> BatchEffects:
    """Steps 1-3 of the module docstring for ``ig`` (``joint=False``) or ``ig-joint``."""
    _check_steps(steps)
    # 1. Both ends.
    ends = endpoints(model, dictionaries, batch, submodules, metric)
    # 2-3. The mean gradient of every node along its path (one pass per submodule, or one).
    grads = mean_gradients(
        model,
        dictionaries,
        batch.clean,
        ends.clean,
        ends.patch,
        ends.info,
        metric,
        steps=steps,
        targets=submodules,
        joint=joint,
        progress=progress,
    )
    features, errors = {}, {}
    for name in submodules:  # effect = mean gradient * (patch - clean)
        features[name], errors[name] = contract(
            ends.clean[name], ends.patch[name], grads[name], batch.mask
        )
    return BatchEffects(
        features=features,
        errors=errors,
        metric_clean=ends.metric_clean,
        metric_patch=ends.metric_patch,
    )

"""Attribution patching (AtP): a first-order estimate of every node's patching effect.

Sparse Feature Circuits (Marks et al., ICLR 2025), building on attribution patching (Nanda 2023;
Syed et al. 2023). For a batch of prompt pairs:

1. Clean forward with every chosen submodule split into features and error as gradient leaves
   (`attribution.splice`, pass-through: the forward is unchanged and each node's gradient is the
   total derivative of the metric).
2. Metric on the clean run, one backward: ``grad = dm/dnode`` for every node at once.
3. Patch forward (no gradients), split the same way; without patch prompts the patch values are
   zero (zero-ablation, delta = -clean).
4. Effect = ``(patch - clean) * grad`` per feature; for an error node, its ``[d_model]`` delta
   contracted with its gradient.

Cost: two forwards and one backward per batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from attribution.batches import PairBatch
from attribution.effects import BatchEffects
from attribution.splice import contract, patch_side, run_spliced
from circuits.dictionaries import Dictionary
from circuits.metrics import Metric
from circuits.models import Model

__all__ = ["atp_effects"]


def atp_effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    *,
    metric: Metric,
    submodules: Sequence[str],
) -> BatchEffects:
    """AtP node effects of one batch, per example.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``.
        batch: Tokenized prompt pairs (`attribution.batches.pair_batches`).
        metric: A checked metric (`circuits.metrics.get_metric`).
        submodules: Submodule names in forward order (`attribution.splice.check_submodules`).

    Returns:
        `BatchEffects`: ``[batch, pos, width]`` feature and ``[batch, pos]`` error effects.
    """
    # 1-2. Clean forward with leaves, one backward.
    clean = run_spliced(
        model,
        dictionaries,
        batch.clean,
        split=submodules,
        grad=True,
        metric=lambda logits, _: metric(logits, batch.info.with_clean_logits(logits)),
    )
    info = batch.info.with_clean_logits(clean.logits)
    metric_clean, grads = clean.metric, clean.grads
    # 3. Patch forward (or zeros).
    patch, metric_patch = patch_side(
        model, dictionaries, batch, submodules, metric, info, clean.values
    )
    # 4. delta * grad.
    features, errors = {}, {}
    for name in submodules:
        features[name], errors[name] = contract(
            clean.values[name], patch[name], grads[name], batch.mask
        )
    return BatchEffects(
        features=features,
        errors=errors,
        metric_clean=metric_clean.detach(),
        metric_patch=None if metric_patch is None else metric_patch.detach(),
    )

"""Run a model with activations split into dictionary features and error terms.

At a spliced submodule the activation ``x [batch, pos, d_model]`` is split into features
``f = encode(x) [batch, pos, width]`` and an error ``e = x - decode(f) [batch, pos, d_model]``, and
the model goes on with ``decode(f) + e`` in place of ``x``. Features and errors are the graph's
nodes; `run_spliced` returns them, as gradient leaves when asked, together with the logits at each
prompt's last position. Given a metric of those logits, it also returns the metric's gradients
with respect to every node, taken with `gradients` inside the trace (a remote run sends values
back, never autograd graphs).

Two ways to splice a submodule:

- **split** (`run_spliced(split=...)`): ``f`` and ``e`` come from the run's own ``x``. With
  ``grad=True`` they are leaves and the activation written back is
  ``x + (x_hat - x_hat.detach()) + (e - e.detach())`` with ``x_hat = decode(f)``: numerically
  exactly ``x`` (the forward is unchanged), while the gradient reaching it flows to ``f`` (through
  the decoder), to ``e`` (as it is) and on to ``x`` itself, so nodes upstream still receive the
  full gradient. This is Sparse Feature Circuits' pass-through: the gradient of ``e`` is the
  gradient at ``x``, and every node's gradient is the total derivative of the metric, all
  downstream paths included.
- **set** (`run_spliced(values=...)`): ``f`` and ``e`` are given (interpolated or patched values)
  and the activation becomes ``decode(f) + e``; everything downstream is recomputed from it. With
  ``pass_through=True`` (and ``grad=True``) ``x - x.detach()`` is added, so the gradient at this
  submodule still reaches what computed ``x`` upstream; without it upstream gets nothing.

Splicing happens inside one nnsight trace (`circuits.models.Model.read` / ``write``), submodules
in forward order. Without ``grad`` the run is under ``torch.no_grad`` and split submodules are only
read, never written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import nnsight
import torch
from torch import Tensor

from attribution.batches import PairBatch
from circuits.dictionaries import Dictionary
from circuits.metrics import BatchInfo, Metric
from circuits.models import Batch, Model

__all__ = [
    "Endpoints",
    "Spliced",
    "Values",
    "check_submodules",
    "contract",
    "endpoints",
    "gradients",
    "repeat_batch",
    "run_spliced",
    "take_batch",
]


class Values(NamedTuple):
    """A submodule's nodes: its features and its error term."""

    features: Tensor  # [batch, pos, width]
    error: Tensor  # [batch, pos, d_model]


@dataclass(frozen=True, eq=False)
class Spliced:
    """What `run_spliced` returns.

    Attributes:
        values: ``{submodule: Values}`` for every spliced submodule, in forward order: gradient
            leaves when the run had ``grad=True``.
        logits: ``[batch, vocab]`` logits at each prompt's last position (attached to the graph
            when the run had ``grad=True``).
        readout: ``[batch, pos, d_model]`` the activation written back at the ``readout``
            submodule (attached likewise), for metrics read from inside the model (e.g. a probe
            on a residual stream); None when no readout was asked for.
        metric: ``[batch]`` the metric values (detached) of a run given ``metric``, else None.
        grads: ``{submodule: Values}`` the metric's gradients with respect to every node
            (`gradients`), of a run given ``metric``, else None.
    """

    values: dict[str, Values]
    logits: Tensor
    readout: Tensor | None = None
    metric: Tensor | None = None
    grads: dict[str, Values] | None = None


def check_submodules(
    model: Model, dictionaries: Mapping[str, Dictionary], names: Iterable[str] | None
) -> list[str]:
    """The submodules to splice, in forward order, each with a fitting dictionary.

    Args:
        names: Submodule names, or None for every submodule that has a dictionary.

    Raises:
        ValueError: for an unknown submodule (listing the valid names), a submodule without a
            dictionary, a dictionary whose ``d_model`` differs from the submodule's width, or an
            empty selection.
    """
    if names is None:
        wanted = {name for name in dictionaries}
    else:
        if isinstance(names, str):
            names = [names]
        wanted = set(names)
    for name in sorted(wanted):
        sub = model.submodule(name)  # raises ValueError naming the valid submodules
        if name not in dictionaries:
            raise ValueError(
                f"no dictionary for submodule {name!r}; dictionaries are given for "
                f"{', '.join(dictionaries) or 'no submodule'}"
            )
        if dictionaries[name].d_model != sub.width:
            raise ValueError(
                f"the dictionary for {name} reads {dictionaries[name].d_model}-wide activations, "
                f"but {name} is {sub.width} wide"
            )
    ordered = [sub.name for sub in model.submodules if sub.name in wanted]
    if not ordered:
        raise ValueError("no submodules to attribute: give submodules= or some dictionaries")
    return ordered


def repeat_batch(batch: Batch, n: int) -> Batch:
    """``n`` stacked copies of ``batch``: row ``k * batch + j`` is row ``j``."""
    return Batch(
        input_ids=batch.input_ids.repeat(n, 1),
        attention_mask=batch.attention_mask.repeat(n, 1),
        last=batch.last.repeat(n),
    )


def take_batch(batch: Batch, rows: Tensor) -> Batch:
    """The rows ``rows`` (``[n]`` indices) of ``batch``, in that order."""
    rows = rows.cpu()
    return Batch(
        input_ids=batch.input_ids[rows],
        attention_mask=batch.attention_mask[rows],
        last=batch.last[rows],
    )


def run_spliced(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: Batch,
    *,
    split: Iterable[str] = (),
    values: Mapping[str, Values] | None = None,
    grad: bool = False,
    pass_through: bool = False,
    readout: str | None = None,
    metric: Callable[[Tensor, Tensor | None], Tensor] | None = None,
) -> Spliced:
    """One forward over ``batch`` with submodules split into features and errors.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}`` covering every submodule named here.
        batch: ``input_ids [batch, pos]``.
        split: Submodules whose own activation is split (see the module docstring).
        values: ``{submodule: Values}`` whose activation is set to ``decode(f) + e``; each tensor
            ``[batch, pos, width]`` / ``[batch, pos, d_model]``. A name may not be in both.
        grad: Make every returned feature and error a gradient leaf and keep the graph, for
            `gradients`.
        pass_through: For set submodules under ``grad``: let the gradient reach upstream too.
        readout: A spliced submodule whose written-back activation is returned too.
        metric: With ``grad``: ``metric(logits [batch, vocab], readout or None) -> [batch]``,
            whose gradients with respect to every node are taken inside the trace, so they come
            back from a remote run too (which returns values, never autograd graphs).

    Returns:
        `Spliced`: the nodes of every spliced submodule, the last-position logits and the
        readout.
    """
    values = dict(values or {})
    split = set(split)
    both = split & set(values)
    if both:
        raise ValueError(f"submodules {sorted(both)} are both split and set")
    order = [sub.name for sub in model.submodules if sub.name in split or sub.name in values]
    if readout is not None and readout not in order:
        raise ValueError(f"readout {readout!r} is not among the spliced submodules {order}")
    if metric is not None and not grad:
        raise ValueError("a metric's gradients need grad=True")
    nodes: dict[str, Values] = {}
    taken: dict[str, Any] = {}
    out = None
    with torch.set_grad_enabled(grad):
        with model.trace(batch):
            for name in order:
                dictionary = dictionaries[name]
                x = model.read(name)  # [batch, pos, d_model]
                if name in values:
                    f, e = values[name]
                    if grad:
                        f = f.detach().clone().requires_grad_(True)
                        e = e.detach().clone().requires_grad_(True)
                    new = dictionary.decode(f) + e
                    if grad and pass_through:
                        new = new + (x - x.detach())
                    model.write(name, new)
                else:
                    f = dictionary.encode(x.detach())  # [batch, pos, width]
                    e = x.detach() - dictionary.decode(f)  # [batch, pos, d_model]
                    new = x
                    if grad:
                        f = f.detach().requires_grad_(True)
                        e = e.detach().requires_grad_(True)
                        x_hat = dictionary.decode(f)
                        new = x + (x_hat - x_hat.detach()) + (e - e.detach())
                        model.write(name, new)
                nodes[name] = Values(f, e)
                if name == readout:
                    out = new.save()  # [batch, pos, d_model]
            logits = batch.at_last(model.read_logits()).save()  # [batch, vocab]
            if metric is not None:
                values_of_metric = metric(logits, out)  # [batch]
                taken["grads"] = gradients(values_of_metric, nodes)
                taken["metric"] = values_of_metric.detach()
            nnsight.save(nodes)
            nnsight.save(taken)
    return Spliced(nodes, logits, out, taken.get("metric"), taken.get("grads"))


def gradients(metric_values: Tensor, nodes: Mapping[str, Values]) -> dict[str, Values]:
    """Gradients of ``metric_values.sum()`` with respect to every node of a ``grad`` run.

    Rows of a batch never interact, so each row's gradient is that of its own metric value.
    Returns ``{submodule: Values}`` of the same shapes as ``nodes``.
    """
    names = list(nodes)
    leaves = [tensor for name in names for tensor in nodes[name]]
    grads = torch.autograd.grad(metric_values.sum(), leaves, allow_unused=True)
    if all(g is None for g in grads):
        raise RuntimeError(
            "the metric depends on no node: compute it from the logits of the same run, inside "
            "its trace (run_spliced(metric=...)); values sent back from a remote run carry no "
            "autograd graph"
        )
    grads = [
        torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads, strict=True)
    ]
    return {name: Values(grads[2 * i], grads[2 * i + 1]) for i, name in enumerate(names)}


@dataclass(frozen=True, eq=False)
class Endpoints:
    """Both ends of a counterfactual: each submodule's nodes on the clean and the patch run.

    Attributes:
        clean: ``{submodule: Values}`` of the clean run, ``[batch, pos, width]`` features and
            ``[batch, pos, d_model]`` errors.
        patch: The same for the patch run; zeros for zero-ablation (delta = -clean).
        metric_clean: ``[batch]`` metric of the clean run.
        metric_patch: ``[batch]`` metric of the patch run; None for zero-ablation.
        info: The batch's `BatchInfo`, holding the clean run's logits.
    """

    clean: dict[str, Values]
    patch: dict[str, Values]
    metric_clean: Tensor
    metric_patch: Tensor | None
    info: BatchInfo


def patch_side(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    names: Iterable[str],
    metric: Metric,
    info: BatchInfo,
    clean: Mapping[str, Values],
) -> tuple[dict[str, Values], Tensor | None]:
    """The patch run's nodes and ``[batch]`` metric, or zeros and None for zero-ablation."""
    if batch.patch is None:
        zeros = {
            name: Values(torch.zeros_like(v.features), torch.zeros_like(v.error))
            for name, v in clean.items()
        }
        return zeros, None
    run = run_spliced(model, dictionaries, batch.patch, split=names)
    return run.values, metric(run.logits, info)


def endpoints(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    names: Iterable[str],
    metric: Metric,
) -> Endpoints:
    """Split the clean and the patch run at ``names`` (two forwards, no gradients)."""
    names = list(names)
    run = run_spliced(model, dictionaries, batch.clean, split=names)
    info = batch.info.with_clean_logits(run.logits)
    metric_clean = metric(run.logits, info)
    patch, metric_patch = patch_side(model, dictionaries, batch, names, metric, info, run.values)
    return Endpoints(run.values, patch, metric_clean, metric_patch, info)


def contract(clean: Values, patch: Values, grad: Values, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Node effects ``(patch - clean) * grad``, zero at padding.

    Args:
        clean, patch, grad: ``[batch, pos, width]`` features and ``[batch, pos, d_model]`` errors.
        mask: ``[batch, pos]``, 1 at real tokens.

    Returns:
        ``([batch, pos, width]`` feature effects, ``[batch, pos]`` error effects), in float32; an
        error node's effect is its delta contracted with its gradient over ``d_model``.
    """
    mask = mask.to(grad.features.device, torch.float32)
    clean, patch, grad = (Values(*(t.detach() for t in v)) for v in (clean, patch, grad))
    features = (patch.features.float() - clean.features.float()) * grad.features.float()
    error_delta = patch.error.float() - clean.error.float()  # [batch, pos, d_model]
    error = (error_delta * grad.error.float()).sum(dim=-1)  # [batch, pos]
    return features * mask[..., None], error * mask

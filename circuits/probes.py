"""Linear probes on a model's residual stream, and the features they depend on.

The pieces of SHIFT (`circuits.shift`) that do not depend on the spurious attribute: texts split
and pooled into ``[texts, width]`` activations (`pooled_features`, `pooled_activations`), a
logistic-regression `Probe` (`train_probe`), its node effects through the dictionaries
(`probe_effects`), and the rank `auc` of scores against binary labels.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import nnsight
import torch
from torch import Tensor

from attribution.splice import Values, contract, run_spliced
from circuits.dictionaries import Dictionary
from circuits.dictionaries.base import Identity
from circuits.graph import ERROR, node_name
from circuits.models import Batch, Model
from circuits.tasks import LabelledText

__all__ = [
    "Probe",
    "auc",
    "pooled_activations",
    "pooled_features",
    "probe_effects",
    "split_texts",
    "train_probe",
]


# ------------------------------------------------------------------------------------------------
# Data


def split_texts(
    texts: Sequence[LabelledText], fraction: float, seed: int
) -> tuple[list[LabelledText], list[LabelledText]]:
    """A seeded shuffle of ``texts``, cut after ``round(fraction * n)`` texts."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = round(fraction * len(texts))
    return [texts[i] for i in order[:cut]], [texts[i] for i in order[cut:]]


def _batches(model: Model, texts: Sequence[LabelledText], batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(texts), batch_size):
        yield model.tokenize([t.text for t in texts[start : start + batch_size]])


def _pool(acts: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: ``[batch, pos, width]``, ``[batch, pos]`` -> ``[batch, width]``."""
    mask = mask.to(acts.device, acts.dtype)[..., None]  # [batch, pos, 1]
    return (acts * mask).sum(dim=1) / mask.sum(dim=1)


def pooled_features(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    texts: Sequence[LabelledText],
    submodules: Sequence[str],
    *,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """Each submodule's ``encode``\\ d activation mean-pooled over real tokens: ``[texts, width]``
    (float32, on the CPU).

    One trace per batch (on a remote model, all in one request), so edits active around the
    call (`circuits.edit.edited`) are seen. An `Identity` dictionary gives the activation itself.
    """
    wanted = {model.submodule(name).name for name in submodules}  # unknown names raise
    order = [sub.name for sub in model.submodules if sub.name in wanted]
    parts = model.in_session(_pooled_batches, model, dictionaries, texts, order, batch_size)
    return {name: torch.cat([part[name] for part in parts]).float().cpu() for name in order}


def _pooled_batches(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    texts: Sequence[LabelledText],
    order: Sequence[str],
    batch_size: int,
) -> list[dict[str, Tensor]]:
    """``[{submodule: [batch, width]}]`` pooled features, one dict per batch of texts."""
    parts = []
    with torch.no_grad():
        for batch in _batches(model, texts, batch_size):
            pooled: dict[str, Tensor] = {}
            with model.trace(batch):
                for name in order:
                    x = model.read(name)  # [batch, pos, width]
                    pooled[name] = _pool(dictionaries[name].encode(x), batch.attention_mask)
                nnsight.save(pooled)
            parts.append(pooled)
    return parts


def pooled_activations(
    model: Model, texts: Sequence[LabelledText], layer: int, *, batch_size: int = 64
) -> Tensor:
    """``resid_{layer}`` mean-pooled over each text's real tokens: ``[texts, d_model]``."""
    name = f"resid_{layer}"
    width = model.submodule(name).width
    return pooled_features(model, {name: Identity(width)}, texts, [name], batch_size=batch_size)[
        name
    ]


def _binary(texts: Sequence[LabelledText], key: str, classes: tuple[str, str]) -> Tensor:
    """``[texts]`` float labels: 1.0 where ``labels[key] == classes[1]``."""
    for t in texts:
        if key not in t.labels:
            raise ValueError(f"a text has no {key!r} label: {t.text[:60]!r}")
        if t.labels[key] not in classes:
            raise ValueError(f"{key} label {t.labels[key]!r} is not one of {classes}")
    return torch.tensor([float(t.labels[key] == classes[1]) for t in texts], dtype=torch.float64)


def _classes(texts: Sequence[LabelledText], key: str) -> tuple[str, str]:
    values = sorted({t.labels.get(key) for t in texts if key in t.labels})
    if len(values) != 2:
        raise ValueError(f"SHIFT needs exactly two {key!r} values, found {values}")
    return values[0], values[1]


# ------------------------------------------------------------------------------------------------
# Probes


@dataclass(frozen=True, eq=False)
class Probe:
    """A logistic-regression probe: ``logit = x @ weight + bias``.

    Attributes:
        weight: ``[d_model]``, float64.
        bias: ``[]``, float64.
    """

    weight: Tensor
    bias: Tensor

    def logits(self, x: Tensor) -> Tensor:
        """``[n, d_model]`` -> ``[n]`` logits (in ``x``'s dtype)."""
        return x @ self.weight.to(x) + self.bias.to(x)

    def predict(self, x: Tensor) -> Tensor:
        """``[n]`` predicted classes, 0 or 1."""
        return (self.logits(x) > 0).long()


def train_probe(x: Tensor, y: Tensor, *, l2: float = 1e-3, max_iter: int = 500) -> Probe:
    """Fit logistic regression by full-batch L-BFGS in float64.

    Minimises ``mean(BCE(x @ w + b, y)) + l2 / 2 * |w|^2``, a strictly convex loss for
    ``l2 > 0``, so the optimum is unique.

    Args:
        x: ``[n, d_model]`` inputs.
        y: ``[n]`` labels, 0 or 1.
        l2: Weight of the L2 penalty on ``w``.
        max_iter: L-BFGS iterations.
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"train_probe needs matching non-empty x {x.shape} and y {y.shape}")
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y)
        loss = loss + l2 / 2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Probe(w.detach(), b.detach())


# ------------------------------------------------------------------------------------------------
# The features a probe depends on (AtP, zero-ablation, aggregation sum)


def probe_effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    texts: Sequence[LabelledText],
    probe: Probe,
    layer: int,
    *,
    batch_size: int = 32,
) -> dict[str, float]:
    """AtP node effects on the probe logit of zero-ablating each node, ``{node name: effect}``.

    Every submodule up to and including ``resid_{layer}`` that has a dictionary is split into
    features and an error; each node's effect is ``(0 - clean) * dm/dnode`` summed over positions
    (aggregation "sum") and averaged over texts. Features that never fire on ``texts`` are left out.
    """
    readout = f"resid_{layer}"
    order = [sub.name for sub in model.submodules]
    submodules = [n for n in order[: order.index(readout) + 1] if n in dictionaries]
    if readout not in dictionaries:
        raise ValueError(f"the probe's submodule {readout} needs a dictionary")
    totals = model.in_session(
        _probe_totals, model, dictionaries, texts, probe, submodules, readout, batch_size
    )
    effects: dict[str, float] = {}
    for name, total in totals.items():
        total = total / len(texts)
        for index in torch.nonzero(total[:-1]).flatten().tolist():
            effects[node_name(name, index)] = float(total[index])
        effects[node_name(name, ERROR)] = float(total[-1])
    return effects


def _probe_totals(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    texts: Sequence[LabelledText],
    probe: Probe,
    submodules: Sequence[str],
    readout: str,
    batch_size: int,
) -> dict[str, Tensor]:
    """``{submodule: [width + 1]}``: each feature's effect, then the error's, summed over texts
    and positions."""
    totals: dict[str, Tensor] = {}
    for batch in _batches(model, texts, batch_size):
        mask = batch.attention_mask
        spliced = run_spliced(
            model,
            dictionaries,
            batch,
            split=submodules,
            grad=True,
            readout=readout,
            metric=lambda _, out, mask=mask: probe.logits(_pool(out, mask)),  # [batch]
        )
        nodes, grads = spliced.values, spliced.grads
        for name in submodules:
            clean = nodes[name]
            zero = Values(torch.zeros_like(clean.features), torch.zeros_like(clean.error))
            feats, errs = contract(clean, zero, grads[name], mask)  # [b,p,width], [b,p]
            summed = torch.cat([feats.sum(dim=(0, 1)), errs.sum().reshape(1)]).cpu()
            totals[name] = totals.get(name, 0) + summed
    return totals


def auc(scores: Tensor, labels: Tensor) -> Tensor:
    """Rank AUC of each column: P(score of a class-1 row > score of a class-0 row), ties 1/2.

    Args:
        scores: ``[n, k]``.
        labels: ``[n]``, 0 or 1, both present.

    Returns:
        ``[k]`` AUCs in float64.
    """
    labels = labels.bool()
    if labels.all() or not labels.any():
        raise ValueError("auc needs both classes")
    neg = scores[~labels].double().T.sort(dim=1).values.contiguous()  # [k, n0]
    pos = scores[labels].double().T.contiguous()  # [k, n1]
    below = torch.searchsorted(neg, pos, right=False).double()  # negatives < pos
    upto = torch.searchsorted(neg, pos, right=True).double()  # negatives <= pos
    return ((below + upto) / 2).mean(dim=1) / neg.shape[1]

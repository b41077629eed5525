"""Kept nodes for edge attribution: which feature columns, error terms and positions an edge
may start or end at, and how per-node values are selected and contracted (`attribution.edges`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attribution.effects import NodeEffects
from attribution.splice import Values
from circuits.dictionaries import Dictionary
from circuits.graph import OUTPUT, node_name, parse_node_name
from circuits.models import Model

NodeSpec = Iterable[str] | Mapping[str, Iterable[int | str | tuple[int | str, int]]]
"""Kept nodes: node names, or ``{submodule: indices}`` (see `edge_effects`)."""


@dataclass(frozen=True, eq=False)
class _Kept:
    """One submodule's kept nodes: features first, then error nodes.

    Attributes:
        names: Node names, in row order.
        columns: ``[m]`` the distinct kept feature indices of the dictionary, ascending: the
            only feature columns made gradient leaves.
        feature: ``[n_features]`` each feature row's column in ``columns``.
        feature_position: ``[n_features]`` position of each feature row (``"none"``), else None.
        error_position: ``[n_errors]`` position of each error row (``"none"``); with ``"sum"``
            a ``[1]`` or ``[0]`` tensor that only counts whether the error node is kept.
    """

    names: tuple[str, ...]
    columns: Tensor
    feature: Tensor
    feature_position: Tensor | None
    error_position: Tensor

    @property
    def n_features(self) -> int:
        return self.feature.shape[0]

    def __len__(self) -> int:
        return len(self.names)


def _names_of(nodes: NodeSpec) -> list[str]:
    """Node names from names or from ``{submodule: indices}``."""
    if isinstance(nodes, NodeEffects):
        raise TypeError(
            "pass the kept node names, e.g. effects.nodes(threshold=0.1), as nodes= and the "
            "NodeEffects itself as effects="
        )
    if isinstance(nodes, str):
        raise TypeError("nodes must be a collection of node names, not one string")
    if not isinstance(nodes, Mapping) or all(key == OUTPUT or "/" in key for key in nodes):
        return list(nodes)  # names, or {name: effect} as NodeEffects.nodes() gives them
    names = []
    for sub, items in nodes.items():
        if isinstance(items, (str, int)):
            items = [items]
        for item in items:
            if isinstance(item, tuple):
                index, position = item
                names.append(node_name(sub, index, position))
            else:
                names.append(f"{sub}/{item}")
    return names


def _kept_nodes(
    names: list[str],
    submodules: Sequence[str],
    dictionaries: Mapping[str, Dictionary],
    model: Model,
    positions: bool,
) -> dict[str, _Kept]:
    """Parse and check kept node names into `_Kept` records per attributed submodule."""
    rows: dict[str, dict[str, tuple[int, int]]] = {name: {} for name in submodules}
    for name in names:
        if name == OUTPUT:
            continue
        node = parse_node_name(name)  # ValueError on a malformed name
        model.submodule(node.submodule)  # ValueError on a submodule this model lacks
        if node.submodule not in rows:
            raise ValueError(
                f"node {name!r} is in {node.submodule}, which is not attributed (no dictionary "
                f"given, or not in submodules=); attributed: {', '.join(submodules)}"
            )
        if (node.position is not None) != positions:
            raise ValueError(
                f"node {name!r}: aggregation {'none' if positions else 'sum'!r} needs node names "
                f"{'with' if positions else 'without'} '@<position>'"
            )
        width = dictionaries[node.submodule].width
        if node.index is not None and node.index >= width:
            raise ValueError(
                f"node {name!r}: {node.submodule}'s dictionary has {width} features "
                f"(0..{width - 1})"
            )
        index = -1 if node.index is None else node.index
        rows[node.submodule][node.name] = (index, node.position or 0)
    kept = {}
    for sub, found in rows.items():
        ordered = sorted(found.items(), key=lambda item: (item[1][0] < 0, item[1][1], item[1][0]))
        features = [(i, p) for _, (i, p) in ordered if i >= 0]
        errors = [p for _, (i, p) in ordered if i < 0]
        index = torch.tensor([i for i, _ in features], dtype=torch.long)
        columns = torch.unique(index)  # sorted
        kept[sub] = _Kept(
            names=tuple(name for name, _ in ordered),
            columns=columns,
            feature=torch.searchsorted(columns, index),
            feature_position=(
                torch.tensor([p for _, p in features], dtype=torch.long) if positions else None
            ),
            error_position=torch.tensor(errors, dtype=torch.long),
        )
    return kept


# ------------------------------------------------------------------------------------------------
# Selecting and contracting kept nodes


def _select(kept: _Kept, values: Values, lo: int, hi: int, out: Values, offset: int) -> None:
    """Write ``values`` restricted to each kept node of rows ``lo:hi`` into ``out``.

    Args:
        kept: The submodule's kept nodes.
        values: ``[batch, pos, m]`` / ``[batch, pos, d_model]`` (a left vector or a delta at the
            kept columns).
        lo, hi: The kept rows to take.
        out: ``[n, batch, pos, m]`` / ``[n, batch, pos, d_model]`` zeros (either may be None when
            no row of that kind is taken); row ``offset + r - lo`` receives kept row ``r``.
        offset: Where row ``lo`` goes in ``out``.
    """
    nf = kept.n_features
    device = values.features.device
    if min(hi, nf) > lo:  # feature rows
        rows = torch.arange(min(hi, nf) - lo, device=device) + offset
        index = kept.feature[lo : min(hi, nf)].to(device)
        if kept.feature_position is None:
            # [batch, pos, n] -> [n, batch, pos]
            out.features[rows, :, :, index] = values.features[:, :, index].permute(2, 0, 1)
        else:
            position = kept.feature_position[lo : min(hi, nf)].to(device)
            # [batch, n] -> [n, batch]
            out.features[rows, :, position, index] = values.features[:, position, index].T
    if hi > max(lo, nf):  # error rows
        first = max(lo, nf)
        rows = torch.arange(first - lo, hi - lo, device=device) + offset
        if kept.feature_position is None:
            out.error[rows] = values.error
        else:
            position = kept.error_position[first - nf : hi - nf].to(device)
            # [batch, n, d_model] -> [n, batch, d_model]
            out.error[rows, :, position, :] = values.error[:, position, :].permute(1, 0, 2)


def _contract(kept: _Kept, batched: Values, values: Values) -> Tensor:
    """``sum over batch (and positions) of batched * values`` at each kept node: ``[n, kept]``.

    Args:
        kept: The submodule's kept nodes.
        batched: ``[n, batch, pos, m]`` / ``[n, batch, pos, d_model]`` products; with
            ``batched.error`` None, only the feature rows are contracted.
        values: ``[batch, pos, m]`` / ``[batch, pos, d_model]`` (a delta or a left vector at the
            kept columns).

    Returns:
        ``[n, kept rows]`` in float32: for a feature, the product summed over the batch (and over
        positions with ``"sum"``); for an error node, also contracted over ``d_model``.
    """
    parts = []
    device = values.features.device
    if kept.n_features:
        index = kept.feature.to(device)
        if kept.feature_position is None:
            left = batched.features[..., index].float()  # [n, batch, pos, n_features]
            parts.append((left * values.features[..., index].float()).sum(dim=(1, 2)))
        else:
            position = kept.feature_position.to(device)
            left = batched.features[:, :, position, index].float()  # [n, batch, n_features]
            parts.append((left * values.features[:, position, index].float()).sum(dim=1))
    n_errors = len(kept) - kept.n_features
    if n_errors and batched.error is not None:
        if kept.feature_position is None:
            product = batched.error.float() * values.error.float()  # [n, batch, pos, d_model]
            parts.append(product.sum(dim=(1, 2, 3))[:, None])
        else:
            position = kept.error_position.to(device)
            left = batched.error[:, :, position, :].float()  # [n, batch, n_errors, d_model]
            parts.append((left * values.error[:, position, :].float()).sum(dim=(1, 3)))
    if not parts:
        return values.features.new_zeros(batched.features.shape[0], 0, dtype=torch.float32)
    return torch.cat(parts, dim=1)


def _zeros(n: int, like: Values) -> Values:
    return Values(
        like.features.new_zeros(n, *like.features.shape), like.error.new_zeros(n, *like.error.shape)
    )

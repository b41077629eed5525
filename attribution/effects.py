"""Records for node effects: per batch (tensors per example) and per dataset (names out).

Node names are the toolkit's everywhere: ``{submodule}/{index}`` for a feature or neuron,
``{submodule}/ε`` for the error node, each with ``@{position}`` when positions are kept
(``resid_2/17@5``, ``mlp_0/ε@3``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

__all__ = ["ERROR", "BatchEffects", "NodeEffects", "SubmoduleEffects", "node_name"]

ERROR = "ε"
"""The index part of an error node's name: ``resid_3/ε``."""


def node_name(submodule: str, index: int | str, position: int | None = None) -> str:
    """``{submodule}/{index}`` (index an int or `ERROR`), plus ``@{position}`` when given."""
    name = f"{submodule}/{index}"
    return name if position is None else f"{name}@{position}"


@dataclass(frozen=True, eq=False)
class BatchEffects:
    """Node effects of one batch, per example, as a method computes them.

    Attributes:
        features: ``{submodule: [batch, pos, width]}`` effect of each feature at each position
            (0 at padding).
        errors: ``{submodule: [batch, pos]}`` effect of each error node.
        metric_clean: ``[batch]`` metric of the clean run.
        metric_patch: ``[batch]`` metric of the patch run, None for zero-ablation.
    """

    features: dict[str, Tensor]
    errors: dict[str, Tensor]
    metric_clean: Tensor
    metric_patch: Tensor | None


@dataclass(frozen=True, eq=False)
class SubmoduleEffects:
    """One submodule's node effects, averaged over examples.

    Attributes:
        features: ``[pos, width]`` with aggregation ``"none"``, ``[width]`` with ``"sum"``.
        error: ``[pos]`` with aggregation ``"none"``, a scalar ``[]`` with ``"sum"``.
    """

    features: Tensor
    error: Tensor


@dataclass(frozen=True, eq=False)
class NodeEffects:
    """Node effects over a dataset: tensors per submodule, node names on the way out.

    Index by submodule name: ``effects["resid_2"].features``.

    Attributes:
        effects: ``{submodule: SubmoduleEffects}`` in forward order (read-only mapping).
        method: ``"atp"``, ``"ig"``, ``"ig-joint"`` or ``"exact"``.
        aggregation: ``"none"`` (positions kept) or ``"sum"`` (summed over positions).
        metric: The metric's name.
        total_effect: ``m(patch) - m(clean)`` averaged over examples; None for zero-ablation.
        metric_clean: ``m(clean)`` averaged over examples.
        n_examples: How many examples were averaged.
        steps: Interpolation steps for ``"ig"`` / ``"ig-joint"``, else None.
    """

    effects: Mapping[str, SubmoduleEffects]
    method: str
    aggregation: str
    metric: str
    total_effect: float | None
    metric_clean: float
    n_examples: int
    steps: int | None = None
    _positions: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "effects", MappingProxyType(dict(self.effects)))
        object.__setattr__(self, "_positions", self.aggregation == "none")

    def __getitem__(self, submodule: str) -> SubmoduleEffects:
        try:
            return self.effects[submodule]
        except KeyError:
            raise KeyError(
                f"no effects for submodule {submodule!r}; have {', '.join(self.effects)}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.effects)

    @property
    def submodules(self) -> tuple[str, ...]:
        """The submodules, in forward order."""
        return tuple(self.effects)

    def nodes(self, threshold: float | None = None) -> dict[str, float]:
        """``{node name: effect}``, in forward order, features before each error node.

        Args:
            threshold: Keep only nodes with ``|effect| > threshold``; None keeps every node.
        """
        out: dict[str, float] = {}
        for sub, record in self.effects.items():
            for tensor, is_error in ((record.features, False), (record.error, True)):
                if threshold is None:
                    keep = torch.ones_like(tensor, dtype=torch.bool)
                else:
                    keep = tensor.abs() > threshold
                where = keep.nonzero().tolist()  # [n, ndim]: (position,) index
                values = tensor[keep].tolist()
                for coords, value in zip(where, values, strict=True):
                    position = coords[0] if self._positions else None
                    index = ERROR if is_error else coords[-1]
                    out[node_name(sub, index, position)] = value
        return out

    def effect(self, name: str) -> float:
        """The effect of one node, by name (``resid_2/17``, ``mlp_0/ε@3``)."""
        head, _, position = name.partition("@")
        sub, _, index = head.partition("/")
        if sub not in self.effects or not index or bool(position) != self._positions:
            suffix = "with '@<position>'" if self._positions else "without a position"
            raise KeyError(
                f"no node {name!r} here: expected '<submodule>/<index>' or '<submodule>/{ERROR}' "
                f"{suffix}, submodule one of {', '.join(self.effects)}"
            )
        record = self.effects[sub]
        at = (int(position),) if self._positions else ()
        if index == ERROR:
            return float(record.error[at])
        return float(record.features[(*at, int(index))])

    def provenance(self) -> dict[str, Any]:
        """Plain facts about how these effects were computed, for a circuit's provenance."""
        return {
            "method": self.method,
            "aggregation": self.aggregation,
            "metric": self.metric,
            "total_effect": self.total_effect,
            "metric_clean": self.metric_clean,
            "n_examples": self.n_examples,
            "steps": self.steps,
        }

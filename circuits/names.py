"""Node names and the records they parse into.

The same strings name nodes in JSON, diagrams, annotation files, explanations and the CLI (see
`circuits.graph` for the whole map):

- ``{submodule}/{index}``: a feature (SAE latent) or a neuron, e.g. ``mlp_0/1234``;
- ``{submodule}/ε``: the submodule's SAE error node, e.g. ``resid_3/ε``;
- either with ``@{position}`` when positions are kept, e.g. ``resid_2/17@5``;
- ``y``: the metric (output) node.

`node_name` builds a name, `parse_node_name` reads one into a `NodeId`; both reject anything
else. `submodule_order` sorts submodules in forward order.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

__all__ = [
    "OUTPUT",
    "ERROR",
    "NODE_KINDS",
    "NodeKind",
    "UnitKind",
    "NodeId",
    "NodeEffect",
    "node_name",
    "parse_node_name",
    "submodule_order",
]

OUTPUT = "y"
"""Name of the metric (output) node."""

ERROR = "ε"
"""The index part of an error node's name: ``resid_3/ε``."""

NodeKind = Literal["feature", "error", "neuron", "embed", "output"]
UnitKind = Literal["feature", "neuron"]

NODE_KINDS: tuple[str, ...] = ("feature", "error", "neuron", "embed", "output")
"""Every value the ``kind`` node attribute may take."""

_SUBMODULE = r"embed|(?:attn|mlp|resid)_(?:0|[1-9][0-9]*)"
_NUMBER = r"0|[1-9][0-9]*"
_SUBMODULE_RE = re.compile(rf"(?:{_SUBMODULE})")
_NAME_RE = re.compile(
    rf"(?P<submodule>{_SUBMODULE})/(?P<index>{_NUMBER}|{ERROR})(?:@(?P<position>{_NUMBER}))?"
)
_SUB_ORDER = {"attn": 0, "mlp": 1, "resid": 2}


@dataclass(frozen=True)
class NodeId:
    """What a node name says.

    Attributes:
        submodule: ``embed``, ``attn_{i}``, ``mlp_{i}``, ``resid_{i}``, or ``y`` for the output.
        layer: The block index i; None for ``embed`` and ``y``.
        kind: One of `NODE_KINDS`.
        index: Feature or neuron index; None for error and output nodes.
        position: Token position when positions are kept, else None.
    """

    submodule: str
    layer: int | None
    kind: NodeKind
    index: int | None
    position: int | None

    @property
    def name(self) -> str:
        """The node's name, e.g. ``resid_2/17@5``."""
        if self.kind == "output":
            return OUTPUT
        return node_name(self.submodule, ERROR if self.index is None else self.index, self.position)

    def attributes(self) -> dict[str, Any]:
        """The node attributes this name fixes (every required attribute but ``effect``)."""
        return {
            "submodule": self.submodule,
            "layer": self.layer,
            "kind": self.kind,
            "index": self.index,
            "position": self.position,
        }


class NodeEffect(NamedTuple):
    """A node name and its effect, as `Circuit.top_nodes` lists them."""

    name: str
    effect: float


def _natural(value: Any, what: str) -> int:
    """``value`` as a non-negative int (numpy and 0-d integer tensors accepted, bools not)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {number}")
    return number


def node_name(submodule: str, index: int | str, position: int | None = None) -> str:
    """Build a node name: ``{submodule}/{index}`` or ``{submodule}/ε``, plus ``@{position}``.

    Args:
        submodule: ``embed``, ``attn_{i}``, ``mlp_{i}`` or ``resid_{i}``.
        index: A feature or neuron index (non-negative int), or `ERROR` (``"ε"``) for the error
            node.
        position: Token position, or None when positions are summed away.

    Returns:
        The name, e.g. ``node_name("resid_2", 17, 5) == "resid_2/17@5"``. The output node is
        simply `OUTPUT` (``"y"``) and has no builder.

    Raises:
        ValueError: On an unknown submodule, a negative or non-integer index or position.
    """
    if not isinstance(submodule, str) or not _SUBMODULE_RE.fullmatch(submodule):
        raise ValueError(
            f"unknown submodule {submodule!r}: expected embed, attn_<i>, mlp_<i> or resid_<i>"
        )
    part = ERROR if index == ERROR else str(_natural(index, f"index of a {submodule} node"))
    name = f"{submodule}/{part}"
    if position is not None:
        name += f"@{_natural(position, f'position of {name}')}"
    return name


def _unit_kind(submodule: str, units: UnitKind) -> NodeKind:
    if units == "neuron":
        return "embed" if submodule == "embed" else "neuron"
    if units == "feature":
        return "feature"
    raise ValueError(f"node kind must be 'feature' or 'neuron', got {units!r}")


def parse_node_name(name: str, *, node_kind: UnitKind = "feature") -> NodeId:
    """Read a node name into a `NodeId`.

    Args:
        name: ``{submodule}/{index}``, ``{submodule}/ε``, either with ``@{position}``, or ``y``.
        node_kind: What indexed nodes are, which the name alone does not say: ``"feature"``
            (dictionary latents) or ``"neuron"`` (identity dictionary; at ``embed`` the kind is
            then ``"embed"``). Error and output nodes ignore it.

    Raises:
        ValueError: If ``name`` is not a valid node name; the message shows the accepted forms.
    """
    if name == OUTPUT:
        return NodeId(OUTPUT, None, "output", None, None)
    match = _NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"malformed node name {name!r}: expected '<submodule>/<index>' or '<submodule>/ε', "
            f"optionally followed by '@<position>' (e.g. 'resid_2/17@5', 'mlp_0/ε'), or 'y'; "
            f"submodule is embed, attn_<i>, mlp_<i> or resid_<i>"
        )
    submodule = match["submodule"]
    layer = None if submodule == "embed" else int(submodule.rsplit("_", 1)[1])
    position = None if match["position"] is None else int(match["position"])
    if match["index"] == ERROR:
        return NodeId(submodule, layer, "error", None, position)
    return NodeId(submodule, layer, _unit_kind(submodule, node_kind), int(match["index"]), position)


def submodule_order(submodule: str) -> tuple[float, int]:
    """Sort key in forward order: embed, attn_0, mlp_0, resid_0, attn_1, ..., then ``y``."""
    if submodule == OUTPUT:
        return (math.inf, 0)
    if submodule == "embed":
        return (-1, 0)
    family, layer = submodule.rsplit("_", 1)
    return (int(layer), _SUB_ORDER[family])


def _node_sort_key(node: NodeId) -> tuple:
    return (
        submodule_order(node.submodule),
        -1 if node.position is None else node.position,
        node.index is None,
        -1 if node.index is None else node.index,
    )

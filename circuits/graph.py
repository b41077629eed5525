"""Circuits: a directed graph of feature, error and neuron nodes, plus where it came from.

A `Circuit` holds a ``networkx.DiGraph`` (composition, not a subclass) and a provenance record.
Edges point upstream -> downstream, towards the metric node ``y``.

Map of this module:

- Node names (the same strings in JSON, diagrams, annotation files and the CLI):

  - ``{submodule}/{index}``: a feature (SAE latent) or a neuron, e.g. ``mlp_0/1234``;
  - ``{submodule}/ε``: the submodule's SAE error node, e.g. ``resid_3/ε``;
  - either with ``@{position}`` when positions are kept, e.g. ``resid_2/17@5``, ``mlp_0/ε@3``;
  - ``y``: the metric (output) node.

  Submodules are ``embed``, ``attn_{i}``, ``mlp_{i}``, ``resid_{i}`` (i from 0). `node_name`
  builds a name, `parse_node_name` reads one into a `NodeId`; both reject anything else (they
  live in `circuits.names` and are re-exported here).
- Node kinds: ``feature`` (a dictionary latent), ``error`` (the ``ε`` node), ``neuron`` (a unit
  of an identity dictionary, i.e. a neuron circuit), ``embed`` (a unit of the embedding read
  through an identity dictionary: what ``neuron`` would be at the ``embed`` submodule),
  ``output`` (``y``). So a node at ``embed`` is ``feature`` when the embedding has an SAE,
  ``embed`` when it has none, and ``error`` for ``embed/ε``; ``neuron`` never appears at
  ``embed``.
- Node attributes: ``submodule`` (``"y"`` for the output node), ``layer`` (int; None for
  ``embed`` and ``y``), ``kind``, ``index`` (int; None for error and output nodes), ``position``
  (int or None), ``effect`` (float; for ``y`` the total effect when known). Edge attribute:
  ``weight`` (float). Other JSON-plain attributes (labels, annotations) may ride along and are
  saved.
- `Circuit.from_effects` builds a circuit from plain ``{name: effect}`` and
  ``{(upstream, downstream): weight}`` mappings; attribution code converts tensors to these at its
  boundary.
- Operations return new circuits: `Circuit.prune`, `Circuit.subgraph`, `Circuit.threshold_nodes`,
  `Circuit.threshold_edges`. Views: `Circuit.nodes_by_submodule`, `Circuit.top_nodes`,
  `Circuit.summary` (a plain dict for ``--json``), `format_summary` (its text form).
- Files: `Circuit.save` / `Circuit.load`, node-link JSON wrapped as
  ``{"format": "circuits.circuit", "version": 1, "provenance": {...}, "graph": {...}}``.
  Loading only parses JSON, never evaluates code, and checks every node and edge (the format
  and its checks live in `circuits.circuit_format`).

Invariants every circuit keeps (checked on construction and on load): names parse and agree with
the node's attributes; effects and weights are finite floats; no self-loops; every edge runs
forward through the model (embed < attn_i < mlp_i < resid_i < attn_{i+1} ... < y) and never from
a later position to an earlier one; ``y`` has no outgoing edges and is present whenever there are
edges; either every node but ``y`` has a position or none does.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import networkx as nx

from circuits.circuit_format import (
    FORMAT,
    FORMAT_VERSION,
    CircuitFormatError,
    check_document,
    finite_float,
    graph_from_node_link,
    plain_provenance,
    read_document,
    validate,
)
from circuits.files import write_text
from circuits.names import (
    ERROR,
    NODE_KINDS,
    OUTPUT,
    NodeEffect,
    NodeId,
    NodeKind,
    UnitKind,
    _natural,
    _node_sort_key,
    node_name,
    parse_node_name,
    submodule_order,
)

__all__ = [
    "OUTPUT",
    "ERROR",
    "NODE_KINDS",
    "FORMAT",
    "FORMAT_VERSION",
    "NodeKind",
    "NodeId",
    "NodeEffect",
    "CircuitFormatError",
    "node_name",
    "parse_node_name",
    "submodule_order",
    "Circuit",
    "format_summary",
]

PathLike = str | os.PathLike

# ------------------------------------------------------------------------------------------------
# The circuit


class Circuit:
    """A circuit: a ``networkx.DiGraph`` of named nodes with effects and weighted edges.

    Attributes:
        graph: The graph. Nodes are names (see the module docstring) carrying the attributes
            submodule, layer, kind, index, position, effect; edges point upstream -> downstream
            and carry ``weight``. Treat it as read-only: operations return new circuits.
        provenance: Plain JSON data saying where the circuit came from. Keys written by this
            toolkit: ``model``, ``dictionaries``, ``task``, ``method``, ``thresholds``
            (``{"node": T_N, "edge": T_E}``), ``aggregation`` (``"none"`` keeps positions,
            ``"sum"`` sums them), ``total_effect`` (m(patch) - m(clean)), ``circuits_version``,
            ``created`` (ISO 8601, UTC). All are optional.
    """

    def __init__(self, graph: nx.DiGraph, provenance: Mapping[str, Any] | None = None):
        """Wrap ``graph`` (taken over, not copied) after checking every circuit invariant.

        Raises:
            ValueError: Naming the first node or edge that breaks an invariant.
        """
        validate(graph)
        self.graph = graph
        self.provenance = plain_provenance(provenance)

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_effects(
        cls,
        node_effects: Mapping[str, Any],
        edges: Mapping[tuple[str, str], Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        *,
        node_kind: UnitKind | Mapping[str, UnitKind] | None = None,
    ) -> Circuit:
        """Build a circuit from plain names and numbers.

        Args:
            node_effects: ``{node name: effect}``. The output node ``y`` is always added; its
                effect is ``node_effects["y"]`` if given, else ``provenance["total_effect"]``,
                else 0.0.
            edges: ``{(upstream name, downstream name): weight}``. Both ends must be in
                ``node_effects`` (or be ``y``).
            provenance: Where the circuit came from (see `Circuit`). ``circuits_version`` and
                ``created`` are filled in when absent.
            node_kind: What indexed nodes are: ``"feature"`` or ``"neuron"``, for all submodules
                or per submodule as a mapping (missing submodules default to ``"feature"``).
                None: ``"neuron"`` when ``provenance["dictionaries"] == "neurons"``, else
                ``"feature"``. A neuron at ``embed`` gets kind ``embed``.

        Raises:
            ValueError: On a malformed name, a non-finite effect or weight, an edge to an unknown
                node, or any other broken invariant.
        """
        from circuits import __version__

        record = plain_provenance(provenance)
        record.setdefault("circuits_version", __version__)
        record.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
        if node_kind is None:
            node_kind = "neuron" if record.get("dictionaries") == "neurons" else "feature"

        def kind_of(submodule: str) -> UnitKind:
            if isinstance(node_kind, Mapping):
                return node_kind.get(submodule, "feature")
            return node_kind

        effects = dict(node_effects)
        if OUTPUT not in effects:
            effects[OUTPUT] = record.get("total_effect", 0.0)
        nodes: list[tuple[NodeId, float]] = []
        for name, effect in effects.items():
            parsed = parse_node_name(name)
            node = parse_node_name(name, node_kind=kind_of(parsed.submodule))
            nodes.append((node, finite_float(effect, f"effect of node {name!r}")))
        nodes.sort(key=lambda item: _node_sort_key(item[0]))
        graph = nx.DiGraph()
        for node, effect in nodes:
            graph.add_node(node.name, **node.attributes(), effect=effect)
        keys = {node.name: _node_sort_key(node) for node, _ in nodes}
        edge_rows = []
        for pair, weight in (edges or {}).items():
            source, target = pair
            for end in (source, target):
                if end not in graph:
                    parse_node_name(end)  # a malformed name says so first
                    raise ValueError(
                        f"edge {source!r} -> {target!r}: node {end!r} is not in node_effects"
                    )
            edge_rows.append(
                (source, target, finite_float(weight, f"weight of edge {source!r} -> {target!r}"))
            )
        edge_rows.sort(key=lambda row: (keys[row[0]], keys[row[1]]))
        for source, target, weight in edge_rows:
            graph.add_edge(source, target, weight=weight)
        return cls(graph, record)

    def _derived(self, graph: nx.DiGraph, **thresholds: float) -> Circuit:
        """A new circuit over ``graph`` (a fresh graph) with a copy of this provenance."""
        provenance = copy.deepcopy(self.provenance)
        if thresholds:
            recorded = provenance.get("thresholds")
            recorded = dict(recorded) if isinstance(recorded, dict) else {}
            for key, value in thresholds.items():
                previous = recorded.get(key)
                is_number = isinstance(previous, (int, float)) and not isinstance(previous, bool)
                recorded[key] = max(previous, value) if is_number else value
            provenance["thresholds"] = recorded
        return Circuit(graph, provenance)

    # -- views -----------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.graph

    def __eq__(self, other: object) -> bool:
        """Same nodes with the same attributes, same edges and weights, same provenance."""
        if not isinstance(other, Circuit):
            return NotImplemented
        return (
            dict(self.graph.nodes(data=True)) == dict(other.graph.nodes(data=True))
            and {(u, v): d for u, v, d in self.graph.edges(data=True)}
            == {(u, v): d for u, v, d in other.graph.edges(data=True)}
            and self.provenance == other.provenance
        )

    __hash__ = None  # mutable contents

    def __repr__(self) -> str:
        subs = ", ".join(self.nodes_by_submodule()) or "none"
        extra = "".join(
            f", {key}={self.provenance[key]!r}"
            for key in ("model", "method", "task")
            if key in self.provenance
        )
        return (
            f"Circuit(nodes={self.num_nodes}, edges={self.num_edges}, submodules=[{subs}]{extra})"
        )

    def _repr_svg_(self) -> str | None:
        """Jupyter shows the circuit as a diagram (None, so the text repr, without graphviz)."""
        from viz.diagram import repr_svg

        return repr_svg(self)

    @property
    def num_nodes(self) -> int:
        """Number of nodes other than ``y``."""
        return self.graph.number_of_nodes() - (OUTPUT in self.graph)

    @property
    def num_edges(self) -> int:
        return self.graph.number_of_edges()

    def node_id(self, name: str) -> NodeId:
        """The `NodeId` of a node in this circuit (kind as stored)."""
        attrs = self.graph.nodes[name]
        return NodeId(*(attrs[key] for key in ("submodule", "layer", "kind", "index", "position")))

    def effect(self, name: str) -> float:
        return self.graph.nodes[name]["effect"]

    def weight(self, source: str, target: str) -> float:
        return self.graph.edges[source, target]["weight"]

    def node_effects(self) -> dict[str, float]:
        """``{name: effect}`` for every node, ``y`` included (what `from_effects` takes)."""
        return {name: effect for name, effect in self.graph.nodes(data="effect")}

    def edge_weights(self) -> dict[tuple[str, str], float]:
        """``{(upstream, downstream): weight}`` for every edge (what `from_effects` takes)."""
        return {(u, v): w for u, v, w in self.graph.edges(data="weight")}

    def nodes_by_submodule(self) -> dict[str, list[str]]:
        """``{submodule: node names}`` in forward order, names sorted by position then index.

        ``y`` is not listed; submodules without nodes are absent.
        """
        groups: dict[str, list[tuple[tuple, str]]] = {}
        for name in self.graph:
            node = self.node_id(name)
            if node.kind != "output":
                groups.setdefault(node.submodule, []).append((_node_sort_key(node), name))
        return {
            sub: [name for _, name in sorted(groups[sub])]
            for sub in sorted(groups, key=submodule_order)
        }

    def top_nodes(self, k: int | None = 10) -> list[NodeEffect]:
        """The ``k`` nodes (all when None) with the largest |effect|, ``y`` excluded.

        Ties are broken by name so the order is reproducible.
        """
        rows = [
            NodeEffect(name, effect)
            for name, effect in self.graph.nodes(data="effect")
            if name != OUTPUT
        ]
        rows.sort(key=lambda row: (-abs(row.effect), row.name))
        return rows if k is None else rows[: _natural(k, "k")]

    def summary(self, k: int = 10) -> dict[str, Any]:
        """Counts and top nodes as a plain JSON-ready dict (see `format_summary` for text).

        Keys: ``nodes`` (excluding ``y``), ``edges``, ``empty`` (no node but ``y``), ``note``
        (a sentence when empty, else None), ``kinds`` ({kind: count}), ``submodules``
        ({submodule: {"nodes", "kinds", "edges_in", "edges_out"}} in forward order),
        ``edges_to_output``, ``top_nodes`` ([{"name", "effect"}], ``k`` of them),
        ``total_effect`` (from provenance, or None), ``provenance``.
        """
        submodules: dict[str, dict[str, Any]] = {}
        kinds: dict[str, int] = {}
        for sub, names in self.nodes_by_submodule().items():
            sub_kinds: dict[str, int] = {}
            for name in names:
                kind = self.graph.nodes[name]["kind"]
                sub_kinds[kind] = sub_kinds.get(kind, 0) + 1
                kinds[kind] = kinds.get(kind, 0) + 1
            submodules[sub] = {
                "nodes": len(names),
                "kinds": sub_kinds,
                "edges_in": 0,
                "edges_out": 0,
            }
        edges_to_output = 0
        for source, target in self.graph.edges:
            submodules[self.graph.nodes[source]["submodule"]]["edges_out"] += 1
            if target == OUTPUT:
                edges_to_output += 1
            else:
                submodules[self.graph.nodes[target]["submodule"]]["edges_in"] += 1
        empty = self.num_nodes == 0
        total = self.provenance.get("total_effect")
        return {
            "nodes": self.num_nodes,
            "edges": self.num_edges,
            "empty": empty,
            "note": "the circuit holds no nodes besides the output node y" if empty else None,
            "kinds": kinds,
            "submodules": submodules,
            "edges_to_output": edges_to_output,
            "top_nodes": [row._asdict() for row in self.top_nodes(k)],
            "total_effect": total if isinstance(total, (int, float)) else None,
            "provenance": copy.deepcopy(self.provenance),
        }

    # -- operations (each returns a new circuit) -------------------------------------------------

    def prune(self) -> Circuit:
        """A new circuit without the nodes that have no path to ``y`` (and their edges).

        A circuit without edges keeps only ``y``; pruning everything away is not an error.
        """
        if OUTPUT not in self.graph:
            return self._derived(nx.DiGraph())
        keep = nx.ancestors(self.graph, OUTPUT) | {OUTPUT}
        return self._derived(self._induced(keep))

    def subgraph(self, nodes: Iterable[str]) -> Circuit:
        """A new circuit on ``nodes`` and the edges among them; ``y`` is always kept.

        Raises:
            KeyError: If a name is not a node of this circuit.
        """
        keep = set(nodes)
        unknown = sorted(keep - set(self.graph))
        if unknown:
            raise KeyError(f"not in this circuit: {', '.join(map(repr, unknown[:5]))}")
        if OUTPUT in self.graph:
            keep.add(OUTPUT)
        return self._derived(self._induced(keep))

    def threshold_nodes(self, threshold: float) -> Circuit:
        """A new circuit keeping nodes with |effect| > ``threshold`` (and ``y``), with their edges.

        Records the threshold as ``provenance["thresholds"]["node"]`` (the larger of the old and
        new one). Does not prune: chain `prune` to drop nodes left without a path to ``y``.
        """
        threshold = self._check_threshold(threshold)
        keep = {
            name
            for name, effect in self.graph.nodes(data="effect")
            if name == OUTPUT or abs(effect) > threshold
        }
        return self._derived(self._induced(keep), node=threshold)

    def threshold_edges(self, threshold: float) -> Circuit:
        """A new circuit keeping edges with |weight| > ``threshold``; every node stays.

        Records the threshold as ``provenance["thresholds"]["edge"]``. Chain `prune` to drop
        nodes left without a path to ``y``.
        """
        threshold = self._check_threshold(threshold)
        graph = nx.DiGraph()
        graph.add_nodes_from((name, dict(attrs)) for name, attrs in self.graph.nodes(data=True))
        graph.add_edges_from(
            (u, v, dict(attrs))
            for u, v, attrs in self.graph.edges(data=True)
            if abs(attrs["weight"]) > threshold
        )
        return self._derived(graph, edge=threshold)

    @staticmethod
    def _check_threshold(threshold: float) -> float:
        value = finite_float(threshold, "threshold")
        if value < 0:
            raise ValueError(f"threshold must be >= 0, got {value}")
        return value

    def _induced(self, keep: set[str]) -> nx.DiGraph:
        """A fresh graph on ``keep`` in this graph's node and edge order, attributes copied."""
        graph = nx.DiGraph()
        graph.add_nodes_from(
            (name, dict(attrs)) for name, attrs in self.graph.nodes(data=True) if name in keep
        )
        graph.add_edges_from(
            (u, v, dict(attrs))
            for u, v, attrs in self.graph.edges(data=True)
            if u in keep and v in keep
        )
        return graph

    # -- files -----------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The saved document as a dict: format tag, version, provenance, node-link graph."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "provenance": copy.deepcopy(self.provenance),
            "graph": nx.node_link_data(self.graph, edges="edges"),
        }

    def save(self, path: PathLike) -> Path:
        """Write the circuit as UTF-8 JSON (see the module docstring); return the path.

        The file is written beside its target and then renamed, so an interrupted save never
        leaves a truncated circuit behind.
        """
        text = json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False)
        return write_text(path, text + "\n")

    @classmethod
    def from_json(cls, document: Any) -> Circuit:
        """Build a circuit from a parsed document (what `to_json` returns), checking it all.

        Raises:
            CircuitFormatError: On a wrong format tag, an unknown or newer version, or any
                malformed node, edge or attribute.
        """
        provenance = check_document(document)
        try:
            graph = graph_from_node_link(document.get("graph"))
            return cls(graph, provenance)
        except CircuitFormatError:
            raise
        except ValueError as error:
            raise CircuitFormatError(str(error)) from None

    @classmethod
    def load(cls, path: PathLike) -> Circuit:
        """Read a circuit saved by `save`, checking every node and edge.

        Only JSON is parsed; nothing in the file is executed.

        Args:
            path: The circuit's JSON file, or a directory holding ``circuit.json`` (what
                ``circuits discover --out DIR`` writes).

        Raises:
            CircuitFormatError: Naming the file, when it is not UTF-8 JSON (truncated or corrupt),
                has the wrong format tag or a newer version, or breaks a circuit invariant.
            FileNotFoundError: If there is no such file, or the directory has no circuit.json.
        """
        path, document = read_document(path)
        try:
            return cls.from_json(document)
        except CircuitFormatError as error:
            raise CircuitFormatError(f"{path}: {error}") from None


def format_summary(summary: Mapping[str, Any]) -> str:
    """Text form of `Circuit.summary`, for the CLI."""
    provenance = summary.get("provenance") or {}
    about = ", ".join(
        f"{key} {provenance[key]}" for key in ("model", "task", "method") if key in provenance
    )
    lines = [
        f"circuit: {summary['nodes']} nodes, {summary['edges']} edges"
        + (f" ({about})" if about else "")
    ]
    if summary["empty"]:
        lines.append(summary["note"])
        return "\n".join(lines)
    lines.append(f"{'submodule':<12}{'nodes':>7}{'edges in':>10}{'edges out':>11}  kinds")
    for sub, row in summary["submodules"].items():
        kinds = ", ".join(f"{kind} {count}" for kind, count in row["kinds"].items())
        lines.append(
            f"{sub:<12}{row['nodes']:>7}{row['edges_in']:>10}{row['edges_out']:>11}  {kinds}"
        )
    lines.append(f"edges into y: {summary['edges_to_output']}")
    if summary["total_effect"] is not None:
        lines.append(f"total effect: {summary['total_effect']:+.4g}")
    if summary["top_nodes"]:
        lines.append("top nodes by |effect|:")
        width = max(len(row["name"]) for row in summary["top_nodes"])
        lines.extend(
            f"  {row['name']:<{width}}  {row['effect']:+.4g}" for row in summary["top_nodes"]
        )
    return "\n".join(lines)

"""The circuit file format: what `circuits.graph.Circuit` checks on construction and on load.

A saved circuit is UTF-8 JSON, ``{"format": "circuits.circuit", "version": 1, "provenance":
{...}, "graph": {...}}`` with networkx node-link data under ``graph``. Reading one only parses
JSON (`read_document`), then checks the envelope (`check_document`), rebuilds the graph
rejecting duplicates and dangling edges (`graph_from_node_link`) and checks every node and edge
against the invariants of `circuits.graph` (`validate`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from circuits.names import NODE_KINDS, OUTPUT, NodeId, parse_node_name, submodule_order

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CircuitFormatError",
    "check_document",
    "finite_float",
    "graph_from_node_link",
    "plain_provenance",
    "read_document",
    "validate",
]

PathLike = str | os.PathLike

FORMAT = "circuits.circuit"
"""The ``format`` tag of a saved circuit."""

FORMAT_VERSION = 1
"""The newest file version this module writes and reads."""

_REQUIRED_NODE_ATTRS = ("submodule", "layer", "kind", "index", "position", "effect")


class CircuitFormatError(ValueError):
    """A circuit file is not valid JSON, of an unknown format or version, or inconsistent."""


def finite_float(value: Any, what: str) -> float:
    """``value`` as a finite float; ints, numpy scalars and 0-d tensors are accepted, bools not."""
    if isinstance(value, (bool, str)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number}")
    return number


def _check_node(name: Any, attrs: Mapping[str, Any]) -> NodeId:
    """Check one node's name and attributes; return what the name says (kind as stored)."""
    if not isinstance(name, str):
        raise ValueError(f"node names must be strings, got {name!r}")
    if "id" in attrs:
        raise ValueError(f"node {name!r} has an attribute named 'id' (reserved by node-link)")
    parsed = parse_node_name(name)
    missing = [key for key in _REQUIRED_NODE_ATTRS if key not in attrs]
    if missing:
        raise ValueError(f"node {name!r} lacks required attribute(s) {', '.join(missing)}")
    kind = attrs["kind"]
    if kind not in NODE_KINDS:
        raise ValueError(f"node {name!r} has kind {kind!r}; expected one of {NODE_KINDS}")
    if parsed.kind == "feature":  # an indexed node: feature, or neuron/embed by the dictionary
        allowed = ("feature", "embed") if parsed.submodule == "embed" else ("feature", "neuron")
    else:
        allowed = (parsed.kind,)
    if kind not in allowed:
        raise ValueError(f"node {name!r} has kind {kind!r}, but its name makes it one of {allowed}")
    expected = NodeId(parsed.submodule, parsed.layer, kind, parsed.index, parsed.position)
    for key, want in expected.attributes().items():
        got = attrs[key]
        if key in ("layer", "index", "position") and isinstance(got, bool):
            got = repr(got)  # True == 1 in Python; never let a bool pass as an int
        if got != want or type(got) is not type(want):
            raise ValueError(
                f"node {name!r} has {key}={attrs[key]!r}, but its name says {key}={want!r}"
            )
    finite_float(attrs["effect"], f"effect of node {name!r}")
    if not isinstance(attrs["effect"], float):
        raise ValueError(f"effect of node {name!r} must be a float, got {attrs['effect']!r}")
    return expected


def validate(graph: nx.DiGraph) -> None:
    """Raise ValueError naming the first node or edge that breaks a circuit invariant."""
    if not isinstance(graph, nx.DiGraph) or graph.is_multigraph():
        raise ValueError(f"a circuit needs a networkx.DiGraph, got {type(graph).__name__}")
    ids = {name: _check_node(name, attrs) for name, attrs in graph.nodes(data=True)}
    positioned = {node.position is not None for node in ids.values() if node.kind != "output"}
    if len(positioned) > 1:
        with_pos = next(n for n, i in ids.items() if i.position is not None)
        without = next(n for n, i in ids.items() if i.position is None and i.kind != "output")
        raise ValueError(
            f"either every node but y has a position or none does; {with_pos!r} has one and "
            f"{without!r} has none"
        )
    if graph.number_of_edges() and OUTPUT not in graph:
        raise ValueError("a circuit with edges needs the output node 'y'")
    for source, target, attrs in graph.edges(data=True):
        edge = f"edge {source!r} -> {target!r}"
        if source == target:
            raise ValueError(f"{edge} is a self-loop")
        if "source" in attrs or "target" in attrs:
            raise ValueError(f"{edge} has an attribute named 'source' or 'target' (reserved)")
        if "weight" not in attrs:
            raise ValueError(f"{edge} lacks the 'weight' attribute")
        finite_float(attrs["weight"], f"weight of {edge}")
        if not isinstance(attrs["weight"], float):
            raise ValueError(f"weight of {edge} must be a float, got {attrs['weight']!r}")
        up, down = ids[source], ids[target]
        if submodule_order(up.submodule) >= submodule_order(down.submodule):
            raise ValueError(
                f"{edge} runs backwards or sideways through the model; edges point upstream -> "
                f"downstream (embed, attn_i, mlp_i, resid_i, ..., y)"
            )
        if up.position is not None and down.position is not None and up.position > down.position:
            raise ValueError(f"{edge} runs from a later position to an earlier one")


def plain_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """A deep, JSON-plain copy (tuples become lists), so that save/load round trips exactly."""
    if provenance is None:
        return {}
    if not isinstance(provenance, Mapping):
        raise ValueError(f"provenance must be a mapping, got {type(provenance).__name__}")
    try:
        return json.loads(json.dumps(dict(provenance), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"provenance must hold plain JSON data (str, finite numbers, bool, None, lists, "
            f"dicts): {error}"
        ) from None


def check_document(document: Any) -> dict[str, Any]:
    """The provenance of a parsed document, after checking its format tag and version.

    Raises:
        CircuitFormatError: On a wrong format tag, an unknown or newer version, or a
            provenance that is not an object.
    """
    if not isinstance(document, dict):
        raise CircuitFormatError(
            f"expected a JSON object with format {FORMAT!r}, got {type(document).__name__}"
        )
    tag = document.get("format")
    if tag != FORMAT:
        raise CircuitFormatError(f"format tag is {tag!r}, expected {FORMAT!r}")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CircuitFormatError(f"unknown circuit file version {version!r}")
    if version > FORMAT_VERSION:
        raise CircuitFormatError(
            f"circuit file version {version} is newer than this circuits package reads "
            f"(up to version {FORMAT_VERSION}); upgrade circuits to load it"
        )
    provenance = document.get("provenance", {})
    if not isinstance(provenance, dict):
        raise CircuitFormatError("'provenance' must be a JSON object")
    return provenance


def read_document(path: PathLike) -> tuple[Path, Any]:
    """``(file, parsed JSON)`` of a circuit file, or of a directory's ``circuit.json``.

    Raises:
        CircuitFormatError: Naming the file, when it is not UTF-8 JSON (truncated or corrupt).
        FileNotFoundError: If there is no such file, or the directory has no circuit.json.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "circuit.json").is_file():
            raise FileNotFoundError(f"{path} is a directory without a circuit.json")
        path = path / "circuit.json"
    raw = path.read_bytes()
    try:
        document = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise CircuitFormatError(
            f"{path}: not a circuit file: its JSON is nested too deeply to read"
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CircuitFormatError(
            f"{path}: not a circuit file: not valid UTF-8 JSON ({error}); the file may be "
            f"truncated or corrupt"
        ) from None
    return path, document


def graph_from_node_link(data: Any) -> nx.DiGraph:
    """Rebuild the DiGraph from node-link data, rejecting duplicates and dangling edges."""
    if not isinstance(data, dict):
        raise ValueError("'graph' must be a node-link JSON object")
    if data.get("directed") is not True or data.get("multigraph") is not False:
        raise ValueError("'graph' must be directed and not a multigraph")
    nodes, edges = data.get("nodes"), data.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        raise ValueError("'graph' needs 'nodes' and 'edges' lists")
    graph = nx.DiGraph()
    attrs = data.get("graph", {})
    if not isinstance(attrs, dict):
        raise ValueError("'graph.graph' (graph attributes) must be a JSON object")
    graph.graph.update(attrs)
    for entry in nodes:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ValueError(f"each node needs a string 'id', got {entry!r}")
        name = entry["id"]
        if name in graph:
            raise ValueError(f"node {name!r} appears twice")
        graph.add_node(name, **{key: value for key, value in entry.items() if key != "id"})
    for entry in edges:
        if not isinstance(entry, dict) or "source" not in entry or "target" not in entry:
            raise ValueError(f"each edge needs 'source' and 'target', got {entry!r}")
        source, target = entry["source"], entry["target"]
        for end in (source, target):
            if not isinstance(end, str) or end not in graph:
                raise ValueError(f"edge {source!r} -> {target!r} names unknown node {end!r}")
        if graph.has_edge(source, target):
            raise ValueError(f"edge {source!r} -> {target!r} appears twice")
        attrs = {key: value for key, value in entry.items() if key not in ("source", "target")}
        graph.add_edge(source, target, **attrs)
    return graph

"""Circuits in other tools' formats: GraphML (Gephi, yEd, Cytoscape) and Neuronpedia graph JSON.

GraphML encoding (`write_graphml`):

- GraphML cannot store None. A node attribute that is None (``layer`` of ``embed`` and ``y``,
  ``index`` of error and output nodes, ``position`` when positions are summed) is left out of
  that node's data: read back, an absent key means None.
- Nested values (lists, dicts) are written as JSON text; the provenance record goes into the
  graph attribute ``provenance_json``.
- Annotations and labels, when given, become the string node attribute ``label``.
- Node ids are the node names; edge attribute ``weight`` is a float.

Neuronpedia attribution-graph JSON (`to_neuronpedia`), as read by the circuit-tracer / Neuronpedia
graph frontend: ``{"metadata", "qParams", "nodes", "links"}``.

- ``nodes``: ``node_id`` and ``jsNodeId`` are our node names; ``feature`` the feature or neuron
  index (-1 for error nodes and ``y``); ``layer`` a string: ``"E"`` for ``embed``, otherwise the
  submodule's row in forward order (attn_0 = "1", mlp_0 = "2", resid_0 = "3", attn_1 = "4", ...;
  ``y`` one past the last row), because the frontend has one layer axis and we have three
  submodules per block; ``ctx_idx`` the position (0 when positions are summed); ``feature_type``
  ``"embedding"``, ``"sae feature"``, ``"neuron"``, ``"mlp reconstruction error"`` (the
  frontend's name for error nodes, used for every submodule's ``ε``) or ``"logit"`` (``y``);
  ``influence`` the node's effect; ``activation`` None (circuits store effects, not
  activations); ``clerp`` the annotation or label. Our ``submodule`` rides along as an extra key.
- ``links``: ``source``, ``target`` (node names), ``weight``.
- ``metadata``: ``slug``, ``scan`` (the model), ``prompt``, ``prompt_tokens``,
  ``transcoder_list`` (empty), ``node_threshold``, ``schema_version`` 1, plus our provenance
  under ``circuits_provenance``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import networkx as nx

from circuits.files import write_text
from circuits.graph import OUTPUT, Circuit, submodule_order
from viz.diagram import node_label

__all__ = ["to_graphml_graph", "write_graphml", "to_neuronpedia", "write_neuronpedia"]

_FEATURE_TYPES = {
    "embed": "embedding",
    "feature": "sae feature",
    "neuron": "neuron",
    "error": "mlp reconstruction error",
    "output": "logit",
}


def _graphml_value(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def _labels(
    circuit: Circuit,
    annotations: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
) -> dict[str, str]:
    """``{name: label}`` for nodes that have an annotation or label (names are not repeated)."""
    out = {}
    for name in circuit.graph:
        label = node_label(name, annotations, labels)
        if name != OUTPUT and label != name:
            out[name] = label
    return out


def to_graphml_graph(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> nx.DiGraph:
    """A copy of the circuit's graph that GraphML can store (see the module docstring)."""
    graph = nx.DiGraph()
    graph.graph["provenance_json"] = json.dumps(circuit.provenance, ensure_ascii=False)
    names = _labels(circuit, annotations, labels)
    for name, attrs in circuit.graph.nodes(data=True):
        data = {key: _graphml_value(v) for key, v in attrs.items() if v is not None}
        if name in names:
            data["label"] = names[name]
        graph.add_node(name, **data)
    for source, target, attrs in circuit.graph.edges(data=True):
        data = {key: _graphml_value(v) for key, v in attrs.items() if v is not None}
        graph.add_edge(source, target, **data)
    return graph


def write_graphml(
    circuit: Circuit,
    path: str | os.PathLike,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write the circuit as GraphML (UTF-8); return the path. Read it with
    ``networkx.read_graphml``; absent node attributes mean None."""
    path = Path(path)
    nx.write_graphml(to_graphml_graph(circuit, annotations=annotations, labels=labels), path)
    return path


def _layer_names(circuit: Circuit) -> dict[str, str]:
    """Submodule -> the frontend's layer string (see the module docstring)."""
    submodules = {sub for _, sub in circuit.graph.nodes(data="submodule")} - {OUTPUT}
    last = max((submodule_order(sub) for sub in submodules if sub != "embed"), default=(-1, 2))
    out = {"embed": "E"}
    for sub in submodules - {"embed"}:
        layer, family = submodule_order(sub)
        out[sub] = str(3 * int(layer) + family + 1)
    out[OUTPUT] = str(3 * int(last[0]) + 3 + 1)
    return out


def to_neuronpedia(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    tokens: Sequence[str] | None = None,
    slug: str | None = None,
) -> dict[str, Any]:
    """The circuit as a Neuronpedia-style attribution-graph document (see the module docstring).

    Args:
        circuit: The circuit.
        annotations: ``{node name: annotation}``, written as each node's ``clerp``.
        labels: Fallback labels for nodes without an annotation.
        tokens: The example prompt's tokens (``metadata.prompt_tokens``; joined as the prompt).
        slug: The graph's slug (default: from the provenance's task, else ``"circuit"``).
    """
    provenance = circuit.provenance
    layers = _layer_names(circuit)
    names = _labels(circuit, annotations, labels)
    nodes = []
    for name, attrs in circuit.graph.nodes(data=True):
        index = attrs["index"]
        nodes.append(
            {
                "node_id": name,
                "jsNodeId": name,
                "feature": -1 if index is None else index,
                "layer": layers[attrs["submodule"]],
                "ctx_idx": attrs["position"] or 0,
                "feature_type": _FEATURE_TYPES[attrs["kind"]],
                "influence": attrs["effect"],
                "activation": None,
                "clerp": names.get(name, ""),
                "is_target_logit": name == OUTPUT,
                "submodule": attrs["submodule"],
            }
        )
    links = [
        {"source": u, "target": v, "weight": w} for u, v, w in circuit.graph.edges(data="weight")
    ]
    thresholds = provenance.get("thresholds")
    threshold = thresholds.get("node") if isinstance(thresholds, dict) else None
    task = provenance.get("task")
    metadata = {
        "slug": slug or (str(task) if task else "circuit"),
        "scan": str(provenance.get("model", "")),
        "prompt_tokens": list(tokens or []),
        "prompt": "".join(tokens or []),
        "transcoder_list": [],
        "node_threshold": threshold if isinstance(threshold, (int, float)) else None,
        "schema_version": 1,
        "circuits_provenance": provenance,
    }
    q_params = {
        "pinnedIds": [],
        "supernodes": [],
        "linkType": "both",
        "clickedId": "",
        "sg_pos": "",
    }
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def write_neuronpedia(circuit: Circuit, path: str | os.PathLike, **options: Any) -> Path:
    """Write `to_neuronpedia` (options as there) as UTF-8 JSON; return the path."""
    path = Path(path)
    text = json.dumps(to_neuronpedia(circuit, **options), ensure_ascii=False, allow_nan=False)
    write_text(path, text + "\n")
    return path

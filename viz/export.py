"""Circuits in other tools' formats: GraphML (Gephi, yEd, Cytoscape) and Neuronpedia graph JSON.

GraphML encoding (`write_graphml`):

- GraphML cannot store None. A node attribute that is None (``layer`` of ``embed`` and ``y``,
  ``index`` of error and output nodes, ``position`` when positions are summed) is left out of
  that node's data: read back, an absent key means None.
- Nested values (lists, dicts) are written as JSON text; the provenance record goes into the
  graph attribute ``provenance_json``.
- Annotations and labels, when given, become the string node attribute ``label``.
- Node ids are the node names; edge attribute ``weight`` is a float.

Neuronpedia attribution-graph JSON (`to_neuronpedia`): the document circuit-tracer writes for
its graph frontend (``circuit_tracer/frontend/graph_models.py``: pydantic ``Model``, ``Metadata``,
``QParams``, ``Node``) and Neuronpedia validates on upload (``graph-schema.json``, JSON Schema,
checked with Ajv): ``{"metadata", "qParams", "nodes", "links"}``. Neither forbids extra keys
(the pydantic models ignore them, the JSON Schema sets no ``additionalProperties``), so our own
facts ride along under keys the frontends never read.

- ``nodes``, the fields both frontends read:

  - ``node_id``: ``"{layer}_{index}_{ctx_idx}"`` as circuit-tracer builds it (``-1`` for the
    index of error nodes and ``y``), e.g. ``"3_7_2"``; unique, and what links and
    ``qParams.pinnedIds`` refer to. ``jsNodeId`` is the same string (circuit-tracer's default
    when none is given; its own ``"{layer}_{index}-0"`` repeats across positions).
  - ``layer``: a string, ``"E"`` for ``embed``, otherwise the submodule's row in forward order
    (attn_0 = "1", mlp_0 = "2", resid_0 = "3", attn_1 = "4", ...; ``y`` one past the last row),
    because the frontend has one layer axis and we have three submodules per block.
  - ``feature``: circuit-tracer writes a feature as the Cantor pair of (layer, index), and
    with ``schema_version`` 1 Neuronpedia reads the index back out of it, so features and
    neurons get ``cantor(int(layer), index)`` ("E" counts as 0); embedding units their index;
    error nodes and ``y`` -1.
  - ``feature_type`` from the frontends' vocabulary: ``"cross layer transcoder"`` (their one
    type for a dictionary feature, which they pin and score; used for SAE features and
    neurons alike), ``"mlp reconstruction error"`` (every submodule's ``ε``), ``"embedding"``
    (units of the embedding) and ``"logit"`` (``y``, with ``is_target_logit`` true).
  - ``ctx_idx``: the token position, an index into ``metadata.prompt_tokens``. ``y`` sits at
    the last token, where circuit-tracer puts its logits.
  - ``clerp``: the annotation or label, else the node name (the frontends would show
    ``F#{feature}``, a Cantor number). ``y`` keeps an empty clerp: the frontends parse a
    logit's clerp as ``Output "token" (p=...)`` and fail on any other text.
  - ``influence`` and ``activation`` are None. The frontends read ``influence`` as
    circuit-tracer's cumulative influence (small = important) and hide nodes above
    ``metadata.node_threshold``; an effect read that way would hide the strongest nodes, so
    ``node_threshold`` is not written either (our thresholds stay in the provenance).
  - ``token_prob`` 0.0, ``run_idx`` 0, ``reverse_ctx_idx`` 0: circuit-tracer's defaults.
  - Ours: ``name`` (the node name), ``submodule``, ``kind``, ``index``, ``position``,
    ``effect``, ``positions_summed``.

- Summed circuits (position None) have one node per feature for the whole prompt, but the
  frontends draw each node in exactly one token column. All of them go to the last token's column
  (``len(prompt_tokens) - 1``; 0 without tokens): it is where the metric is read and where
  ``y`` stands, so the picture reads as "everything feeds the prediction", and no node claims
  a position it was not found at. ``metadata.positions_summed`` and each node's
  ``positions_summed`` say so, and ``metadata.info.description`` says it in words.
- ``links``: ``source``, ``target`` (node ids as above), ``weight``.
- ``metadata``: ``slug`` and ``scan`` (Neuronpedia accepts only letters, digits, ``_ . -``:
  other characters become ``-``; ``scan`` is the model name's last path part, e.g.
  ``gemma-2-2b`` for ``google/gemma-2-2b``), ``prompt_tokens``, ``prompt`` (the tokens
  joined), ``transcoder_list`` (empty), ``schema_version`` 1, ``info`` (``description``,
  ``generator``), plus ours: ``positions_summed`` and the provenance as
  ``circuits_provenance``.
- ``qParams``: nothing pinned, ``linkType`` ``"both"``.

The prompt's tokens come from ``tokens`` only: discover's provenance records the task's name,
file and split, not an example prompt. Without them ``prompt_tokens`` and ``prompt`` are
empty. Neuronpedia still loads such a file, but circuit-tracer's viewer hides features present
at more than 2/3 of the prompt's tokens, which with fewer than two tokens is every node: pass
``tokens`` (``circuits render -o x.json --tokens ...``), the model's tokens as decoded
(leading spaces included, e.g. a JSON list), since ``prompt`` is their plain concatenation.
"""

from __future__ import annotations

import json
import os
import re
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
    "feature": "cross layer transcoder",
    "neuron": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "output": "logit",
}
"""Node kind -> the frontends' ``feature_type`` (see the module docstring)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


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


def _cantor(x: int, y: int) -> int:
    """The Cantor pairing of ``(x, y)``, as circuit-tracer encodes ``(layer, index)``."""
    return (x + y) * (x + y + 1) // 2 + y


def _identifier(text: str) -> str:
    """``text`` with every run of characters Neuronpedia refuses in a slug or scan as ``-``."""
    return _UNSAFE.sub("-", text).strip("-")


def _scan(model: Any) -> str:
    """The model name's last path part as a Neuronpedia model id (``""`` when unknown)."""
    if not model:
        return ""
    return _identifier(re.split(r"[/\\]", str(model).rstrip("/\\"))[-1])


def _description(summed: bool, tokens: Sequence[str] | None) -> str:
    text = (
        "Circuit exported by circuits. Each node's circuits name is in its 'name' key and its "
        "effect in 'effect'; 'influence' is not set."
    )
    if summed:
        where = "the last token" if tokens else "position 0 (no tokens given)"
        text += f" Positions were summed: each node stands for every position, drawn at {where}."
    if not tokens:
        text += " The prompt's tokens were not given."
    return text


def to_neuronpedia(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    tokens: Sequence[str] | None = None,
    slug: str | None = None,
) -> dict[str, Any]:
    """The circuit as a Neuronpedia / circuit-tracer attribution-graph document.

    See the module docstring for every field, and for where summed circuits' nodes go.

    Args:
        circuit: The circuit.
        annotations: ``{node name: annotation}``, written as each node's ``clerp``.
        labels: Fallback labels for nodes without an annotation.
        tokens: The example prompt's tokens as the model splits them (``metadata.prompt_tokens``;
            joined as ``metadata.prompt``). None: both are left empty, since the provenance
            records no prompt.
        slug: The graph's slug (default: the provenance's task, else ``"circuit"``); characters
            other than letters, digits, ``_ . -`` become ``-``.

    Raises:
        ValueError: If ``tokens`` are not strings, or too few for the circuit's positions.
    """
    provenance = circuit.provenance
    positions = [p for _, p in circuit.graph.nodes(data="position") if p is not None]
    summed = not positions
    if tokens is not None:
        tokens = list(tokens)
        if not all(isinstance(token, str) for token in tokens):
            raise ValueError("tokens must be strings")
        if positions and max(positions) >= len(tokens):
            raise ValueError(
                f"{len(tokens)} tokens given, but the circuit has nodes at position "
                f"{max(positions)}; pass the tokens of the prompt the circuit was found on"
            )
    if tokens:
        last = len(tokens) - 1
    else:
        last = max(positions, default=0)
    layers = _layer_names(circuit)
    names = _labels(circuit, annotations, labels)
    nodes = []
    ids = {}
    for name, attrs in circuit.graph.nodes(data=True):
        kind, index, position = attrs["kind"], attrs["index"], attrs["position"]
        layer = layers[attrs["submodule"]]
        ctx_idx = last if position is None else position
        if kind in ("feature", "neuron"):
            feature = _cantor(0 if layer == "E" else int(layer), index)
        elif kind == "embed":
            feature = index
        else:
            feature = -1
        ids[name] = node_id = f"{layer}_{-1 if index is None else index}_{ctx_idx}"
        nodes.append(
            {
                "node_id": node_id,
                "feature": feature,
                "layer": layer,
                "ctx_idx": ctx_idx,
                "feature_type": _FEATURE_TYPES[kind],
                "jsNodeId": node_id,
                "clerp": "" if name == OUTPUT else names.get(name, name),
                "influence": None,
                "activation": None,
                "token_prob": 0.0,
                "is_target_logit": name == OUTPUT,
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "name": name,
                "submodule": attrs["submodule"],
                "kind": kind,
                "index": index,
                "position": position,
                "effect": attrs["effect"],
                "positions_summed": summed,
            }
        )
    links = [
        {"source": ids[u], "target": ids[v], "weight": w}
        for u, v, w in circuit.graph.edges(data="weight")
    ]
    generator = {"name": "circuits"}
    if isinstance(provenance.get("circuits_version"), str):
        generator["version"] = provenance["circuits_version"]
    task = provenance.get("task")
    metadata = {
        "slug": _identifier(slug or (str(task) if task else "")) or "circuit",
        "scan": _scan(provenance.get("model")),
        "prompt_tokens": list(tokens or []),
        "prompt": "".join(tokens or []),
        "transcoder_list": [],
        "schema_version": 1,
        "info": {"description": _description(summed, tokens), "generator": generator},
        "positions_summed": summed,
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

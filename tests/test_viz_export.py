"""The Neuronpedia / circuit-tracer attribution-graph export, checked against the schema's facts.

`check_graph_document` is written from what the two readers of the file require (no code or text
of theirs is copied):

- circuit-tracer's pydantic models (``circuit_tracer/frontend/graph_models.py``): ``Metadata``
  needs ``slug``, ``scan`` (str), ``transcoder_list``, ``prompt_tokens`` (list of str), ``prompt``
  (str); ``node_threshold`` is a float or None, ``schema_version`` an int or None. ``QParams``
  needs ``pinnedIds`` (list of str), ``supernodes`` (list of lists of str), ``linkType``,
  ``clickedId``, ``sg_pos`` (str). ``Node`` needs ``node_id``, ``feature`` (int), ``layer``
  (str), ``ctx_idx`` (int), ``feature_type``, ``jsNodeId`` (str), with ``clerp`` (str),
  ``token_prob`` (float), ``is_target_logit`` (bool), ``run_idx``, ``reverse_ctx_idx`` (int),
  ``influence``, ``activation`` (float or None). ``Link``: ``source``, ``target`` (str),
  ``weight`` (float). Extra keys are ignored.
- Neuronpedia's ``apps/webapp/app/api/graph/graph-schema.json`` (JSON Schema, draft 07, checked
  with Ajv on upload): required top level ``metadata``, ``qParams``, ``nodes``, ``links``;
  metadata ``slug``, ``scan``, ``prompt_tokens``, ``prompt``; ``node_threshold`` a number when
  present (null is refused); nodes ``node_id``, ``feature`` (int or null), ``layer`` (str or
  int), ``ctx_idx`` (int), ``feature_type``, ``jsNodeId``, ``clerp``; links ``source``,
  ``target``, ``weight`` (number). No ``additionalProperties``. Its upload route refuses a slug
  or scan with characters other than letters, digits, ``_ . -``.
- The frontends (Neuronpedia ``app/[modelId]/graph/utils.ts``, circuit-tracer
  ``frontend/assets/attribution_graph/util-cg.js``): links are joined to nodes by ``node_id``;
  ``ctx_idx`` indexes ``metadata.prompt_tokens``; nodes are merged by
  ``{layer}_{feature}_{ctx_idx}``; a logit's non-empty clerp is parsed for ``(p=...)``; a graph
  whose non-logit nodes have no numeric layer above 0 is refused ("No layer found"); the
  ``feature_type`` values they branch on are those in `FEATURE_TYPES`.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from conftest import small_circuit
from test_viz_diagram import positional_circuit

from circuits.graph import Circuit
from viz.export import to_neuronpedia, write_neuronpedia

FEATURE_TYPES = {
    "cross layer transcoder",
    "mlp reconstruction error",
    "embedding",
    "logit",
    "lorsa",
    "lorsa error",
    "bias",
    "unknown",
}
"""Every ``feature_type`` the frontends branch on."""

SAFE_ID = re.compile(r"[A-Za-z0-9_.-]*")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(
        value
    )


def is_str_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_graph_document(doc: dict) -> None:
    """Assert that ``doc`` is what both frontends accept (see the module docstring)."""
    problems = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    json.dumps(doc, allow_nan=False)
    for key in ("metadata", "qParams", "nodes", "links"):
        need(key in doc, f"top level lacks {key!r}")
    meta, q_params = doc.get("metadata", {}), doc.get("qParams", {})
    nodes, links = doc.get("nodes", []), doc.get("links", [])
    need(isinstance(nodes, list) and isinstance(links, list), "nodes and links must be lists")

    need(isinstance(meta.get("slug"), str) and meta.get("slug") != "", "metadata.slug")
    need(isinstance(meta.get("scan"), str), "metadata.scan")
    for key in ("slug", "scan"):
        need(SAFE_ID.fullmatch(str(meta.get(key, ""))) is not None, f"metadata.{key} characters")
    need(is_str_list(meta.get("prompt_tokens")), "metadata.prompt_tokens")
    need(isinstance(meta.get("prompt"), str), "metadata.prompt")
    need(is_str_list(meta.get("transcoder_list")), "metadata.transcoder_list")
    need("node_threshold" not in meta or is_number(meta["node_threshold"]), "node_threshold")
    need(meta.get("schema_version") is None or is_int(meta["schema_version"]), "schema_version")
    info = meta.get("info", {})
    need(isinstance(info, dict), "metadata.info")
    need(isinstance(info.get("description", ""), str), "metadata.info.description")
    generator = info.get("generator", {})
    need(
        isinstance(generator, dict) and all(isinstance(v, str) for v in generator.values()),
        "metadata.info.generator",
    )

    need(is_str_list(q_params.get("pinnedIds")), "qParams.pinnedIds")
    supernodes = q_params.get("supernodes")
    need(
        isinstance(supernodes, list) and all(is_str_list(s) for s in supernodes),
        "qParams.supernodes",
    )
    for key in ("linkType", "clickedId", "sg_pos"):
        need(isinstance(q_params.get(key), str), f"qParams.{key}")

    tokens = meta.get("prompt_tokens") or []
    for node in nodes:
        where = f"node {node.get('node_id')!r}"
        need(isinstance(node.get("node_id"), str), f"{where}: node_id")
        need(is_int(node.get("feature")), f"{where}: feature")
        layer = node.get("layer")
        need(isinstance(layer, str) and (layer == "E" or layer.isdigit()), f"{where}: layer")
        need(is_int(node.get("ctx_idx")) and node["ctx_idx"] >= 0, f"{where}: ctx_idx")
        if tokens and is_int(node.get("ctx_idx")):
            need(node["ctx_idx"] < len(tokens), f"{where}: ctx_idx past the prompt's tokens")
        need(node.get("feature_type") in FEATURE_TYPES, f"{where}: feature_type")
        need(isinstance(node.get("jsNodeId"), str), f"{where}: jsNodeId")
        need(isinstance(node.get("clerp"), str), f"{where}: clerp")
        need(is_number(node.get("token_prob", 0.0)), f"{where}: token_prob")
        need(isinstance(node.get("is_target_logit", False), bool), f"{where}: is_target_logit")
        for key in ("run_idx", "reverse_ctx_idx"):
            need(is_int(node.get(key, 0)), f"{where}: {key}")
        for key in ("influence", "activation"):
            need(node.get(key) is None or is_number(node[key]), f"{where}: {key}")
        if node.get("feature_type") == "logit":
            need(node.get("clerp") == "" or "(p=" in node["clerp"], f"{where}: logit clerp")

    ids = [node.get("node_id") for node in nodes]
    need(len(set(ids)) == len(ids), "node_id values repeat")
    js_ids = [node.get("jsNodeId") for node in nodes]
    need(len(set(js_ids)) == len(js_ids), "jsNodeId values repeat")
    merged = [
        (n.get("layer"), n.get("feature"), n.get("ctx_idx"), "error" in str(n.get("feature_type")))
        for n in nodes
    ]
    need(len(set(merged)) == len(merged), "two nodes share layer, feature and ctx_idx")
    rows = [
        int(n["layer"])
        for n in nodes
        if n.get("feature_type") != "logit" and str(n.get("layer")).isdigit()
    ]
    need(bool(rows) and max(rows) > 0, "no non-logit node has a numeric layer above 0")

    known = set(ids)
    for link in links:
        for end in ("source", "target"):
            need(isinstance(link.get(end), str), f"link {end} must be a string")
            need(link.get(end) in known, f"link {end} {link.get(end)!r} is no node_id")
        need(is_number(link.get("weight")), f"link weight {link.get('weight')!r}")
    assert not problems, "\n".join(problems)


def by_name(doc: dict) -> dict[str, dict]:
    return {node["name"]: node for node in doc["nodes"]}


def named_links(doc: dict) -> dict[tuple[str, str], float]:
    """The links as ``{(source name, target name): weight}``."""
    name_of = {node["node_id"]: node["name"] for node in doc["nodes"]}
    return {
        (name_of[link["source"]], name_of[link["target"]]): link["weight"] for link in doc["links"]
    }


CAT = ["The", " cat", " sat"]


@pytest.mark.parametrize(
    "make, tokens",
    [(positional_circuit, ["a", "b", "c"]), (small_circuit, CAT), (small_circuit, None)],
    ids=["positions-with-tokens", "summed-with-tokens", "summed-without-tokens"],
)
def test_document_fits_the_schema(make, tokens):
    circuit = make()
    doc = to_neuronpedia(circuit, annotations={"resid_0/7": "plural"}, tokens=tokens)
    check_graph_document(doc)
    assert set(by_name(doc)) == set(circuit.graph)
    assert named_links(doc) == circuit.edge_weights()
    assert doc["metadata"]["prompt_tokens"] == (tokens or [])
    assert doc["metadata"]["prompt"] == "".join(tokens or [])


def test_positions_are_token_positions():
    doc = to_neuronpedia(positional_circuit(), tokens=["a", "b", "c"])
    nodes = by_name(doc)
    ctx = {name: node["ctx_idx"] for name, node in nodes.items()}
    assert ctx == {"embed/3@0": 0, "attn_0/5@1": 1, "mlp_0/ε@1": 1, "resid_0/7@2": 2, "y": 2}
    assert doc["metadata"]["prompt"] == "abc"
    assert doc["metadata"]["positions_summed"] is False
    assert not any(node["positions_summed"] for node in doc["nodes"])
    # node ids "{layer}_{index}_{ctx_idx}"; feature = Cantor pair (layer, index), worked out
    # by hand: (0+3)(0+3+1)/2 + 3 = 9, (1+5)(7)/2 + 5 = 26, (3+7)(11)/2 + 7 = 62.
    expected = {
        "embed/3@0": ("E_3_0", 9, "E", "cross layer transcoder"),
        "attn_0/5@1": ("1_5_1", 26, "1", "cross layer transcoder"),
        "mlp_0/ε@1": ("2_-1_1", -1, "2", "mlp reconstruction error"),
        "resid_0/7@2": ("3_7_2", 62, "3", "cross layer transcoder"),
        "y": ("4_-1_2", -1, "4", "logit"),
    }
    for name, (node_id, feature, layer, feature_type) in expected.items():
        node = nodes[name]
        assert (node["node_id"], node["feature"], node["layer"], node["feature_type"]) == (
            node_id,
            feature,
            layer,
            feature_type,
        ), name
        assert node["jsNodeId"] == node_id


def test_positions_without_tokens_keep_their_positions():
    nodes = by_name(to_neuronpedia(positional_circuit()))
    assert nodes["resid_0/7@2"]["ctx_idx"] == 2 and nodes["y"]["ctx_idx"] == 2


def test_summed_nodes_stand_at_the_last_token():
    circuit = small_circuit()
    doc = to_neuronpedia(circuit, tokens=CAT)
    assert {node["ctx_idx"] for node in doc["nodes"]} == {2}
    assert doc["metadata"]["prompt"] == "The cat sat"
    assert doc["metadata"]["positions_summed"] is True
    assert all(node["positions_summed"] and node["position"] is None for node in doc["nodes"])
    assert "summed" in doc["metadata"]["info"]["description"]
    ids = {name: node["node_id"] for name, node in by_name(doc).items()}
    assert ids == {
        "embed/3": "E_3_2",
        "attn_0/5": "1_5_2",
        "mlp_0/ε": "2_-1_2",
        "resid_0/7": "3_7_2",
        "resid_1/2": "6_2_2",
        "y": "7_-1_2",
    }


def test_summed_without_tokens_says_so():
    doc = to_neuronpedia(small_circuit())
    assert {node["ctx_idx"] for node in doc["nodes"]} == {0}
    assert doc["metadata"]["prompt_tokens"] == [] and doc["metadata"]["prompt"] == ""
    assert "not given" in doc["metadata"]["info"]["description"]


def test_the_metric_is_the_target_logit():
    circuit = small_circuit()
    doc = to_neuronpedia(circuit, tokens=CAT)
    logits = [node for node in doc["nodes"] if node["feature_type"] == "logit"]
    assert [node["name"] for node in logits] == ["y"]
    (y,) = logits
    assert y["is_target_logit"] is True and y["clerp"] == "" and y["feature"] == -1
    assert y["effect"] == circuit.effect("y") == 1.2
    assert sum(node["is_target_logit"] for node in doc["nodes"]) == 1


def test_node_values():
    circuit = small_circuit()
    doc = to_neuronpedia(circuit, annotations={"resid_0/7": "plural"}, labels={"attn_0/5": "L"})
    nodes = by_name(doc)
    assert nodes["resid_0/7"]["clerp"] == "plural" and nodes["attn_0/5"]["clerp"] == "L"
    assert nodes["resid_1/2"]["clerp"] == "resid_1/2"  # no annotation: the name
    for name, node in nodes.items():
        assert node["effect"] == circuit.effect(name)
        assert node["influence"] is None and node["activation"] is None
        assert (node["submodule"], node["kind"], node["index"]) == (
            circuit.graph.nodes[name]["submodule"],
            circuit.graph.nodes[name]["kind"],
            circuit.graph.nodes[name]["index"],
        )


def test_neuron_circuit_types():
    circuit = Circuit.from_effects(
        {"embed/3": 0.2, "resid_0/7": 1.0},
        {("embed/3", "resid_0/7"): 0.5, ("resid_0/7", "y"): 1.0},
        {"dictionaries": "neurons"},
    )
    doc = to_neuronpedia(circuit, tokens=CAT)
    check_graph_document(doc)
    nodes = by_name(doc)
    assert (nodes["embed/3"]["feature_type"], nodes["embed/3"]["feature"]) == ("embedding", 3)
    assert nodes["resid_0/7"]["feature_type"] == "cross layer transcoder"
    assert nodes["resid_0/7"]["kind"] == "neuron" and nodes["resid_0/7"]["feature"] == 62


def test_slug_scan_and_thresholds():
    circuit = Circuit.from_effects(
        {"resid_0/7": 1.0},
        {("resid_0/7", "y"): 1.0},
        {"model": "google/gemma-2-2b", "task": "subject verb agreement"},
    ).threshold_nodes(0.5)
    doc = to_neuronpedia(circuit)
    check_graph_document(doc)
    meta = doc["metadata"]
    assert (meta["scan"], meta["slug"]) == ("gemma-2-2b", "subject-verb-agreement")
    assert to_neuronpedia(circuit, slug="my graph/1")["metadata"]["slug"] == "my-graph-1"
    # Our threshold is on |effect|; the frontends would prune by cumulative influence.
    assert "node_threshold" not in meta
    assert meta["circuits_provenance"]["thresholds"]["node"] == 0.5
    assert meta["circuits_provenance"]["model"] == "google/gemma-2-2b"


@pytest.mark.parametrize("tokens", [["a", "b"], ["a", "b", 3]])
def test_bad_tokens_are_refused(tokens):
    with pytest.raises(ValueError, match="tokens"):
        to_neuronpedia(positional_circuit(), tokens=tokens)


def test_write_neuronpedia_writes_the_document(tmp_path):
    circuit = positional_circuit()
    path = write_neuronpedia(circuit, tmp_path / "g.json", tokens=["a", "b", "ü"])
    assert json.loads(path.read_text(encoding="utf-8")) == to_neuronpedia(
        circuit, tokens=["a", "b", "ü"]
    )

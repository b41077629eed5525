"""Circuit graphs: node names, construction, pruning, thresholds, summary and JSON files."""

from __future__ import annotations

import json
import math

import networkx as nx
import pytest

from circuits.graph import (
    FORMAT,
    FORMAT_VERSION,
    Circuit,
    CircuitFormatError,
    NodeId,
    format_summary,
    node_name,
    parse_node_name,
)

PROVENANCE = {
    "model": "zoo",
    "dictionaries": "zoo",
    "task": "agreement",
    "method": "ig",
    "aggregation": "sum",
    "total_effect": 2.5,
}


def small_circuit() -> Circuit:
    """embed/3 -> mlp_0/7 -> resid_0/1 -> y, attn_0/ε -> resid_0/1, and a dangling mlp_0/2.

    mlp_0/2 has an edge *in* (from embed/3) but none out, so it has no path to y.
    """
    effects = {
        "embed/3": 0.05,
        "attn_0/ε": -0.4,
        "mlp_0/7": 0.3,
        "mlp_0/2": -0.9,
        "resid_0/1": 1.2,
    }
    edges = {
        ("embed/3", "mlp_0/7"): 0.02,
        ("embed/3", "mlp_0/2"): -0.5,
        ("mlp_0/7", "resid_0/1"): 0.25,
        ("attn_0/ε", "resid_0/1"): -0.005,
        ("resid_0/1", "y"): 1.2,
    }
    return Circuit.from_effects(effects, edges, PROVENANCE)


# ------------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    ("args", "name", "parsed"),
    [
        (("resid_2", 17, 5), "resid_2/17@5", NodeId("resid_2", 2, "feature", 17, 5)),
        (("mlp_0", "ε", 3), "mlp_0/ε@3", NodeId("mlp_0", 0, "error", None, 3)),
        (("attn_11", 0), "attn_11/0", NodeId("attn_11", 11, "feature", 0, None)),
        (("embed", "ε"), "embed/ε", NodeId("embed", None, "error", None, None)),
        (("embed", 4), "embed/4", NodeId("embed", None, "feature", 4, None)),
    ],
)
def test_name_round_trip(args, name, parsed):
    assert node_name(*args) == name
    assert parse_node_name(name) == parsed
    assert parsed.name == name


def test_output_and_neuron_kinds():
    assert parse_node_name("y") == NodeId("y", None, "output", None, None)
    assert parse_node_name("mlp_1/4", node_kind="neuron").kind == "neuron"
    assert parse_node_name("embed/4", node_kind="neuron").kind == "embed"
    assert parse_node_name("embed/ε", node_kind="neuron").kind == "error"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "mlp_0",
        "mlp_0/",
        "mlp/3",
        "mlp_01/3",
        "mlp_0/03",
        "mlp_0/-1",
        "mlp_0/e",
        "mlp_0/3@",
        "mlp_0/3@-2",
        "mlp_0/3@1@2",
        "block_0/3",
        "embed_0/3",
        "y@3",
        " resid_0/1",
        "resid_0/1 ",
        "resid_0/١",  # a non-ASCII digit
    ],
)
def test_malformed_names_rejected(bad):
    with pytest.raises(ValueError, match="malformed node name"):
        parse_node_name(bad)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("mlp", 3), "unknown submodule"),
        (("mlp_0", -1), "non-negative"),
        (("mlp_0", 1.5), "integer"),
    ],
)
def test_node_name_rejects_bad_parts(args, match):
    with pytest.raises(ValueError, match=match):
        node_name(*args)
    with pytest.raises(ValueError, match="position"):
        node_name("mlp_0", 1, position=-1)


# ------------------------------------------------------------------------------------------------
# Construction


def test_from_effects_attributes():
    circuit = small_circuit()
    g = circuit.graph
    assert g.nodes["resid_0/1"] == {
        "submodule": "resid_0",
        "layer": 0,
        "kind": "feature",
        "index": 1,
        "position": None,
        "effect": 1.2,
    }
    assert g.nodes["attn_0/ε"]["kind"] == "error" and g.nodes["attn_0/ε"]["index"] is None
    assert g.nodes["embed/3"]["layer"] is None
    assert g.nodes["y"] == {
        "submodule": "y",
        "layer": None,
        "kind": "output",
        "index": None,
        "position": None,
        "effect": 2.5,  # the recorded total effect
    }
    assert g.edges["mlp_0/7", "resid_0/1"] == {"weight": 0.25}
    assert circuit.provenance["model"] == "zoo"
    assert {"circuits_version", "created"} <= set(circuit.provenance)
    assert list(g)[0] == "embed/3" and list(g)[-1] == "y"  # forward order


def test_from_effects_neurons_and_positions():
    neurons = Circuit.from_effects(
        {"embed/1@0": 0.5, "mlp_0/2@1": 0.5, "mlp_0/ε@1": 0.1},
        {("embed/1@0", "mlp_0/2@1"): 0.3, ("mlp_0/2@1", "y"): 0.5},
        {"dictionaries": "neurons"},
    )
    kinds = dict(neurons.graph.nodes(data="kind"))
    assert kinds == {
        "embed/1@0": "embed",
        "mlp_0/2@1": "neuron",
        "mlp_0/ε@1": "error",
        "y": "output",
    }
    assert neurons.graph.nodes["mlp_0/2@1"]["position"] == 1
    mixed = Circuit.from_effects({"embed/1": 0.5, "mlp_0/2": 0.5}, node_kind={"embed": "neuron"})
    assert mixed.graph.nodes["embed/1"]["kind"] == "embed"
    assert mixed.graph.nodes["mlp_0/2"]["kind"] == "feature"


def test_from_effects_converts_number_types():
    np = pytest.importorskip("numpy")
    circuit = Circuit.from_effects({"mlp_0/1": np.float32(0.5)}, {("mlp_0/1", "y"): np.float64(1)})
    assert type(circuit.effect("mlp_0/1")) is float
    assert type(circuit.weight("mlp_0/1", "y")) is float


@pytest.mark.parametrize(
    ("effects", "edges", "match"),
    [
        ({"mlp_0/1": math.nan}, {}, "finite"),
        ({"mlp_0/1": 1.0}, {("mlp_0/1", "y"): math.inf}, "finite"),
        ({"mlp_0/1": 1.0}, {("mlp_0/9", "y"): 1.0}, "not in node_effects"),
        ({"mlp_0/1": 1.0}, {("mlp_0/1", "mlp_0/1"): 1.0}, "self-loop"),
        ({"mlp_0/1": 1.0, "resid_0/1": 1.0}, {("resid_0/1", "mlp_0/1"): 1.0}, "backwards"),
        ({"mlp_0/1": 1.0}, {("y", "mlp_0/1"): 1.0}, "backwards"),
        ({"mlp_0/1@3": 1.0, "resid_0/1@2": 1.0}, {("mlp_0/1@3", "resid_0/1@2"): 1.0}, "later"),
        ({"mlp_0/1@3": 1.0, "resid_0/1": 1.0}, {}, "position"),
        ({"mlp_0/1": "big"}, {}, "finite number"),
    ],
)
def test_from_effects_rejects(effects, edges, match):
    with pytest.raises(ValueError, match=match):
        Circuit.from_effects(effects, edges)


# ------------------------------------------------------------------------------------------------
# Operations


def test_prune_drops_dangling_node_and_its_edges():
    circuit = small_circuit()
    pruned = circuit.prune()
    assert "mlp_0/2" in circuit  # the original is untouched
    assert set(pruned.graph) == {"embed/3", "attn_0/ε", "mlp_0/7", "resid_0/1", "y"}
    assert ("embed/3", "mlp_0/2") not in pruned.edge_weights()
    assert pruned.num_edges == 4
    assert pruned.provenance == circuit.provenance


def test_prune_everything_is_allowed():
    nodes_only = Circuit.from_effects({"mlp_0/1": 1.0, "resid_0/ε": 0.2})
    pruned = nodes_only.prune()
    assert list(pruned.graph) == ["y"]
    summary = pruned.summary()
    assert summary["empty"] and summary["nodes"] == 0 and "no nodes" in summary["note"]
    assert "no nodes" in format_summary(summary)


def test_thresholds():
    circuit = small_circuit()
    nodes = circuit.threshold_nodes(0.3)  # keeps |effect| > 0.3: attn_0/ε, mlp_0/2, resid_0/1
    assert set(nodes.graph) == {"attn_0/ε", "mlp_0/2", "resid_0/1", "y"}
    assert nodes.edge_weights() == {("attn_0/ε", "resid_0/1"): -0.005, ("resid_0/1", "y"): 1.2}
    assert nodes.provenance["thresholds"] == {"node": 0.3}
    edges = circuit.threshold_edges(0.02)  # keeps |weight| > 0.02
    assert set(edges.graph) == set(circuit.graph)
    assert set(edges.edge_weights()) == {
        ("embed/3", "mlp_0/2"),
        ("mlp_0/7", "resid_0/1"),
        ("resid_0/1", "y"),
    }
    both = edges.threshold_nodes(0.1).prune()
    assert set(both.graph) == {"mlp_0/7", "resid_0/1", "y"}
    assert both.provenance["thresholds"] == {"edge": 0.02, "node": 0.1}
    assert edges.threshold_edges(0.01).provenance["thresholds"] == {"edge": 0.02}
    with pytest.raises(ValueError, match=">= 0"):
        circuit.threshold_nodes(-1)


def test_subgraph_keeps_y():
    sub = small_circuit().subgraph(["mlp_0/7", "resid_0/1"])
    assert set(sub.graph) == {"mlp_0/7", "resid_0/1", "y"}
    assert sub.num_edges == 2
    with pytest.raises(KeyError, match="mlp_5/1"):
        small_circuit().subgraph(["mlp_5/1"])


def test_views_and_summary():
    circuit = small_circuit()
    assert circuit.nodes_by_submodule() == {
        "embed": ["embed/3"],
        "attn_0": ["attn_0/ε"],
        "mlp_0": ["mlp_0/2", "mlp_0/7"],
        "resid_0": ["resid_0/1"],
    }
    assert circuit.top_nodes(2) == [("resid_0/1", 1.2), ("mlp_0/2", -0.9)]
    summary = circuit.summary(k=3)
    assert summary["nodes"] == 5 and summary["edges"] == 5 and not summary["empty"]
    assert summary["kinds"] == {"feature": 4, "error": 1}
    assert summary["submodules"]["embed"] == {
        "nodes": 1,
        "kinds": {"feature": 1},
        "edges_in": 0,
        "edges_out": 2,
    }
    assert summary["submodules"]["mlp_0"]["edges_in"] == 2
    assert summary["submodules"]["resid_0"] == {
        "nodes": 1,
        "kinds": {"feature": 1},
        "edges_in": 2,
        "edges_out": 1,
    }
    assert summary["edges_to_output"] == 1
    assert summary["total_effect"] == 2.5
    assert [row["name"] for row in summary["top_nodes"]] == ["resid_0/1", "mlp_0/2", "attn_0/ε"]
    json.dumps(summary)  # plain data for --json
    text = format_summary(summary)
    assert "resid_0/1" in text and "total effect" in text
    assert repr(circuit).startswith("Circuit(nodes=5, edges=5, submodules=[embed, attn_0")


# ------------------------------------------------------------------------------------------------
# Files


def test_json_round_trip(tmp_path):
    circuit = Circuit.from_effects(
        {"embed/3@0": 0.1, "mlp_0/ε@1": -1 / 3, "resid_1/2047@1": 1e-12},
        {
            ("embed/3@0", "mlp_0/ε@1"): 0.1 + 0.2,
            ("mlp_0/ε@1", "resid_1/2047@1"): -7.5e-8,
            ("resid_1/2047@1", "y"): 1e-12,
        },
        {**PROVENANCE, "aggregation": "none", "thresholds": {"node": 0.1, "edge": 0.01}},
    )
    circuit.graph.nodes["resid_1/2047@1"]["label"] = "plural subject"  # extras ride along
    path = circuit.save(tmp_path / "c.json")
    loaded = Circuit.load(path)
    assert loaded == circuit
    assert list(loaded.graph) == list(circuit.graph)
    assert dict(loaded.graph.nodes(data=True)) == dict(circuit.graph.nodes(data=True))
    assert loaded.edge_weights() == circuit.edge_weights()
    assert loaded.provenance == circuit.provenance
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == FORMAT and document["version"] == FORMAT_VERSION
    assert {"nodes", "edges"} <= set(document["graph"])
    assert "mlp_0/ε@1" in path.read_text(encoding="utf-8")  # ε written as itself


def _saved(tmp_path, edit):
    """Save the small circuit, apply ``edit`` to its JSON document, write it back."""
    path = small_circuit().save(tmp_path / "c.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _drop_y(document):
    graph = document["graph"]
    graph["nodes"] = [node for node in graph["nodes"] if node["id"] != "y"]
    graph["edges"] = [edge for edge in graph["edges"] if edge["target"] != "y"]


def _node(document, name):
    return next(node for node in document["graph"]["nodes"] if node["id"] == name)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format="networkx"), "format tag"),
        (lambda d: d.update(version=FORMAT_VERSION + 1), "upgrade"),
        (lambda d: d.update(version="1"), "unknown circuit file version"),
        (lambda d: _node(d, "mlp_0/7").pop("effect"), "lacks required attribute"),
        (lambda d: _node(d, "mlp_0/7").update(layer=3), "name says layer=0"),
        (lambda d: _node(d, "mlp_0/7").update(index=True), "name says index=7"),
        (lambda d: _node(d, "mlp_0/7").update(kind="error"), "kind 'error'"),
        (lambda d: _node(d, "mlp_0/7").update(effect="0.3"), "finite number"),
        (lambda d: d["graph"]["nodes"].append({"id": "mlp_0/7x"}), "malformed node name"),
        (lambda d: d["graph"]["edges"][0].update(weight=math.nan), "finite"),
        (lambda d: d["graph"]["edges"][0].update(target="mlp_9/1"), "unknown node"),
        (lambda d: d["graph"]["edges"].append(dict(d["graph"]["edges"][0])), "twice"),
        (lambda d: _drop_y(d), "needs the output node"),
    ],
)
def test_load_rejects(tmp_path, edit, match):
    path = _saved(tmp_path, edit)
    with pytest.raises(CircuitFormatError, match=match) as error:
        Circuit.load(path)
    assert str(path) in str(error.value)


def test_load_rejects_nan_written_as_json_extension(tmp_path):
    path = small_circuit().save(tmp_path / "c.json")
    text = path.read_text(encoding="utf-8").replace('"weight": 0.25', '"weight": NaN')
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CircuitFormatError, match="finite"):
        Circuit.load(path)


@pytest.mark.parametrize(
    "content", [b"", b"not json at all", b"\xff\xfe\x00garbage", b'{"format": "circuits.circ']
)
def test_load_rejects_non_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(CircuitFormatError, match="not valid UTF-8 JSON") as error:
        Circuit.load(path)
    assert str(path) in str(error.value)


def test_load_rejects_truncated_file(tmp_path):
    path = small_circuit().save(tmp_path / "c.json")
    text = path.read_bytes()
    path.write_bytes(text[: len(text) // 2])
    with pytest.raises(CircuitFormatError, match="truncated") as error:
        Circuit.load(path)
    assert "c.json" in str(error.value)


def test_constructor_validates_hand_built_graph():
    graph = nx.DiGraph()
    graph.add_node("mlp_0/1", submodule="mlp_0", layer=0, kind="feature", index=1, position=None)
    with pytest.raises(ValueError, match="effect"):
        Circuit(graph)
    graph.nodes["mlp_0/1"]["effect"] = 0.5
    assert Circuit(graph).num_nodes == 1
    graph.add_edge("mlp_0/1", "y", weight=0.5)  # y added without attributes
    with pytest.raises(ValueError, match="'y' lacks"):
        Circuit(graph)

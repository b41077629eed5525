"""Diagrams, annotations, exports and `circuits render`, on circuits small enough to read."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET

import networkx as nx
import pytest
from conftest import big_circuit, small_circuit

from circuits.cli import main
from circuits.graph import Circuit
from viz.annotations import (
    AnnotationFormatError,
    parse_annotations,
    read_annotations,
    write_annotations,
)
from viz.diagram import (
    NEGATIVE,
    POSITIVE,
    GraphvizMissing,
    diagram,
    render,
    repr_svg,
    signed_colour,
)
from viz.export import to_graphml_graph, to_neuronpedia, write_graphml

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")

SVG = "{http://www.w3.org/2000/svg}"


def positional_circuit() -> Circuit:
    effects = {"embed/3@0": 0.2, "attn_0/5@1": -0.4, "mlp_0/ε@1": 0.3, "resid_0/7@2": 1.0}
    edges = {
        ("embed/3@0", "attn_0/5@1"): 0.1,
        ("attn_0/5@1", "resid_0/7@2"): -0.3,
        ("mlp_0/ε@1", "resid_0/7@2"): 0.2,
        ("resid_0/7@2", "y"): 1.0,
    }
    return Circuit.from_effects(effects, edges)


def dot_nodes(source: str) -> dict[str, str]:
    """``{node id: attribute text}`` for the node statements of DOT source."""
    found = {}
    for line in source.splitlines():
        match = re.match(r'\s*"?([^"\s\[]+)"?\s*\[(.*)\]\s*$', line)
        if match and "->" not in line:
            found[match[1]] = match[2]
    return found


def svg_text(path) -> str:
    root = ET.parse(path).getroot()
    return " ".join(t.text or "" for t in root.iter(f"{SVG}text"))


@needs_dot
def test_svg_parses_and_shows_every_kept_node_label(tmp_path):
    circuit = small_circuit()
    notes = {"resid_0/7": "plural <subject> & verb", "attn_0/5": 'says "near"'}
    path = render(circuit, tmp_path / "c.svg", annotations=notes)
    text = svg_text(path)
    for name in circuit.graph:
        assert notes.get(name, name) in text
    for row in ("embed", "attn_0", "mlp_0", "resid_0", "resid_1"):
        assert row in text
    assert (tmp_path / "c.svg").read_text().count('<g id="node') >= circuit.num_nodes + 1


@needs_dot
@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_png_and_pdf(tmp_path, suffix, magic):
    path = render(small_circuit(), tmp_path / f"c{suffix}")
    assert path.read_bytes().startswith(magic)


def test_error_nodes_are_triangles_and_colours_follow_sign():
    circuit = small_circuit()
    nodes = dot_nodes(diagram(circuit).source)
    assert "shape=triangle" in nodes["mlp_0/ε"]
    for name in ("embed/3", "attn_0/5", "resid_0/7", "resid_1/2"):
        assert "shape=triangle" not in nodes[name]
    # The largest |effect| (1.0, positive) is full blue; -0.8 is 80% of the way to red.
    assert f'fillcolor="{POSITIVE}"' in nodes["resid_0/7"]
    red, intensity = signed_colour(-0.8, 1.0)
    assert intensity == pytest.approx(0.8) and f'fillcolor="{red}"' in nodes["resid_1/2"]
    assert signed_colour(-1.0, 1.0)[0] == NEGATIVE and signed_colour(0.0, 1.0)[0] == "#ffffff"
    r, g, b = (int(red[i : i + 2], 16) for i in (1, 3, 5))
    assert r > g and r > b  # negative is red
    edges = [line for line in diagram(circuit).source.splitlines() if "tooltip=" in line]
    positive_edge = next(line for line in edges if '"resid_0/7" -> y' in line)
    negative_edge = next(line for line in edges if '"attn_0/5" -> "resid_0/7"' in line)
    assert POSITIVE in positive_edge and NEGATIVE in negative_edge
    assert "penwidth=5.00" in positive_edge  # the largest |weight| gets the widest pen


def test_cap_keeps_top_nodes_and_says_how_many_were_left_out():
    source = diagram(small_circuit(), max_nodes=2).source
    nodes = dot_nodes(source)
    assert {"resid_0/7", "resid_1/2", "y"} <= set(nodes)
    assert not {"embed/3", "attn_0/5", "mlp_0/ε"} & set(nodes)
    assert "3 of 5 nodes not shown" in source and "top 2 by |effect|" in source
    assert "not shown" not in diagram(small_circuit(), max_nodes=5).source
    with pytest.raises(ValueError, match="positive integer"):
        diagram(small_circuit(), max_nodes=0)


@needs_dot
def test_cap_note_is_drawn(tmp_path):
    text = svg_text(render(small_circuit(), tmp_path / "c.svg", max_nodes=2))
    assert "3 of 5 nodes not shown" in text


@needs_dot
def test_positions_get_columns_and_tokens(tmp_path):
    circuit = positional_circuit()
    tokens = ["<bos>", "the", "teachers", "are"]
    text = svg_text(render(circuit, tmp_path / "p.svg", tokens=tokens))
    for p, token in enumerate(tokens):
        assert f"{p}: {token}" in text
    for name in circuit.graph:
        assert name in text
    with pytest.raises(ValueError, match="2 tokens given"):
        diagram(circuit, tokens=["<bos>", "the"])
    with pytest.raises(ValueError, match="keeps no positions"):
        diagram(small_circuit(), positions=True)
    assert "__cell__" not in diagram(circuit, positions=False).source


def test_missing_dot_writes_source_and_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(GraphvizMissing) as caught:
        render(small_circuit(), tmp_path / "c.svg")
    message = str(caught.value)
    assert "apt-get install graphviz" in message and "c.dot" in message
    assert caught.value.dot_path == tmp_path / "c.dot"
    assert "shape=triangle" in (tmp_path / "c.dot").read_text(encoding="utf-8")
    assert not (tmp_path / "c.svg").exists()


def test_notebook_svg(tmp_path, monkeypatch):
    if shutil.which("dot"):
        svg = repr_svg(small_circuit(), max_nodes=2)
        assert ET.fromstring(svg.encode()).tag == f"{SVG}svg" and "3 of 5 nodes" in svg
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert repr_svg(small_circuit()) is None  # Jupyter then shows the text repr


def test_missing_dot_from_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    path = small_circuit().save(tmp_path / "circuit.json")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["render", str(path), "-o", str(tmp_path / "c.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuits: error:") and "apt-get install graphviz" in err
    assert err.count("\n") == 1 and (tmp_path / "c.dot").exists()


def test_graphml_round_trip(tmp_path):
    circuit = small_circuit()
    path = write_graphml(circuit, tmp_path / "c.graphml", annotations={"resid_0/7": "plural"})
    back = nx.read_graphml(path)
    assert set(back.nodes) == set(circuit.graph.nodes)
    assert set(back.edges) == set(circuit.graph.edges)
    for u, v, weight in circuit.graph.edges(data="weight"):
        assert back.edges[u, v]["weight"] == pytest.approx(weight, abs=0, rel=1e-12)
    for name, attrs in circuit.graph.nodes(data=True):
        for key, value in attrs.items():
            assert back.nodes[name].get(key) == value  # None is written as "absent"
    assert back.nodes["resid_0/7"]["label"] == "plural"
    assert json.loads(back.graph["provenance_json"]) == circuit.provenance


def test_graphml_positions(tmp_path):
    circuit = positional_circuit()
    back = nx.read_graphml(write_graphml(circuit, tmp_path / "p.graphml"))
    assert back.nodes["attn_0/5@1"]["position"] == 1 and "position" not in back.nodes["y"]
    assert all(value is not None for _, data in back.nodes(data=True) for value in data.values())
    assert to_graphml_graph(circuit).number_of_edges() == circuit.num_edges


def test_neuronpedia_document():
    """Values per node; the schema itself is checked in tests/test_viz_export.py."""
    circuit = positional_circuit()
    doc = to_neuronpedia(circuit, annotations={"resid_0/7": "plural"}, tokens=["a", "b", "c"])
    assert set(doc) == {"metadata", "qParams", "nodes", "links"}
    nodes = {node["name"]: node for node in doc["nodes"]}
    assert set(nodes) == set(circuit.graph)
    assert nodes["embed/3@0"]["layer"] == "E" and nodes["embed/3@0"]["node_id"] == "E_3_0"
    assert nodes["mlp_0/ε@1"]["feature"] == -1
    assert nodes["mlp_0/ε@1"]["feature_type"] == "mlp reconstruction error"
    assert nodes["resid_0/7@2"]["clerp"] == "plural" and nodes["resid_0/7@2"]["ctx_idx"] == 2
    assert nodes["resid_0/7@2"]["effect"] == 1.0
    assert [nodes[n]["layer"] for n in ("attn_0/5@1", "mlp_0/ε@1", "resid_0/7@2", "y")] == [
        "1",
        "2",
        "3",
        "4",
    ]
    assert nodes["y"]["feature_type"] == "logit"
    name_of = {node["node_id"]: node["name"] for node in doc["nodes"]}
    links = {(name_of[ln["source"]], name_of[ln["target"]]): ln["weight"] for ln in doc["links"]}
    assert links == circuit.edge_weights()
    assert doc["metadata"]["prompt_tokens"] == ["a", "b", "c"]
    json.dumps(doc, allow_nan=False)


def test_annotations_round_trip(tmp_path):
    notes = {"resid_5/3036": "promotes singular verbs", "mlp_0/ε": "error", "attn_1/2@3": "ü"}
    path = write_annotations(notes, tmp_path / "a.jsonl")
    assert read_annotations(path) == notes
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"Name": "resid_5/3036", "Annotation": "promotes singular verbs"}
    extra = '{"Name": "resid_5/3036", "Annotation": "x", "Other": 1}\n\n'
    assert parse_annotations([extra]) == {"resid_5/3036": "x"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["resid_5/1"]', "expected a JSON object"),
        ('{"Annotation": "x"}', "string 'Name'"),
        ('{"Name": "resid_5/1"}', "string 'Annotation'"),
        ('{"Name": "resid5/1", "Annotation": "x"}', "malformed node name"),
        ('{"Name": "resid_5/1", "Annotation": "y"}', "annotated twice"),
    ],
)
def test_bad_annotation_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"Name": "resid_5/1", "Annotation": "x"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(AnnotationFormatError, match=message) as caught:
        read_annotations(path)
    assert f"{path}:2:" in str(caught.value)
    with pytest.raises(ValueError, match="malformed node name"):
        write_annotations({"nope": "x"}, tmp_path / "w.jsonl")


def test_render_cli_formats(tmp_path, capsys):
    path = small_circuit().save(tmp_path / "circuit.json")
    notes = write_annotations({"resid_0/7": "plural"}, tmp_path / "notes.jsonl")
    out = tmp_path / "c.graphml"
    assert main(["render", str(path), "-o", str(out), "--annotations", str(notes)]) == 0
    assert nx.read_graphml(out).nodes["resid_0/7"]["label"] == "plural"
    out = tmp_path / "np.json"
    assert main(["render", str(path), "-o", str(out)]) == 0
    assert {n["name"] for n in json.loads(out.read_text())["nodes"]} == set(small_circuit().graph)
    out = tmp_path / "c.dot"
    assert main(["render", str(path), "-o", str(out), "--max-nodes", "2"]) == 0
    assert "3 of 5 nodes not shown" in out.read_text(encoding="utf-8")
    assert main(["render", str(path), "-o", str(tmp_path / "c.txt")]) == 2
    assert "cannot tell the diagram format" in capsys.readouterr().err
    assert main(["render", str(path), "-o", str(tmp_path / "c.dot"), "--tokens", "a b"]) == 2
    assert "keeps no positions" in capsys.readouterr().err


@needs_dot
def test_render_cli_positions_and_tokens(tmp_path):
    path = positional_circuit().save(tmp_path / "circuit.json")
    out = tmp_path / "p.svg"
    tokens = '["<bos>", " the", " cat", " sat"]'
    assert main(["render", str(path), "-o", str(out), "--tokens", tokens]) == 0
    assert "3: ␣sat" in svg_text(out)


# -- large circuits: rows folded, relative edge filter, legend ------------------------------------


def test_rows_fold_into_more_nodes_with_summed_effects_and_edges():
    from viz.diagram import fold_rows

    circuit = big_circuit(rows=3, per_row=20)
    view, groups = fold_rows(circuit, 4)
    assert [len(names) for names in groups.values()] == [5, 5, 5]
    for row, names in groups.items():
        more = names[-1]
        assert more == f"{row}/+16" and view.nodes[more]["folded"] == 16
        kept = set(names[:-1])
        ranked = sorted(circuit.nodes_by_submodule()[row], key=lambda n: -abs(circuit.effect(n)))
        assert kept == set(ranked[:4])
        folded = [n for n in circuit.nodes_by_submodule()[row] if n not in kept]
        assert view.nodes[more]["effect"] == pytest.approx(sum(circuit.effect(n) for n in folded))
    # every edge's weight lands on the nodes its ends fold into, summed
    into = {n: n for n in view}
    for row, names in circuit.nodes_by_submodule().items():
        for n in names:
            into.setdefault(n, groups[row][-1])
    expected: dict[tuple[str, str], float] = {}
    for u, v, w in circuit.graph.edges(data="weight"):
        key = (into[u], into[v])
        expected[key] = expected.get(key, 0.0) + w
    assert {(u, v): w for u, v, w in view.edges(data="weight")} == pytest.approx(expected)
    assert fold_rows(circuit, None)[0].number_of_nodes() == circuit.num_nodes + 1  # and y


def test_strongest_incoming_keeps_the_smallest_set_carrying_the_share():
    from viz.diagram import strongest_incoming

    graph = nx.DiGraph()
    for source, weight in (("a", 0.5), ("b", -0.3), ("c", 0.15), ("d", 0.05)):
        graph.add_edge(source, "t", weight=weight)
    kept = lambda share: [s for s, _, _ in strongest_incoming(graph, share)]  # noqa: E731
    assert kept(0.5) == ["a"]
    assert kept(0.8) == ["a", "b"]
    assert kept(0.81) == ["a", "b", "c"]
    assert kept(1.0) == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="edge_share"):
        strongest_incoming(graph, 0)


@needs_dot
def test_a_thousand_node_circuit_renders_every_row_within_graphviz_limits(tmp_path):
    circuit = big_circuit()
    assert circuit.num_nodes == 1000
    path = render(circuit, tmp_path / "big.svg", edge_share=0.5)
    root = ET.parse(path).getroot()
    width = float(root.get("width").removesuffix("pt"))
    height = float(root.get("height").removesuffix("pt"))
    assert width < 4000 and height < 4000, (width, height)
    titles = {t.text for t in root.iter(f"{SVG}title")}
    for r in range(10):
        assert f"resid_{r}/+85" in titles  # 15 drawn per row, 85 folded
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "positive effect / weight" in text and "+N more" in text  # the legend
    assert "edges shown" in text
    png = render(circuit, tmp_path / "big.png")
    assert png.read_bytes().startswith(b"\x89PNG")

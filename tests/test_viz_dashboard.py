"""Dashboards on a tiny model, checked against direct computations (plain forwards, W_U · d)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import TINY_WORDS

from circuits.cli import main
from circuits.dictionaries import SAE, ReLU, load_dictionaries
from circuits.graph import Circuit
from circuits.models import load_model
from viz import dashboard as dashboard_module
from viz.dashboard import auto_labels, dashboard, dashboards, unit_direction
from viz.diagram import diagram
from viz.explorer import explorer_data


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir("gpt_neox")))


def make_corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = TINY_WORDS[4:]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(n)]


@pytest.fixture(scope="module")
def dictionaries(model):
    """Neurons everywhere, and a small random SAE (mostly active: b_enc > 0) at mlp_1."""
    found = load_dictionaries(model, "neurons")
    generator = torch.Generator().manual_seed(0)
    d, width = model.submodule("mlp_1").width, 16
    found["mlp_1"] = SAE(
        torch.randn(d, width, generator=generator) / d**0.5,
        torch.full((width,), 0.5),
        torch.randn(width, d, generator=generator),
        torch.zeros(d),
        ReLU(),
    )
    return found


def direct_maxima(model, dictionary, sub: str, index: int, corpus: list[str]):
    """(max, doc, position) per document, one plain forward per document (no batching)."""
    module = model.module(sub)
    captured = {}

    def hook(_module, _args, output):
        captured["x"] = output[0] if isinstance(output, tuple) else output

    rows = []
    for doc, text in enumerate(corpus):
        handle = module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                model.forward(model.tokenize([text]))
        finally:
            handle.remove()
        with torch.no_grad():
            acts = dictionary.encode(captured["x"])[0, :, index]  # [pos]
        position = int((acts == acts.max()).nonzero()[0])
        rows.append((acts.max().item(), doc, position))
    rows.sort(key=lambda row: (-row[0], row[1]))
    return rows


@pytest.mark.parametrize(
    "node, sub, index", [("resid_0/5", "resid_0", 5), ("mlp_1/3@2", "mlp_1", 3)]
)
def test_top_contexts_are_the_argmax_activations(model, dictionaries, node, sub, index):
    corpus = make_corpus(23, seed=1)
    board = dashboard(model, dictionaries, node, corpus, top_k=6, batch_size=5, before=3, after=2)
    truth = direct_maxima(model, dictionaries[sub], sub, index, corpus)[:6]
    got = [(ctx["max"], ctx["doc"], ctx["position"]) for ctx in board["contexts"]]
    assert [(doc, pos) for _, doc, pos in got] == [(doc, pos) for _, doc, pos in truth]
    assert [value for value, _, _ in got] == pytest.approx(
        [value for value, _, _ in truth], abs=1e-5
    )
    for ctx in board["contexts"]:
        at = ctx["position"] - ctx["start"]
        assert ctx["activations"][at] == pytest.approx(ctx["max"])
        assert max(ctx["activations"]) == pytest.approx(ctx["max"])
        ids = model.tokenize([corpus[ctx["doc"]]]).input_ids[0].tolist()
        words = [
            model.tokenizer.decode([i])
            for i in ids[ctx["start"] : ctx["start"] + len(ctx["tokens"])]
        ]
        assert [t.strip() for t in ctx["tokens"]] == words
    assert board["node"] == node.split("@")[0] and board["kind"] == (
        "neuron" if sub == "resid_0" else "feature"
    )
    assert sum(board["histogram"]["counts"]) > 0 and board["label"]
    tokens = sum(len(model.tokenize([text]).input_ids[0]) for text in corpus)
    assert board["corpus"]["tokens"] == tokens


@pytest.mark.parametrize("sub, index", [("resid_0", 5), ("mlp_1", 3)])
def test_promoted_tokens_are_the_unembedding_of_the_direction(model, dictionaries, sub, index):
    board = dashboard(model, dictionaries, f"{sub}/{index}", make_corpus(4, 2), top_k=2)
    dictionary = dictionaries[sub]
    direction = dictionary.W_dec[index] if sub == "mlp_1" else torch.eye(dictionary.width)[index]
    assert torch.allclose(unit_direction(dictionary, index), direction, atol=1e-6)
    logits = model.torch_model.get_output_embeddings().weight @ direction  # [vocab]
    top = logits.topk(10)
    assert [row["id"] for row in board["promoted"]] == top.indices.tolist()
    assert [row["value"] for row in board["promoted"]] == pytest.approx(
        top.values.tolist(), abs=1e-5
    )
    bottom = (-logits).topk(10)
    assert [row["id"] for row in board["suppressed"]] == bottom.indices.tolist()
    assert [row["value"] for row in board["suppressed"]] == pytest.approx(
        (-bottom.values).tolist(), abs=1e-5
    )
    assert board["promoted"][0]["token"] == model.tokenizer.decode([top.indices[0].item()])


def test_cache_hit_returns_identical_data(model, dictionaries, tmp_path, monkeypatch):
    corpus = make_corpus(8, seed=3)
    nodes = ["resid_0/5", "mlp_1/3"]
    first = dashboards(model, dictionaries, nodes, corpus, top_k=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2

    def no_compute(*args, **kwargs):
        raise AssertionError("a cache hit must not run the model")

    with monkeypatch.context() as patch:
        patch.setattr(dashboard_module, "_compute", no_compute)
        again = dashboards(model, dictionaries, nodes, corpus, top_k=3, cache_dir=tmp_path)
    assert again == first and json.dumps(again) == json.dumps(first)
    fresh = dashboards(model, dictionaries, nodes, corpus, top_k=3, cache_dir=None)
    assert fresh == first
    dashboards(model, dictionaries, nodes[:1], make_corpus(8, seed=4), top_k=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 3  # another corpus, another key


def test_the_cache_key_covers_every_weight(model, dictionaries, tiny_model_dir, tmp_path):
    """A copy whose layer weights (not its embeddings) differ gets its own dashboards."""
    corpus, nodes = make_corpus(8, seed=3), ["resid_1/5"]
    first = dashboards(model, dictionaries, nodes, corpus, top_k=3, cache_dir=tmp_path)
    other = load_model(str(tiny_model_dir("gpt_neox")))
    with torch.no_grad():
        other.torch_model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.mul_(3.0)
    second = dashboards(other, dictionaries, nodes, corpus, top_k=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert second != first
    assert second == dashboards(other, dictionaries, nodes, corpus, top_k=3, cache_dir=None)


def test_errors_and_labels(model, dictionaries):
    corpus = make_corpus(4, 5)
    with pytest.raises(ValueError, match="error node"):
        dashboard(model, dictionaries, "mlp_1/ε", corpus)
    with pytest.raises(ValueError, match="out of range"):
        dashboard(model, dictionaries, "mlp_1/99", corpus)
    with pytest.raises(ValueError, match="empty"):
        dashboard(model, dictionaries, "mlp_1/1", [])
    boards = dashboards(model, dictionaries, ["mlp_1/3", "resid_0/5"], corpus, top_k=2)
    labels = auto_labels(boards)
    assert set(labels) == {"mlp_1/3", "resid_0/5"} and all(labels.values())
    circuit = Circuit.from_effects({"mlp_1/3": 1.0, "resid_0/5": -0.5}, {("mlp_1/3", "y"): 1.0})
    source = diagram(circuit, labels=labels, annotations={"resid_0/5": "annotated"}).source
    assert labels["mlp_1/3"].split()[0] in source and "annotated" in source
    assert '"mlp_1/3" [label="mlp_1/3"' not in source  # the automatic label replaced the name
    data = explorer_data(circuit, dashboards=boards)
    nodes = {node["name"]: node for node in data["nodes"]}
    assert nodes["mlp_1/3"]["label"] == labels["mlp_1/3"]
    assert nodes["mlp_1/3"]["dashboard"]["contexts"] == boards["mlp_1/3"]["contexts"]


def test_dashboard_cli(tiny_model_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(6, 7)) + "\n", encoding="utf-8")
    common = [
        "dashboard",
        "resid_1/4",
        "--model",
        str(tiny_model_dir("gpt_neox")),
        "--dictionaries",
        "neurons",
        "--corpus",
        str(corpus),
        "--contexts",
        "2",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(common + ["--json"]) == 0
    boards = json.loads(capsys.readouterr().out)
    assert list(boards) == ["resid_1/4"] and len(boards["resid_1/4"]["contexts"]) == 2
    assert boards["resid_1/4"]["corpus"]["docs"] == 6
    assert main(common + ["-o", str(tmp_path / "d.html")]) == 0
    page = (tmp_path / "d.html").read_text(encoding="utf-8")
    assert "Top contexts" in page and "<script" not in page
    assert main(common + ["-o", str(tmp_path / "d.json"), "--no-cache"]) == 0
    assert json.loads((tmp_path / "d.json").read_text()) == boards
    circuit = Circuit.from_effects({"resid_1/4": 1.0}, {("resid_1/4", "y"): 1.0})
    path = circuit.save(tmp_path / "circuit.json")
    out = tmp_path / "c.dot"
    assert (
        main(["render", str(path), "-o", str(out), "--dashboards", str(tmp_path / "d.json")]) == 0
    )
    assert boards["resid_1/4"]["label"].split()[0] in out.read_text(encoding="utf-8")
    assert main(common[:1] + ["resid_1/ε"] + common[2:]) == 2
    assert "error node" in capsys.readouterr().err


def test_submodules_that_do_not_write_the_residual_stream(tiny_model_dir):
    gemma = load_model(str(tiny_model_dir("gemma2")))
    neurons = load_dictionaries(gemma, "neurons")
    corpus = make_corpus(3, 8)
    boards = dashboards(gemma, neurons, ["attn_0/3", "mlp_0/3"], corpus, top_k=2)
    assert gemma.submodule("attn_0").width != gemma.d_model  # read before o_proj
    assert (
        boards["attn_0/3"]["promoted"] is None
        and "no output tokens" in (boards["attn_0/3"]["logits_note"])
    )
    assert len(boards["attn_0/3"]["contexts"]) == 2
    assert len(boards["mlp_0/3"]["promoted"]) == 10


def test_embed_units_and_circuit_nodes_from_the_cli(model, tiny_model_dir, tmp_path, capsys):
    neurons = load_dictionaries(model, "neurons")
    assert dashboard(model, neurons, "embed/2", make_corpus(3, 9), top_k=1)["kind"] == "embed"
    circuit = Circuit.from_effects(
        {"resid_0/1@1": 0.5, "resid_0/1@2": 0.2, "mlp_1/ε@2": 0.1, "resid_1/3@2": 1.0},
        {("resid_0/1@1", "resid_1/3@2"): 0.3, ("resid_1/3@2", "y"): 1.0},
        {"dictionaries": "neurons"},
    )
    path = circuit.save(tmp_path / "circuit.json")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(4, 10)), encoding="utf-8")
    model_dir = str(tiny_model_dir("gpt_neox"))
    args = ["dashboard", "--circuit", str(path), "--model", model_dir, "--dictionaries"]
    args += ["neurons", "--corpus", str(corpus), "--no-cache", "--json", "--contexts", "1"]
    assert main(args) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"resid_0/1", "resid_1/3"}

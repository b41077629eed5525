"""Remote execution: every trace-built method under nnsight's dry run equals its local run.

``load_model(..., remote="local")`` sends each trace through nnsight's remote path without a
server: serialised as for NDIF, deserialised with this package's modules hidden, then run. Each
test counts the traces that went that way, so a method that silently ran locally would fail.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.tracing.util import push

from attribution import edge_effects, node_effects
from circuits import load_model
from circuits.dictionaries import load_dictionaries
from circuits.edit import Ablate, Clamp, Steer, edited
from circuits.evaluate import Evaluator
from circuits.probes import pooled_activations, pooled_features, probe_effects, train_probe
from circuits.tasks import LabelledText, load_task
from masks import train_mask
from viz.dashboard import dashboards


@pytest.fixture(scope="module")
def pairs():
    return load_task("sva-rc", split="train").pairs[:8]


@pytest.fixture(scope="module")
def models():
    """``{remote: (model, dictionaries)}`` for a local and a dry-run-remote zoo model."""
    out = {}
    for remote in (False, "local"):
        model = load_model("zoo", remote=remote)
        out[remote] = (model, load_dictionaries(model, "zoo"))
    return out


@pytest.fixture
def sent(monkeypatch):
    """The number of traces that took the remote path, counted as they are sent.

    Each trace's results come back as a server's would: ``torch.save``\\ d and loaded, so a
    tensor that was attached to an autograd graph comes back without it (in-process, the dry
    run would otherwise hand the graph over, and a backward after the trace would work here
    but not on NDIF).
    """
    calls = []
    real = LocalSimulationBackend.__call__

    def as_a_server_would(self, tracer):
        calls.append(tracer)
        out = real(self, tracer)
        frame = tracer.info.frame
        attached = {k: v for k, v in frame.f_locals.items() if _has_graph(v)}
        if attached:
            buffer = io.BytesIO()
            torch.save(attached, buffer)
            buffer.seek(0)
            push(frame, torch.load(buffer, weights_only=False))
        return out

    monkeypatch.setattr(LocalSimulationBackend, "__call__", as_a_server_would)
    return calls


def _has_graph(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.grad_fn is not None
    if isinstance(value, dict):
        return any(_has_graph(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_graph(v) for v in value)
    return False


def _both(models, run):
    return run(*models[False]), run(*models["local"])


@pytest.mark.parametrize("method", ["atp", "ig", "ig-joint"])
def test_node_effects_equal_their_local_run(models, pairs, sent, method):
    here, there = _both(
        models, lambda m, d: node_effects(m, d, pairs, method=method, progress=False)
    )
    assert sent, "no trace went through the remote path"
    for sub in here.effects:
        assert torch.equal(here.effects[sub].features, there.effects[sub].features)
        assert torch.equal(here.effects[sub].error, there.effects[sub].error)


def test_edges_and_evaluation_equal_their_local_run(models, pairs, sent):
    def run(model, dictionaries):
        effects = node_effects(model, dictionaries, pairs, method="atp", progress=False)
        named = effects.nodes()
        nodes = sorted(named, key=lambda n: -abs(named[n]))[:30]
        edges = edge_effects(model, dictionaries, pairs, nodes, effects=effects, progress=False)
        evaluation = Evaluator(model, dictionaries, pairs).evaluate(nodes)
        return edges, (evaluation.faithfulness, evaluation.completeness)

    (edges_here, scores_here), (edges_there, scores_there) = _both(models, run)
    assert sent
    assert edges_here == edges_there and scores_here == scores_there


def test_dashboards_equal_their_local_run(models, sent):
    docs = ["The teachers that the girl sees are tired .", "She said that he is kind ."]
    here, there = _both(models, lambda m, d: dashboards(m, d, ["resid_1/7", "mlp_0/3"], docs))
    assert sent and here == there


def test_each_batch_of_attribution_is_one_request(models, pairs, sent):
    model, dictionaries = models["local"]
    effects = node_effects(model, dictionaries, pairs, method="ig", batch_size=4, progress=False)
    assert len(sent) == 2  # two batches; each one session holding its clean, patch and IG traces
    named = effects.nodes()
    nodes = sorted(named, key=lambda n: -abs(named[n]))[:10]
    sent.clear()
    edge_effects(model, dictionaries, pairs, nodes, effects=effects, batch_size=4, progress=False)
    assert len(sent) == 2


def test_edits_forwards_generation_and_probes_equal_their_local_run(models, sent):
    texts = [LabelledText(t, {}) for t in ["The cat sleeps .", "She said that he is kind ."]]
    edits = [Ablate(["resid_0/3", "mlp_1/ε"]), Clamp("attn_1/5", 2.0), Steer("resid_1/7", 3.0)]

    def run(model, dictionaries):
        batch = model.tokenize([texts[1].text])
        with torch.no_grad(), edited(model, dictionaries, edits):
            logits = model.forward(batch)
            tokens = model.generate(batch, max_new_tokens=4)
            pooled = pooled_features(model, dictionaries, texts, ["resid_0", "resid_2"])
        probe = train_probe(pooled_activations(model, texts, 2), torch.tensor([0.0, 1.0]))
        effects = probe_effects(model, dictionaries, texts, probe, 2)
        return logits, tokens, pooled, effects

    here, there = _both(models, run)
    assert sent
    assert torch.equal(here[0], there[0]) and torch.equal(here[1], there[1])
    assert all(torch.equal(here[2][k], there[2][k]) for k in here[2])
    assert here[3] == there[3] and any(here[3].values())


def test_mask_training_refuses_a_remote_model(models):
    model, dictionaries = models["local"]
    with pytest.raises(ValueError, match="train the mask on a model loaded without remote"):
        train_mask(model, dictionaries, "sva-rc", steps=1)
    with pytest.raises(ValueError, match="remote must be"):
        load_model("zoo", remote="nowhere")


def test_the_commands_run_through_the_remote_path(tmp_path, sent, capsys):
    from circuits.cli import main

    outs = {}
    for name, extra in (("here", []), ("there", ["--remote", "local"])):
        out = tmp_path / name
        args = ["discover", "--task", "sva-rc", "--n", "8", "--out", str(out), "--no-progress"]
        assert main(args + extra) == 0
        outs[name] = json.loads((out / "circuit.json").read_text())["graph"]
        assert main(["evaluate", str(out), "--task", "sva-rc", "--n", "8", *extra]) == 0
    assert sent and outs["here"] == outs["there"]
    sent.clear()
    capsys.readouterr()
    printed = []
    for extra in ([], ["--remote", "local"]):
        ablate = ["ablate", "--nodes", str(tmp_path / "here"), "--prompt", "The cats that the dog",
                  "--ablation", "mean", "--json", *extra]  # fmt: skip
        assert main(ablate) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert sent and printed[0] == printed[1] and printed[0]["total_variation"] > 0

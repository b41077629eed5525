"""Remote execution: every trace-built method under nnsight's dry run equals its local run.

``load_model(..., remote="local")`` sends each trace through nnsight's remote path without a
server: serialised as for NDIF, deserialised with this package's modules hidden, then run. Each
test counts the traces that went that way, so a method that silently ran locally would fail.
"""

from __future__ import annotations

import json

import pytest
import torch
from nnsight.intervention.backends.local import LocalSimulationBackend

from attribution import edge_effects, node_effects
from circuits import load_model
from circuits.dictionaries import load_dictionaries
from circuits.evaluate import Evaluator
from circuits.tasks import load_task
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
    """The number of traces that took the remote path, counted as they are sent."""
    calls = []
    real = LocalSimulationBackend.__call__

    def counting(self, tracer):
        calls.append(tracer)
        return real(self, tracer)

    monkeypatch.setattr(LocalSimulationBackend, "__call__", counting)
    return calls


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


def test_plain_forwards_refuse_to_run_remotely(models):
    model, _ = models["local"]
    with pytest.raises(ValueError, match="cannot run remotely"):
        model.forward(model.tokenize(["The cat"]))
    with pytest.raises(ValueError, match="remote must be"):
        load_model("zoo", remote="nowhere")


def test_the_commands_run_through_the_remote_path(tmp_path, sent):
    from circuits.cli import main

    outs = {}
    for name, extra in (("here", []), ("there", ["--remote", "local"])):
        out = tmp_path / name
        args = ["discover", "--task", "sva-rc", "--n", "8", "--out", str(out), "--no-progress"]
        assert main(args + extra) == 0
        outs[name] = json.loads((out / "circuit.json").read_text())["graph"]
        assert main(["evaluate", str(out), "--task", "sva-rc", "--n", "8", *extra]) == 0
    assert sent and outs["here"] == outs["there"]

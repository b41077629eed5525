"""`discover` and ``circuits discover``: kept nodes, pruning, provenance, files, errors.

Truths used here: the circuit is rebuilt independently from `node_effects` and `edge_effects`
(threshold, then the ancestors of ``y`` in a plain networkx graph), and top-k sets are read off
the sorted node effects. Models are conftest's tiny random GPT-NeoX, with random ReLU SAEs of
different widths or with neurons.
"""

from __future__ import annotations

import json

import networkx as nx
import pytest
from conftest import PAIRS, SAME_LENGTH_PAIRS, WIDTHS, random_saes

from attribution import discover, edge_effects, node_effects, select_nodes
from circuits.cli import main
from circuits.dictionaries import load_dictionaries
from circuits.graph import OUTPUT, Circuit
from circuits.models import load_model
from circuits.tasks import PromptPair, load_task

FAST = {"method": "ig", "steps": 3, "batch_size": 2, "progress": False}


def write_task(path, pairs=PAIRS):
    with open(path, "w") as handle:
        for pair in pairs:
            record = {
                "clean_prefix": pair.clean_prefix,
                "patch_prefix": pair.patch_prefix,
                "clean_answer": pair.clean_answer,
                "patch_answer": pair.patch_answer,
            }
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def neox(tiny_model_dir):
    return load_model(tiny_model_dir("gpt_neox"))


@pytest.fixture(scope="module", params=["saes", "neurons"])
def dictionaries(request, neox):
    if request.param == "neurons":
        return load_dictionaries(neox, "neurons")
    return random_saes(neox, WIDTHS)


def kth_largest(effects: dict[str, float], k: int) -> float:
    """A threshold just below the ``k``-th largest |effect| (so ``k`` nodes pass it)."""
    values = sorted((abs(v) for v in effects.values()), reverse=True)
    return (values[k - 1] + values[k]) / 2


def test_nodes_are_those_above_threshold_with_a_path_to_y(neox, dictionaries):
    effects = node_effects(neox, dictionaries, PAIRS, **FAST)
    all_nodes = effects.nodes()
    node_t = kth_largest(all_nodes, 16)
    above = {n: e for n, e in all_nodes.items() if abs(e) > node_t}
    weights = edge_effects(neox, dictionaries, PAIRS, above, effects=effects, progress=False)
    edge_t = sorted(abs(w) for w in weights.values())[len(weights) // 2]
    graph = nx.DiGraph([pair for pair, w in weights.items() if abs(w) > edge_t])
    reach = nx.ancestors(graph, OUTPUT) if OUTPUT in graph else set()

    circuit = discover(
        neox, dictionaries, PAIRS, node_threshold=node_t, edge_threshold=edge_t, **FAST
    )

    assert set(circuit.graph) - {OUTPUT} == reach
    assert 0 < len(reach) < len(above)  # something kept, something pruned
    for name in reach:
        assert circuit.effect(name) == pytest.approx(above[name], abs=1e-6)
    assert circuit.edge_weights() == pytest.approx(
        {(u, v): w for (u, v), w in weights.items() if u in reach and abs(w) > edge_t}, abs=1e-6
    )
    assert circuit.provenance["nodes_kept"] == 16
    neurons = all(type(d).__name__ == "Identity" for d in dictionaries.values())
    kinds = {circuit.graph.nodes[n]["kind"] for n in reach}
    assert kinds <= ({"neuron", "embed"} if neurons else {"feature", "error"})


def test_top_k_keeps_k_nodes_before_pruning(neox, dictionaries):
    effects = node_effects(neox, dictionaries, PAIRS, **FAST).nodes()
    ranked = sorted(effects, key=lambda n: -abs(effects[n]))

    unpruned = discover(neox, dictionaries, PAIRS, top_k=7, edges=False, **FAST)
    assert set(unpruned.graph) - {OUTPUT} == set(ranked[:7])
    assert unpruned.num_edges == 0
    assert unpruned.provenance["thresholds"]["node"] is None

    pruned = discover(neox, dictionaries, PAIRS, top_k=7, edge_threshold=0.0, **FAST)
    assert pruned.provenance["nodes_kept"] == 7
    assert set(pruned.graph) - {OUTPUT} <= set(ranked[:7])

    # Threshold and top_k together: the top k among the nodes above the threshold.
    both = discover(
        neox, dictionaries, PAIRS, top_k=7, node_threshold=kth_largest(effects, 3), edges=False,
        **FAST,
    )  # fmt: skip
    assert set(both.graph) - {OUTPUT} == set(ranked[:3])


def test_given_nodes_are_kept_exactly_with_their_effects_and_edges(neox, dictionaries):
    effects = node_effects(neox, dictionaries, PAIRS, **FAST)
    every = effects.nodes()
    given = sorted(every, key=lambda n: abs(every[n]))[:5]  # the five weakest: pruning would cut
    weights = edge_effects(
        neox, dictionaries, PAIRS, {n: every[n] for n in given}, effects=effects, progress=False
    )

    circuit = discover(neox, dictionaries, PAIRS, nodes=given, edge_threshold=0.0, **FAST)

    assert set(circuit.graph) == {*given, OUTPUT}
    for name in given:
        assert circuit.effect(name) == pytest.approx(every[name], abs=1e-6)
    assert circuit.edge_weights() == pytest.approx(
        {pair: w for pair, w in weights.items() if abs(w) > 0.0}, abs=1e-6
    )
    with pytest.raises(ValueError, match="not both"):
        discover(neox, dictionaries, PAIRS, nodes=given, top_k=3, **FAST)
    with pytest.raises(ValueError, match=r"were not attributed.*positions"):
        discover(neox, dictionaries, PAIRS, nodes=["resid_0/1@2"], **FAST)
    with pytest.raises(ValueError, match="were not attributed"):
        discover(neox, dictionaries, PAIRS, nodes=["resid_0/99999"], **FAST)


def test_select_nodes_orders_ties_and_skips_zero_effects():
    effects = {"a/0": 0.5, "b/1": -0.5, "c/2": 0.0, "d/3": 0.2}
    assert select_nodes(effects, threshold=None, top_k=1) == {"a/0": 0.5}
    assert select_nodes(effects, threshold=0.3, top_k=None) == {"a/0": 0.5, "b/1": -0.5}
    assert list(select_nodes(effects, threshold=None, top_k=10)) == ["a/0", "b/1", "d/3"]


def test_provenance_and_json_round_trip(neox, tmp_path):
    task = load_task(write_task(tmp_path / "agree.jsonl"), n=4)
    circuit = discover(
        neox,
        random_saes(neox, WIDTHS),
        task,
        top_k=10,
        edge_threshold=0.0,
        **{**FAST, "method": "atp"},
    )
    p = circuit.provenance
    assert p["model"] == str(neox.torch_model.name_or_path)
    assert p["dictionaries"]["resid_1"] == "SAE(48)"
    assert (p["task"], p["task_source"], p["split"], p["n_examples"]) == (
        "agree",
        str(tmp_path / "agree.jsonl"),
        "file",
        4,
    )
    assert (p["method"], p["metric"], p["aggregation"], p["steps"]) == (
        "atp",
        "logit_diff",
        "sum",
        None,
    )
    assert p["thresholds"] == {"node": None, "edge": 0.0} and p["top_k"] == 10
    assert p["total_effect"] == pytest.approx(circuit.effect(OUTPUT))
    assert p["circuits_version"] and p["created"]

    loaded = Circuit.load(circuit.save(tmp_path / "circuit.json"))
    assert loaded == circuit
    assert loaded.num_nodes > 0 and loaded.num_edges > 0


def test_positions_and_zero_ablation(neox):
    same_length = [
        PromptPair("the teachers near the desk", " are", "the teacher near the desk", " is"),
        PromptPair("the doctors by the mat", " were", "the doctor by the mat", " was"),
    ]
    saes = random_saes(neox, WIDTHS)
    circuit = discover(
        neox, saes, same_length, aggregation="none", top_k=12, edge_threshold=0.0, **FAST
    )
    assert circuit.num_nodes > 0
    assert all("@" in name for name in circuit.graph if name != OUTPUT)

    ablation = [PromptPair(p.clean_prefix, p.clean_answer) for p in PAIRS[:3]]
    zero = discover(neox, random_saes(neox, WIDTHS), ablation, top_k=5, edges=False, **FAST)
    assert zero.provenance["metric"] == "answer_logprob"
    assert zero.provenance["total_effect"] is None and zero.effect(OUTPUT) == 0.0
    assert zero.num_nodes == 5


def test_empty_circuit_is_a_circuit(neox):
    circuit = discover(neox, random_saes(neox, WIDTHS), PAIRS, node_threshold=1e6, **FAST)
    assert list(circuit.graph) == [OUTPUT]
    summary = circuit.summary()
    assert summary["empty"] and "no nodes" in summary["note"]
    assert circuit.provenance["nodes_kept"] == 0


def test_bad_options_say_what_is_wrong(neox):
    saes = random_saes(neox, WIDTHS)
    with pytest.raises(ValueError, match="top_k"):
        discover(neox, saes, PAIRS, top_k=0, **FAST)
    with pytest.raises(ValueError, match="node_threshold"):
        discover(neox, saes, PAIRS, node_threshold=-1.0, **FAST)
    with pytest.raises(ValueError, match="unknown method"):
        discover(neox, saes, PAIRS, method="magic", progress=False)


# ------------------------------------------------------------------------------------------------
# The command


def test_cli_discover_end_to_end(tiny_model_dir, sae_dir, tmp_path, capsys):
    model = str(tiny_model_dir("gpt_neox"))
    task = str(write_task(tmp_path / "agree.jsonl"))
    out = tmp_path / "run"
    common = ["discover", "--task", task, "--model", model, "--steps", "3", "--batch-size", "2"]
    picks = ["--top-k", "12", "--edge-threshold", "0"]

    assert main([*common, *picks, "--dictionaries", str(sae_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    circuit = Circuit.load(out / "circuit.json")
    assert text.startswith(f"circuit: {circuit.num_nodes} nodes, {circuit.num_edges} edges")
    assert "top nodes by |effect|:" in text and "wall time:" in text
    assert circuit.provenance["dictionaries"] == str(sae_dir)
    assert circuit.provenance["model"] == model

    # --json: stdout is the summary alone; progress bars go to stderr.
    assert main([*common, *picks, "--dictionaries", "neurons", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    circuit = Circuit.load(out / "circuit.json")
    assert summary["nodes"] == circuit.num_nodes and summary["edges"] == circuit.num_edges
    assert summary["provenance"]["dictionaries"] == "neurons"
    assert summary["file"] == str(out / "circuit.json") and summary["wall_time_s"] > 0
    assert "node effects" in captured.err  # tqdm

    # Nothing above the threshold: an empty circuit, and a hint.
    empty = ["--node-threshold", "1e6", "--no-progress", "--dictionaries", "neurons"]
    assert main([*common, *empty, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "holds no nodes besides the output node y" in text and "--node-threshold" in text


def test_cli_bad_inputs(tiny_model_dir, tmp_path, capsys):
    model = str(tiny_model_dir("gpt_neox"))
    out = ["--model", model, "--dictionaries", "neurons", "--out", str(tmp_path / "o")]
    capsys.readouterr()  # the fixture's own output, when it built the model just now

    assert main(["discover", "--task", "no-such-task", *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuits: error: unknown task 'no-such-task'") and "Traceback" not in err

    task = str(write_task(tmp_path / "t.jsonl"))
    with pytest.raises(SystemExit) as exit_info:
        main(["discover", "--task", task, "--method", "magic", *out])
    assert exit_info.value.code == 2
    assert "invalid choice: 'magic'" in capsys.readouterr().err

    uneven = [PromptPair("the teachers near the desk", " are", "the teacher near", " is")]
    bad = str(write_task(tmp_path / "uneven.jsonl", uneven))
    assert main(["discover", "--task", bad, "--no-progress", *out]) == 2
    err = capsys.readouterr().err  # --no-progress: not even the weight-loading bar before it
    assert err.startswith("circuits: error:") and "Traceback" not in err
    assert "pair 1: clean prefix has 5 tokens, patch prefix 3" in err
    assert not (tmp_path / "o" / "circuit.json").exists()

    same = [PromptPair("the teachers near the desk", " are", "the teachers near the desk", " is")]
    task = str(write_task(tmp_path / "same.jsonl", same))
    assert main(["discover", "--task", task, "--no-eval", "--no-progress", *out]) == 0
    text = capsys.readouterr().out
    assert "no effect to explain" in text and "lower --node-threshold" not in text


def test_cli_evaluate_warns_when_positions_come_from_another_task(tiny_model_dir, tmp_path, capsys):
    from circuits.graph import Circuit

    model_dir = str(tiny_model_dir("gpt_neox"))
    task = str(write_task(tmp_path / "same.jsonl", SAME_LENGTH_PAIRS))
    run = ["--task", task, "--model", model_dir, "--dictionaries", "neurons"]
    for found_on, warned in (("another-task", True), ("same", False)):
        circuit = Circuit.from_effects({"resid_0/3@1": 0.5}, {("resid_0/3@1", "y"): 0.5})
        circuit.provenance["task"] = found_on
        circuit.save(tmp_path / "c.json")
        assert main(["evaluate", str(tmp_path / "c.json"), *run]) == 0
        err = capsys.readouterr().err
        assert ("token positions of 'another-task'" in err) == warned, err


def test_cli_evaluate_matches_the_library(tiny_model_dir, tmp_path, capsys):
    from circuits.evaluate import Evaluator

    model_dir = str(tiny_model_dir("gpt_neox"))
    task = str(write_task(tmp_path / "agree.jsonl"))
    out = tmp_path / "run"
    run = ["--task", task, "--model", model_dir, "--dictionaries", "neurons", "--batch-size", "2"]
    assert (
        main(["discover", *run, "--top-k", "12", "--edge-threshold", "0", "--out", str(out)]) == 0
    )
    capsys.readouterr()
    circuit_file = str(out / "circuit.json")
    plot = tmp_path / "curve.png"
    assert (
        main(["evaluate", circuit_file, *run, "--sizes", "3", "6", "--plot", str(plot), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["plot"] == str(plot) and plot.read_bytes().startswith(b"\x89PNG")

    model = load_model(model_dir)
    evaluator = Evaluator(model, load_dictionaries(model, "neurons"), load_task(task), batch_size=2)
    direct = evaluator.evaluate(Circuit.load(circuit_file))
    assert result["faithfulness"] == pytest.approx(direct.faithfulness, abs=1e-6)
    assert result["completeness"] == pytest.approx(direct.completeness, abs=1e-6)
    assert [p["size"] for p in result["curve"]] == [3, 6]
    assert main(["evaluate", circuit_file, *run]) == 0
    assert capsys.readouterr().out.startswith(f"faithfulness {direct.faithfulness:.3f}")


def test_cli_scores_the_circuit_on_held_out_pairs(tmp_path, capsys):
    from circuits.evaluate import Evaluator
    from circuits.tasks import ZOO_TASKS

    out = tmp_path / "o"
    args = ["discover", "--task", "sva-rc", "--n", "8", "--dictionaries", "neurons"]
    args += ["--method", "atp", "--top-k", "30", "--no-edges", "--no-progress", "--out", str(out)]
    assert main([*args, "--json"]) == 0
    score = json.loads(capsys.readouterr().out)["evaluation"]
    assert (score["task"], score["split"], score["held_out"]) == ("sva-rc", "test", True)
    assert (score["protocol"], score["first_layers_intact"], score["n_examples"]) == ("sfc", 1, 8)
    saved = Circuit.load(out)
    assert saved.provenance["evaluation"] == score
    # The same numbers as scoring the saved circuit anew on the test pairs.
    model = load_model("zoo")
    again = Evaluator(model, load_dictionaries(model, "neurons"), load_task("sva-rc", "test", n=8))
    result = again.evaluate(saved)
    assert score["faithfulness"] == pytest.approx(result.faithfulness, abs=1e-9)
    assert score["completeness"] == pytest.approx(result.completeness, abs=1e-9)

    assert main([*args, "--protocol", "strict", "--eval-n", "4"]) == 0
    text = capsys.readouterr().out
    assert "scored on 4 sva-rc test pairs: faithfulness" in text and "nothing intact" in text
    assert main([*args, "--no-eval", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evaluation"] is None

    own = str(ZOO_TASKS / "sva-rc" / "train.jsonl")  # a file: no held-out split of its own
    assert main(["discover", "--task", own, *args[3:]]) == 0
    assert "(the pairs it was found on; give --eval-task)" in capsys.readouterr().out

"""Learned masks, checked against truths known in advance.

Truths used here: a model whose logits read only two coordinates of ``resid_1`` (final norm
removed, every other column of the unembedding zeroed), so with neurons of ``resid_1`` as nodes a
faithful mask must keep exactly those two; the ablation engine itself (a soft-gated run with 0/1
gates must give `run_ablated`'s logits); the hard-concrete formulas worked out by hand; and an
uninterrupted run that a resumed one must reproduce bit for bit.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PAIRS, build_tiny_model, make_tiny_tokenizer, random_saes

import masks.train
from attribution import edge_effects, node_effects
from circuits.ablation import ablation_values, keep_nodes, run_ablated
from circuits.cli import main
from circuits.dictionaries import Identity
from circuits.evaluate import evaluate
from circuits.graph import Circuit
from circuits.models import load_model
from circuits.tasks import PromptPair
from masks import HardConcreteGates, SigmoidGates, mask_circuit, run_gated, train_mask
from masks.gates import BETA, GAMMA, ZETA

READ = (3, 7)  # the coordinates of resid_1 the two-node model's logits read
SUBMODULES = ["attn_0", "mlp_0", "resid_0", "mlp_1"]  # 4 x (16 features + 1 error) = 68 nodes


@pytest.fixture(scope="module")
def two_node_model():
    """GPT-NeoX whose logits are ``resid_1 @ W_U.T`` with ``W_U`` zero outside columns 3, 7."""
    torch_model = build_tiny_model("gpt_neox", seed=1)
    torch_model.gpt_neox.final_layer_norm = torch.nn.Identity()
    with torch.no_grad():
        columns = torch.zeros(torch_model.config.hidden_size)
        columns[list(READ)] = 1000.0
        torch_model.get_output_embeddings().weight.mul_(columns)
    return load_model(torch_model, tokenizer=make_tiny_tokenizer())


@pytest.fixture(scope="module")
def neox(tiny_model_dir):
    return load_model(tiny_model_dir("gpt_neox"))


@pytest.fixture(scope="module")
def saes(neox):
    return random_saes(neox, widths=(16,))


def test_two_node_model_needs_exactly_its_two_neurons(two_node_model):
    """The truth the mask tests rely on, from the ablation engine: both neurons together are
    fully faithful, either alone is not."""
    neurons = {"resid_1": Identity(32)}
    both = evaluate(two_node_model, neurons, PAIRS, ["resid_1/3", "resid_1/7"], ablation="mean")
    assert math.isclose(both.faithfulness, 1.0, abs_tol=1e-4)
    for one in READ:
        alone = evaluate(two_node_model, neurons, PAIRS, [f"resid_1/{one}"], ablation="mean")
        assert abs(alone.faithfulness - 1.0) > 0.05


@pytest.mark.parametrize("parametrisation", ["hard-concrete", "sigmoid"])
@pytest.mark.parametrize("objective", ["logit-diff", "kl"])
def test_mask_keeps_exactly_the_two_read_neurons(two_node_model, parametrisation, objective):
    result = train_mask(
        two_node_model,
        {"resid_1": Identity(32)},
        PAIRS,
        parametrisation=parametrisation,
        objective=objective,
        steps=100,
        batch_size=5,
        progress=False,
    )
    assert set(result.nodes) == {"resid_1/3", "resid_1/7"}
    assert result.n_candidates == 33
    assert math.isclose(result.faithfulness, 1.0, abs_tol=1e-4)
    assert len(result.loss) == len(result.sizes) == 100
    assert abs(result.expected_size - 2) < 1


def test_mask_circuit_holds_the_mask_nodes_with_effects_and_edges(two_node_model):
    """The two kept neurons, their IG effects, and the edges `edge_effects` gives them."""
    neurons = {"resid_1": Identity(32)}
    mask = train_mask(two_node_model, neurons, PAIRS, steps=100, batch_size=5, progress=False)
    circuit = mask_circuit(two_node_model, neurons, PAIRS, mask, edge_threshold=0.0, progress=False)

    effects = node_effects(two_node_model, neurons, PAIRS, method="ig", progress=False)
    kept = {n: effects.nodes()[n] for n in mask.nodes}
    weights = edge_effects(two_node_model, neurons, PAIRS, kept, effects=effects, progress=False)
    assert set(circuit.graph) == {"resid_1/3", "resid_1/7", "y"}
    for name, effect in kept.items():
        assert circuit.effect(name) == pytest.approx(effect, abs=1e-6)
        assert effect != 0
    assert circuit.edge_weights() == pytest.approx(weights, abs=1e-6)
    assert set(circuit.edge_weights()) == {("resid_1/3", "y"), ("resid_1/7", "y")}
    assert circuit.provenance["mask"]["parametrisation"] == "hard-concrete"
    assert circuit.provenance["mask"]["faithfulness"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("ablation", ["mean", "position-mean", "zero", "resample"])
def test_gated_run_with_binary_gates_is_the_engine_run(neox, saes, ablation):
    """0/1 gates reproduce `run_ablated` (same ablation values, same kept nodes)."""
    batch = neox.tokenize([p.clean_prefix for p in PAIRS])
    reference = neox.tokenize([p.patch_prefix for p in PAIRS])
    values = ablation_values(neox, saes, reference, ablation, submodules=SUBMODULES)
    kept = ["attn_0/2", "attn_0/ε", "mlp_0/5", "mlp_0/9", "resid_0/0", "mlp_1/ε", "mlp_1/15"]
    keep = keep_nodes(neox, saes, kept, submodules=SUBMODULES)
    gates = {name: (k.features.float(), k.error.float()) for name, k in keep.items()}
    with torch.no_grad():
        per_batch = values.for_batch(neox, saes, batch, key=3)
        soft = run_gated(neox, saes, batch, gates, per_batch)
    hard = run_ablated(neox, saes, batch, keep, values, key=3)
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-5)


@pytest.mark.parametrize("parametrisation", ["hard-concrete", "sigmoid"])
def test_target_size_lands_within_ten_percent(neox, saes, parametrisation):
    k = 20
    result = train_mask(
        neox,
        saes,
        PAIRS,
        parametrisation=parametrisation,
        size=k,
        submodules=SUBMODULES,
        steps=100,
        batch_size=5,
        progress=False,
    )
    assert result.n_candidates == 68
    assert len(result.nodes) == k
    assert abs(result.expected_size - k) <= 0.1 * k, result.sizes[-10:]


@pytest.mark.parametrize(
    ("parametrisation", "size"), [("hard-concrete", None), ("sigmoid", 20), ("hard-concrete", 20)]
)
def test_resuming_from_a_checkpoint_reproduces_the_run(
    neox, saes, tmp_path, monkeypatch, parametrisation, size
):
    options = dict(
        parametrisation=parametrisation,
        size=size,
        submodules=SUBMODULES,
        steps=20,
        batch_size=2,  # 3 batches: resuming must pick up the right one
        seed=3,
        progress=False,
    )
    whole = train_mask(neox, saes, PAIRS, **options)

    path = tmp_path / "mask.pt"
    save = masks.train._save_checkpoint

    def save_then_stop(where, state):
        save(where, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(masks.train, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_mask(neox, saes, PAIRS, checkpoint=path, checkpoint_every=7, **options)
    monkeypatch.setattr(masks.train, "_save_checkpoint", save)
    resumed = train_mask(neox, saes, PAIRS, checkpoint=path, checkpoint_every=7, **options)

    assert torch.equal(resumed.logits, whole.logits)
    assert resumed.nodes == whole.nodes
    assert resumed.loss == whole.loss
    assert resumed.sizes == whole.sizes

    with pytest.raises(ValueError, match="other settings"):
        train_mask(neox, saes, PAIRS, checkpoint=path, **{**options, "seed": 4})


def test_ctrl_c_saves_the_step_and_resuming_reproduces_the_run(neox, saes, tmp_path, monkeypatch):
    import os
    import signal

    options = dict(submodules=SUBMODULES, steps=12, batch_size=2, seed=5, progress=False)
    whole = train_mask(neox, saes, PAIRS, **options)
    path = tmp_path / "mask.pt"
    loss, calls = masks.train._task_loss, []

    def interrupt_at_step_5(*args):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # mid-step: the step still finishes
        return loss(*args)

    monkeypatch.setattr(masks.train, "_task_loss", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt, match="stopped after step 5 .*rerun to resume"):
        train_mask(neox, saes, PAIRS, checkpoint=path, checkpoint_every=100, **options)
    assert torch.load(path, weights_only=True)["step"] == 5
    monkeypatch.setattr(masks.train, "_task_loss", loss)
    resumed = train_mask(neox, saes, PAIRS, checkpoint=path, checkpoint_every=100, **options)
    assert torch.equal(resumed.logits, whole.logits) and resumed.loss == whole.loss


def test_a_checkpoint_is_not_reused_for_other_weights_or_read_when_truncated(neox, saes, tmp_path):
    path = tmp_path / "mask.pt"
    options = dict(submodules=SUBMODULES, steps=4, batch_size=2, progress=False, checkpoint=path)
    train_mask(neox, saes, PAIRS, **options)
    other = {name: copy_with_scaled_decoder(d) for name, d in saes.items()}
    with pytest.raises(ValueError, match="dictionaries differ"):
        train_mask(neox, other, PAIRS, **options)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable checkpoint.*train_mask.*delete it"):
        train_mask(neox, saes, PAIRS, **options)


def copy_with_scaled_decoder(dictionary):
    import copy

    changed = copy.deepcopy(dictionary)
    with torch.no_grad():
        changed.W_dec.mul_(1.5)
    return changed


def test_training_leaves_model_and_dictionaries_untouched(neox, saes):
    params = [*neox.torch_model.parameters(), *(p for d in saes.values() for p in d.parameters())]
    flags = [p.requires_grad for p in params]
    before = [p.detach().clone() for p in params]
    train_mask(neox, saes, PAIRS, submodules=SUBMODULES, steps=5, batch_size=5, progress=False)
    assert [p.requires_grad for p in params] == flags
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(p.grad is None for p in params)


def test_bad_inputs(neox, saes):
    def train(data=PAIRS, **options):
        options = {"submodules": ["mlp_0"], "steps": 2, "progress": False, **options}
        return train_mask(neox, saes, data, **options)

    with pytest.raises(ValueError, match=r"size must be an integer in 1\.\.17"):
        train(size=18)
    with pytest.raises(ValueError, match="unknown parametrisation"):
        train(parametrisation="l0")
    with pytest.raises(ValueError, match="unknown objective"):
        train(objective="ce")
    with pytest.raises(ValueError, match="unknown ablation"):
        train(ablation="median")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        train(steps=0)
    no_patch = [PromptPair(p.clean_prefix, p.clean_answer) for p in PAIRS]
    with pytest.raises(ValueError, match="needs patch prompts"):
        train(no_patch, objective="logit-diff", ablation="zero")


def test_gate_formulas():
    """Hard-concrete: deterministic gate ``clamp(sigmoid(θ) (ζ - γ) + γ, 0, 1)``, expected L0
    ``Σ sigmoid(θ - β log(-γ / ζ))``, binary exactly where the deterministic gate exceeds 1/2;
    sigmoid: ``T`` runs from 1 to 200, gates harden towards ``θ > 0``."""
    hard = HardConcreteGates(50, init=0.0, seed=0)
    theta = hard.logits.detach()
    expected = (torch.sigmoid(theta) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
    torch.testing.assert_close(hard.gates(False), expected)
    l0 = torch.sigmoid(theta - BETA * math.log(-GAMMA / ZETA)).sum()
    torch.testing.assert_close(hard.expected_size(), l0)
    assert torch.equal(hard.binary(), expected > 0.5)
    drawn = hard.gates(True)
    assert drawn.min() >= 0 and drawn.max() <= 1 and not torch.equal(drawn, hard.gates(True))

    soft = SigmoidGates(50, init=0.0, seed=0)
    assert soft.anneal(0, 11) == 1.0 and math.isclose(soft.anneal(10, 11), 200.0)
    assert soft.anneal(3, 11, start=5) == 1.0
    hardened = soft.gates(True)
    assert torch.equal(hardened > 0.5, soft.binary())
    assert torch.allclose(soft.expected_size(), hardened.sum())


def test_cli_mask_saves_the_circuit_and_resumes(tiny_model_dir, sae_dir, tmp_path, capsys):
    task = tmp_path / "pairs.jsonl"
    task.write_text(
        "".join(
            json.dumps({k: v for k, v in vars(p).items() if v is not None}) + "\n" for p in PAIRS
        )
    )
    out = tmp_path / "mask"
    argv = [
        "mask", "--task", str(task), "--model", str(tiny_model_dir("gpt_neox")),
        "--dictionaries", str(sae_dir), "--size", "4", "--steps", "10", "--batch-size", "5",
        "--edge-threshold", "0", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    circuit = Circuit.load(out / "circuit.json")
    assert set(circuit.graph) - {"y"} and len(circuit.graph) == 5  # the 4 kept nodes and y
    assert "mask (hard-concrete): kept 4 of" in text and (out / "mask.ckpt").exists()
    first = circuit.node_effects()

    # A rerun finds the finished checkpoint and gives the same circuit; --json prints JSON only.
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept"] == 4 and summary["file"] == str(out / "circuit.json")
    assert Circuit.load(out / "circuit.json").node_effects() == first

    # Other settings with the same directory: the checkpoint refuses, and says what to do.
    assert main([*argv, "--parametrisation", "sigmoid"]) == 2
    assert "delete it" in capsys.readouterr().err

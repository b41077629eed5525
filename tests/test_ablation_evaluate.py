"""The ablation engine and circuit evaluation, checked against independent truths.

Truths used here: the model's own forward (ablating nothing must reproduce it bit for bit);
plain PyTorch forward hooks that splice a submodule by hand (zero ablation of one feature, mean
ablation of everything); a model whose residual stream after block 0 is all that block 1 reads,
so resampling all of ``resid_0`` must give the sampled prompt's own logits; and a model whose
metric is linear in ``resid_1``, where faithfulness is a sum of per-node contributions worked out
by hand. Models are the tiny random GPT-NeoX of conftest with random ReLU SAEs; batches hold
prompts of different lengths.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PAIRS, build_tiny_model, make_tiny_tokenizer, random_saes

from attribution import discover, pair_batches
from circuits.ablation import (
    Keep,
    ablation_values,
    complement,
    keep_all,
    keep_nodes,
    keep_none,
    run_ablated,
)
from circuits.dictionaries import Identity
from circuits.evaluate import (
    Evaluator,
    FaithfulnessUndefinedError,
    cmd,
    cpr,
    curve,
    evaluate,
)
from circuits.models import load_model


def all_nodes(dictionaries, submodules) -> list[str]:
    names = []
    for sub in submodules:
        names += [f"{sub}/{i}" for i in range(dictionaries[sub].width)] + [f"{sub}/ε"]
    return names


@pytest.fixture(scope="module")
def neox(tiny_model_dir):
    return load_model(tiny_model_dir("gpt_neox"))


@pytest.fixture(scope="module")
def saes(neox):
    return random_saes(neox, widths=(16,))


@pytest.fixture(scope="module")
def batches(neox):
    return pair_batches(neox, PAIRS, batch_size=3)


def hooked_logits(model, batch, replacements) -> torch.Tensor:
    """Plain forward with ``{submodule: fn(x) -> x'}`` applied by forward hooks; last logits."""
    handles = []

    def make(fn):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                return fn(output)
            return (fn(output[0]), *output[1:])

        return hook

    for name, fn in replacements.items():
        handles.append(model.module(name).register_forward_hook(make(fn)))
    try:
        with torch.no_grad():
            return batch.at_last(model.forward(batch))
    finally:
        for handle in handles:
            handle.remove()


def recorded(model, batch, names) -> dict[str, torch.Tensor]:
    """Every named submodule's output on ``batch``, by plain hooks."""
    seen = {}

    def keep(name):
        def store(x):
            seen[name] = x.detach().clone()
            return x

        return store

    hooked_logits(model, batch, {name: keep(name) for name in names})
    return seen


# ------------------------------------------------------------------------------------------------
# The engine


def test_ablating_nothing_is_exact(neox, saes, batches):
    subs = [s.name for s in neox.submodules]
    values = ablation_values(neox, saes, [b.patch for b in batches], "mean")
    for batch in batches:
        expected = batch.clean.at_last(neox.forward(batch.clean).detach())
        assert torch.equal(
            run_ablated(neox, saes, batch.clean, keep_all(saes, subs), values), expected
        )
        by_name = run_ablated(neox, saes, batch.clean, all_nodes(saes, subs), values)
        assert torch.equal(by_name, expected)
        n_pos = batch.clean.input_ids.shape[1]
        positioned = [f"{n}@{p}" for n in all_nodes(saes, ["mlp_0"]) for p in range(n_pos)]
        got = run_ablated(neox, saes, batch.clean, positioned, values, submodules=["mlp_0"])
        assert torch.equal(got, expected)


@pytest.mark.parametrize("how", ["mean", "position-mean", "zero"])
def test_ablating_everything_matches_hooks(neox, saes, batches, how):
    subs = [s.name for s in neox.submodules]
    reference = [b.patch for b in batches]
    values = ablation_values(neox, saes, reference, how)

    # Independent means: plain hooks record every submodule on the reference prompts.
    truth = {}
    for name in subs:
        f_parts, e_parts, masks = [], [], []
        for batch in reference:
            x = recorded(neox, batch, [name])[name]  # [batch, pos, d_model]
            f = saes[name].encode(x)
            e = x - saes[name].decode(f)
            width = max(b.input_ids.shape[1] for b in reference)
            pad = width - x.shape[1]
            f_parts.append(torch.nn.functional.pad(f, (0, 0, 0, pad)))
            e_parts.append(torch.nn.functional.pad(e, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(batch.attention_mask.float(), (0, pad)))
        f, e, m = torch.cat(f_parts), torch.cat(e_parts), torch.cat(masks)[..., None]
        if how == "zero":
            truth[name] = (torch.zeros_like(f[0, 0]), torch.zeros_like(e[0, 0]))
        elif how == "mean":
            truth[name] = ((f * m).sum((0, 1)) / m.sum(), (e * m).sum((0, 1)) / m.sum())
        else:
            truth[name] = ((f * m).sum(0) / m.sum(0), (e * m).sum(0) / m.sum(0))

    def replace(name):
        f_mean, e_mean = truth[name]

        def fn(x):
            if f_mean.ndim == 2:
                pos = x.shape[1]
                return (saes[name].decode(f_mean[:pos]) + e_mean[:pos]).expand_as(x)
            return (saes[name].decode(f_mean) + e_mean).expand_as(x)

        return fn

    for batch in batches:
        got = run_ablated(neox, saes, batch.clean, keep_none(saes, subs), values)
        expected = hooked_logits(neox, batch.clean, {name: replace(name) for name in subs})
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, batch.clean.at_last(neox.forward(batch.clean).detach()))


def test_zero_ablating_one_feature_matches_a_hand_splice(neox, saes, batches):
    batch = batches[0].clean
    x = recorded(neox, batch, ["mlp_0"])["mlp_0"]
    feature = int(saes["mlp_0"].encode(x).sum((0, 1)).argmax())  # an active feature
    values = ablation_values(neox, saes, None, "zero", submodules=["mlp_0"])
    keep = keep_all(saes, ["mlp_0"])
    keep["mlp_0"].features[feature] = False
    got = run_ablated(neox, saes, batch, keep, values)
    by_name = run_ablated(
        neox,
        saes,
        batch,
        [n for n in all_nodes(saes, ["mlp_0"]) if n != f"mlp_0/{feature}"],
        values,
    )

    def splice(x):
        f = saes["mlp_0"].encode(x)
        error = x - saes["mlp_0"].decode(f)
        f = f.clone()
        f[..., feature] = 0
        return saes["mlp_0"].decode(f) + error

    expected = hooked_logits(neox, batch, {"mlp_0": splice})
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(got, by_name)
    assert not torch.allclose(got, batch.at_last(neox.forward(batch).detach()))


def test_position_mean_replaces_one_node_at_one_position(neox, saes, batches):
    reference = [b.patch for b in batches]
    values = ablation_values(neox, saes, reference, "position-mean", submodules=["resid_0"])
    f_mean, e_mean = values.values["resid_0"]
    assert f_mean.shape == (6, saes["resid_0"].width) and e_mean.shape == (6, 32)
    batch = batches[1].clean
    position, feature = 2, 3
    keep = {
        "resid_0": Keep(
            torch.ones(6, saes["resid_0"].width, dtype=torch.bool),
            torch.ones(6, dtype=torch.bool),
        )
    }
    keep["resid_0"].features[position, feature] = False
    got = run_ablated(neox, saes, batch, keep, values)

    def splice(x):
        f = saes["resid_0"].encode(x)
        error = x - saes["resid_0"].decode(f)
        f = f.clone()
        f[:, position, feature] = f_mean[position, feature]
        return saes["resid_0"].decode(f) + error

    torch.testing.assert_close(
        got, hooked_logits(neox, batch, {"resid_0": splice}), atol=1e-5, rtol=1e-5
    )
    # The error node at that position alone: positions before it are untouched, so a prompt
    # whose last token comes before it keeps its logits exactly.
    keep = {"resid_0": Keep(torch.ones(6, 16, dtype=torch.bool), torch.ones(6, dtype=torch.bool))}
    keep["resid_0"].error[4] = False
    got = run_ablated(neox, saes, batch, keep, values)
    clean = batch.at_last(neox.forward(batch).detach())
    short = batch.last < 4
    assert short.any() and torch.equal(got[short], clean[short])
    assert not torch.allclose(got[~short], clean[~short])


def test_resample_takes_another_prompts_values(neox, saes, batches):
    reference = [b.patch for b in batches]
    values = ablation_values(neox, saes, reference, "resample", submodules=["resid_0"], seed=3)
    pool = values.reference
    pool_logits = neox.forward(pool).detach()  # [n_ref, pos, vocab]
    for key, batch in enumerate(batches):
        rows = values.draw(batch.clean, key=key)
        assert torch.equal(rows, values.draw(batch.clean, key=key))  # seeded by (seed, key)
        assert bool((pool.last[rows] >= batch.clean.last).all())
        got = run_ablated(neox, saes, batch.clean, keep_none(saes, ["resid_0"]), values, key=key)
        # All of resid_0 replaced by the sampled prompt's: block 1 sees only that prompt.
        expected = pool_logits[rows, batch.clean.last]
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    draws = {tuple(values.draw(batches[0].clean, key=k).tolist()) for k in range(6)}
    assert len(draws) > 1


def test_complement_and_masks(neox, saes):
    keep = keep_nodes(
        neox, saes, ["mlp_0/3", "mlp_0/ε", "attn_1/2"], submodules=["mlp_0", "attn_1"]
    )
    assert keep["mlp_0"].count() == 2 and keep["attn_1"].count() == 1
    flipped = complement(keep)
    assert flipped["mlp_0"].count() == 15 and not bool(flipped["mlp_0"].error)
    positioned = keep_nodes(neox, saes, ["mlp_0/3@1"], submodules=["mlp_0"])
    assert positioned["mlp_0"].features.shape == (2, 16) and positioned["mlp_0"].positioned


# ------------------------------------------------------------------------------------------------
# Evaluation


@pytest.mark.parametrize("how", ["position-mean", "mean", "zero", "resample"])
def test_full_and_empty_circuits_are_exact(neox, saes, how):
    evaluator = Evaluator(neox, saes, PAIRS, ablation=how, batch_size=2)
    full = evaluator.evaluate(all_nodes(saes, evaluator.submodules))
    assert full.faithfulness == 1.0 and full.completeness == 0.0
    assert full.n_nodes == full.n_total == 7 * 17
    empty = evaluator.evaluate([])
    assert empty.faithfulness == 0.0 and empty.completeness == 1.0
    assert empty.metric_full == full.metric_full
    # m(M) is the plain model's mean logit difference
    logits = torch.cat([b.clean.at_last(neox.forward(b.clean).detach()) for b in evaluator.batches])
    info_rows = torch.arange(len(PAIRS))
    patch = torch.cat([b.info.patch_answer for b in evaluator.batches])
    clean = torch.cat([b.info.clean_answer for b in evaluator.batches])
    expected = (logits[info_rows, patch] - logits[info_rows, clean]).double().mean()
    assert math.isclose(full.metric_full, float(expected), rel_tol=1e-6)


def test_vocabulary_wide_logits_are_kept_only_for_metrics_that_read_them(neox, saes):
    def margin(logits, info):  # a callable may read info.clean_logits
        return logits[:, 0] - info.clean_logits[:, 0]

    kept = {
        metric: all(
            info.clean_logits is not None
            for info in Evaluator(neox, saes, PAIRS, metric=metric, ablation="zero").infos.values()
        )
        for metric in ("logit_diff", "kl_to_clean", margin)
    }
    assert kept == {"logit_diff": False, "kl_to_clean": True, margin: True}
    forced = Evaluator(neox, saes, PAIRS, keep_clean_logits=True)
    assert all(info.clean_logits.shape[1] == neox.vocab_size for info in forced.infos.values())


def test_positioned_full_circuit(neox, saes):
    same = [p for p in PAIRS if len(p.clean_prefix.split()) == 5]
    evaluator = Evaluator(neox, saes, same, submodules=["mlp_0", "resid_1"])
    names = [f"{n}@{p}" for n in all_nodes(saes, evaluator.submodules) for p in range(6)]
    result = evaluator.evaluate(names)
    assert result.faithfulness == 1.0 and result.n_total == 2 * 17 * 6


def test_first_layers_intact(neox, saes):
    evaluator = Evaluator(neox, saes, PAIRS, first_layers_intact=1)
    assert evaluator.submodules == ("attn_1", "mlp_1", "resid_1")
    # nodes in intact layers are checked, then play no part
    result = evaluator.evaluate(["embed/3", "mlp_0/ε", *all_nodes(saes, evaluator.submodules)])
    assert result.faithfulness == 1.0
    with pytest.raises(ValueError, match="nothing to evaluate"):
        Evaluator(neox, saes, PAIRS, first_layers_intact=2)


def test_protocols_name_the_intact_layers(neox):
    """sfc leaves embed and the first n_layers // 3 layers intact, strict none; a count given
    by hand is the protocol's or "custom", and every result names it."""
    deep = load_model(build_tiny_model("gpt_neox", num_hidden_layers=6), tokenizer=neox.tokenizer)
    saes = random_saes(deep, widths=(8,))
    sfc = Evaluator(deep, saes, PAIRS[:2])
    assert (sfc.protocol, sfc.first_layers_intact) == ("sfc", 2)
    assert [deep.submodule(s).layer for s in sfc.submodules] == [2] * 3 + [3] * 3 + [4] * 3 + [
        5
    ] * 3
    by_hand = Evaluator(deep, saes, PAIRS[:2], protocol="strict", first_layers_intact=2)
    assert by_hand.protocol == "custom" and by_hand.submodules == sfc.submodules
    nodes = all_nodes(saes, ["resid_3", "mlp_4"])
    a, b = sfc.evaluate(nodes), by_hand.evaluate(nodes)
    assert a.faithfulness == b.faithfulness and a.completeness == b.completeness
    assert a.protocol_text == "sfc protocol: position-mean ablation, embed and layers 0-1 intact"
    assert a.to_dict()["protocol"] == "sfc" and a.to_dict()["first_layers_intact"] == 2
    strict = Evaluator(deep, saes, PAIRS[:2], protocol="strict")
    assert strict.first_layers_intact == 0 and len(strict.submodules) == 1 + 3 * 6
    assert strict.evaluate(nodes).protocol_text.endswith("nothing intact")
    assert Evaluator(deep, saes, PAIRS[:2], first_layers_intact=0).protocol == "custom"
    with pytest.raises(ValueError, match="unknown protocol 'paper'"):
        Evaluator(deep, saes, PAIRS[:2], protocol="paper")


@pytest.fixture(scope="module")
def linear_model():
    """A GPT-NeoX whose logits are ``resid_1 @ W_U.T`` (no final norm): linear in resid_1."""
    torch_model = build_tiny_model("gpt_neox", seed=1)
    torch_model.gpt_neox.final_layer_norm = torch.nn.Identity()
    with torch.no_grad():
        torch_model.get_output_embeddings().weight.mul_(1000.0)
    return load_model(torch_model, tokenizer=make_tiny_tokenizer())


def test_faithfulness_is_additive_and_monotone_on_a_linear_toy(linear_model):
    """With neurons of resid_1 only, m(C) - m(∅) is the sum over C of each neuron's contribution
    ``mean_i w_i[n] (x_i[n] - mu[n])``; top-k by that contribution, among positive ones, can
    only raise faithfulness."""
    model = linear_model
    dictionaries = {"resid_1": Identity(32)}
    evaluator = Evaluator(model, dictionaries, PAIRS, ablation="mean", batch_size=2)
    w_u = model.torch_model.get_output_embeddings().weight.detach()  # [vocab, d_model]
    xs, ws, refs, masks = [], [], [], []
    for b in evaluator.batches:
        x = recorded(model, b.clean, ["resid_1"])["resid_1"]
        xs.append(b.clean.at_last(x))  # [batch, d_model]
        ws.append(w_u[b.info.patch_answer] - w_u[b.info.clean_answer])
        r = recorded(model, b.patch, ["resid_1"])["resid_1"]
        refs.append(r.reshape(-1, 32))
        masks.append(b.patch.attention_mask.reshape(-1).bool())
    mu = torch.cat(refs)[torch.cat(masks)].double().mean(0)
    contribution = (torch.cat(ws).double() * (torch.cat(xs).double() - mu)).mean(0)  # [32]
    total = float(contribution.sum())
    assert math.isclose(evaluator.metric_full - evaluator.metric_empty, total, rel_tol=1e-4)

    effects = {f"resid_1/{n}": float(contribution[n]) for n in range(32)}
    effects["resid_1/ε"] = 0.0
    positive = sorted((n for n in range(32) if contribution[n] > 0), key=lambda n: -contribution[n])
    points = evaluator.curve(
        {f"resid_1/{n}": float(contribution[n]) for n in positive}, sizes=range(len(positive) + 1)
    )
    faith = [p.faithfulness for p in points]
    for k, point in enumerate(points):
        expected = float(contribution[positive[:k]].sum()) / total
        assert math.isclose(point.faithfulness, expected, rel_tol=1e-4, abs_tol=1e-4)
    assert all(b >= a - 1e-6 for a, b in zip(faith, faith[1:], strict=False))
    assert faith[0] == 0.0

    by_threshold = evaluator.curve(effects, thresholds=[float(contribution.abs().max()), 0.0])
    assert by_threshold[0].size == 0 and by_threshold[0].faithfulness == 0.0
    assert by_threshold[1].size == int((contribution != 0).sum()) and by_threshold[1].threshold == 0
    with pytest.raises(ValueError, match="one of"):
        evaluator.curve(effects, sizes=[1], thresholds=[0.1])
    with pytest.raises(ValueError, match="No submodule"):
        evaluator.curve({"resid_9/0": 1.0})

    mib = evaluator.curve(effects)
    assert [p.fraction for p in mib] == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    assert [p.size for p in mib][-1] == 33 and mib[-1].faithfulness == 1.0
    assert mib[0].size == 0 and mib[0].faithfulness == 0.0


def test_cpr_and_cmd_by_hand():
    from circuits.evaluate import CurvePoint

    points = [
        CurvePoint(0, 0.0, 0.0, 1.0),
        CurvePoint(5, 0.5, 1.5, 0.0),
        CurvePoint(10, 1.0, 1.0, 0.0),
    ]
    assert cpr(points) == pytest.approx(0.5 * 0.75 + 0.5 * 1.25)
    assert cmd(points) == pytest.approx(0.5 * 0.75 + 0.5 * 0.25)
    with pytest.raises(ValueError):
        cpr(points[:1])


def test_discovered_circuit(neox, saes):
    circuit = discover(neox, saes, PAIRS, method="atp", top_k=20, edges=False, progress=False)
    result = evaluate(neox, saes, PAIRS, circuit)
    assert math.isfinite(result.faithfulness) and math.isfinite(result.completeness)
    assert result.n_nodes == circuit.num_nodes == 20  # y is not counted
    points = curve(neox, saes, PAIRS, circuit, sizes=[0, 20])
    assert points[0].faithfulness == 0.0
    assert points[1].faithfulness == pytest.approx(result.faithfulness, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Bad inputs


@pytest.fixture(scope="module")
def evaluator(neox, saes):
    return Evaluator(neox, saes, PAIRS)


@pytest.mark.parametrize(
    "nodes, message",
    [
        (["resid_7/0"], "No submodule 'resid_7'"),
        (["mlp_0/16"], "out of range"),
        (["mlp_0/x"], "malformed node name"),
        (["mlp_0/1@0", "mlp_0/2"], "every node has a position"),
        (["mlp_0/1@6"], "beyond the prompts"),
    ],
)
def test_bad_nodes(evaluator, nodes, message):
    with pytest.raises(ValueError, match=message):
        evaluator.evaluate(nodes)


def test_bad_arguments(neox, saes):
    with pytest.raises(ValueError, match="no dictionary"):
        Evaluator(neox, {"mlp_0": saes["mlp_0"]}, PAIRS).evaluate(["mlp_1/0"])
    with pytest.raises(ValueError, match="unknown ablation"):
        Evaluator(neox, saes, PAIRS, ablation="median")
    with pytest.raises(ValueError, match="first_layers_intact"):
        Evaluator(neox, saes, PAIRS, first_layers_intact=-1)
    with pytest.raises(TypeError):
        evaluate(neox, saes, PAIRS, "mlp_0/1")

    def flat(logits, info):
        return torch.zeros(logits.shape[0])

    with pytest.raises(FaithfulnessUndefinedError, match="undefined"):
        Evaluator(neox, saes, PAIRS, metric=flat)


def test_positioned_discovered_circuit_and_other_options(neox, saes):
    same = [p for p in PAIRS if len(p.clean_prefix.split()) == 5]
    circuit = discover(
        neox, saes, same, method="atp", top_k=10, aggregation="none", edges=False, progress=False
    )
    assert all("@" in name for name in circuit.graph.nodes if name != "y")
    result = evaluate(neox, saes, same, circuit, ablation="mean")
    assert result.n_nodes == 10 and result.n_total == 7 * 17 * 6
    assert math.isfinite(result.faithfulness)

    kl = Evaluator(neox, saes, PAIRS, metric="kl_to_clean", ablation="zero")
    assert kl.metric_full == 0.0 and kl.metric_empty > 0
    assert kl.evaluate(all_nodes(saes, kl.submodules)).faithfulness == 1.0

    on_patch = Evaluator(neox, saes, PAIRS)
    on_clean = Evaluator(neox, saes, PAIRS, reference="clean")
    on_other = Evaluator(neox, saes, PAIRS, reference=PAIRS[::-1])
    assert on_clean.metric_empty != on_patch.metric_empty
    assert on_other.metric_empty == pytest.approx(on_patch.metric_empty, abs=1e-5)
    with pytest.raises(ValueError, match="reference"):
        Evaluator(neox, saes, PAIRS, reference="corrupt")

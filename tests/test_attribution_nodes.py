"""Node effects (AtP, IG, joint IG, exact patching) checked against independent truths.

Truths used here: exact patching (each node patched alone) for the approximate methods; a model
that is linear in the attributed submodules, where every method must agree to float precision;
plain PyTorch hooks that patch or zero a whole submodule, for IG's completeness; and the
per-example definitions (sums over positions, means over all examples) for aggregation and
batching. Models are the tiny random GPT-NeoX of conftest with random ReLU SAEs.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PAIRS, SAME_LENGTH_PAIRS, build_tiny_model, make_tiny_tokenizer, random_saes

from attribution import ERROR, ExactRunsError, gradients, node_effects, run_spliced
from circuits.metrics import BatchInfo, MetricError, get_metric
from circuits.models import load_model
from circuits.tasks import PromptPair, TaskError

METHODS = ("atp", "ig", "ig-joint", "exact")


def flat(effects) -> torch.Tensor:
    """Every node effect in one vector (features, then the error, per submodule)."""
    return torch.cat(
        [torch.cat([effects[s].features.flatten(), effects[s].error.flatten()]) for s in effects]
    )


def relative_error(approx, exact) -> float:
    return float((flat(approx) - flat(exact)).norm() / flat(exact).norm())


def assert_same_effects(a, b, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    assert a.submodules == b.submodules
    for sub in a.submodules:
        for field in ("features", "error"):
            x, y = getattr(a[sub], field), getattr(b[sub], field)
            torch.testing.assert_close(
                x, y, atol=atol, rtol=rtol, msg=lambda m, s=sub, f=field: f"{s}.{f}: {m}"
            )


@pytest.fixture(scope="module")
def neox(tiny_model_dir):
    return load_model(tiny_model_dir("gpt_neox"))


@pytest.fixture(scope="module")
def saes(neox):
    return random_saes(neox)


@pytest.fixture(scope="module")
def linear_model():
    """A GPT-NeoX whose logits are linear in attn_1, mlp_1 and resid_1.

    With parallel attention the last block's output is ``resid_0 + attn_1 + mlp_1``, and without
    the final layer norm only the unembedding follows; the decoders are affine, so a logit-linear
    metric is linear in every feature and error node of those three submodules.
    """
    torch_model = build_tiny_model("gpt_neox", seed=1)
    torch_model.gpt_neox.final_layer_norm = torch.nn.Identity()
    with torch.no_grad():  # random-init logits are tiny without the norm; scale them up
        torch_model.get_output_embeddings().weight.mul_(1000.0)
    return load_model(torch_model, tokenizer=make_tiny_tokenizer())


def hooked_metric(model, batch, sub, replace, answers):
    """Plain forward, ``sub``'s output replaced by a hook: ``logit[answers]`` at the last token."""
    module = model.module(sub)

    def hook(mod, args, output):
        if isinstance(output, torch.Tensor):
            return replace(output)
        return (replace(output[0]), *output[1:])

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = batch.at_last(model.forward(batch))
    finally:
        handle.remove()
    return logits[torch.arange(len(answers)), answers]


def recorded(model, batch, sub):
    """``sub``'s output on ``batch``, recorded with a plain hook."""
    seen = {}

    def keep(activation):
        seen["x"] = activation.clone()
        return activation

    hooked_metric(model, batch, sub, keep, torch.zeros(len(batch), dtype=torch.long))
    return seen["x"]


def answer_ids(model, answers):
    return torch.tensor(
        [model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers]
    )


# -- the splice and the metrics -------------------------------------------------------------------


def test_splice_passes_the_forward_and_the_gradient_through(neox, saes):
    """Splitting every submodule leaves the logits exactly as they were; the error node's gradient
    is the plain gradient at the activation, the features' is it through the decoder."""
    batch = neox.tokenize([p.clean_prefix for p in PAIRS])
    names = [sub.name for sub in neox.submodules]
    run = run_spliced(neox, saes, batch, split=names, grad=True)
    target = run.logits[:, 5] - run.logits[:, 7]  # [batch]
    grads = gradients(target, run.values)

    seen = {}

    def keep(module, args, output):
        output = output if isinstance(output, torch.Tensor) else output[0]
        output.retain_grad()
        seen["x"] = output

    handle = neox.module("resid_0").register_forward_hook(keep)
    try:
        logits = batch.at_last(neox.forward(batch))
    finally:
        handle.remove()
    (logits[:, 5] - logits[:, 7]).sum().backward()
    torch.testing.assert_close(run.logits, logits, rtol=0, atol=0)
    x_grad = seen["x"].grad  # [batch, pos, d_model]
    torch.testing.assert_close(grads["resid_0"].error, x_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        grads["resid_0"].features, x_grad @ saes["resid_0"].W_dec.T, rtol=1e-5, atol=1e-7
    )
    assert grads["embed"].error.abs().sum() > 0  # upstream nodes still receive gradient


def test_splice_readout_is_the_activation_on_the_graph(neox, saes):
    """The readout is the submodule's activation as the model saw it, and its gradient reaches
    the nodes upstream of it exactly as a plain backward from that activation does."""
    batch = neox.tokenize([p.clean_prefix for p in PAIRS])
    run = run_spliced(neox, saes, batch, split=["embed", "resid_0"], grad=True, readout="resid_0")
    seen = {}
    handle = neox.module("resid_0").register_forward_hook(
        lambda m, a, out: seen.setdefault("x", out if isinstance(out, torch.Tensor) else out[0])
    )
    try:
        with torch.no_grad():
            neox.forward(batch)
    finally:
        handle.remove()
    torch.testing.assert_close(run.readout, seen["x"], rtol=0, atol=0)
    grads = gradients(run.readout[..., 0].sum(), run.values)
    assert grads["resid_0"].error[..., 0].eq(1).all()  # d readout / d own error = identity
    assert grads["embed"].error.abs().sum() > 0
    with pytest.raises(ValueError, match="readout 'mlp_0' is not among the spliced"):
        run_spliced(neox, saes, batch, split=["embed"], readout="mlp_0")


def test_metrics_by_hand():
    logits = torch.tensor([[1.0, 2.0, 4.0], [0.0, 3.0, -1.0]])  # [batch, vocab]
    info = BatchInfo(
        clean_answer=torch.tensor([2, 1]),
        patch_answer=torch.tensor([0, 2]),
        example=torch.tensor([7, 8]),
    )
    torch.testing.assert_close(get_metric("logit_diff")(logits, info), torch.tensor([-3.0, -4.0]))
    logprob = logits.log_softmax(-1)
    torch.testing.assert_close(
        get_metric("answer_logprob")(logits, info), torch.stack([logprob[0, 2], logprob[1, 1]])
    )
    kl = get_metric("kl_to_clean")
    torch.testing.assert_close(kl(logits, info.with_clean_logits(logits)), torch.zeros(2))
    shifted = kl(logits.flip(-1), info.with_clean_logits(logits))
    p, q = logits.softmax(-1), logits.flip(-1).softmax(-1)
    torch.testing.assert_close(shifted, (p * (p / q).log()).sum(-1))
    repeated = info.repeat(3)
    assert repeated.example.tolist() == [7, 8] * 3
    with pytest.raises(MetricError, match=r"'logit_diff'.*indices\): 8"):
        get_metric("logit_diff")(torch.tensor([[0.0, 1.0, 2.0], [0.0, float("inf"), 0.0]]), info)
    with pytest.raises(MetricError, match="one value per row"):
        get_metric(lambda logits, info: logits)(logits, info)
    with pytest.raises(ValueError, match="logit_diff, answer_logprob, kl_to_clean"):
        get_metric("accuracy")


# -- (1) approximations against exact patching -----------------------------------------------------


def test_atp_and_ig_against_exact(neox, saes):
    """IG tracks exact patching closely and better than AtP, on a model where AtP is off."""
    results = {
        method: node_effects(neox, saes, PAIRS, method=method, batch_size=3, progress=False)
        for method in ("exact", "atp", "ig")
    }
    atp_error = relative_error(results["atp"], results["exact"])
    ig_error = relative_error(results["ig"], results["exact"])
    print(f"relative L2 error vs exact: atp {atp_error:.3f}, ig {ig_error:.3f}")
    assert atp_error > 0.1, f"AtP matches exact ({atp_error:.3f}): the test model is too linear"
    assert ig_error < 0.5 * atp_error, (atp_error, ig_error)
    assert ig_error < 0.15, ig_error
    for result in results.values():
        assert result.total_effect == pytest.approx(results["exact"].total_effect)


def test_ig_steps_one_is_atp_and_joint_single_submodule_is_ig(neox, saes):
    """At a = 0 only, IG is AtP; joint IG over one submodule is per-submodule IG."""
    atp = node_effects(neox, saes, PAIRS, method="atp", progress=False)
    for method in ("ig", "ig-joint"):
        one_step = node_effects(neox, saes, PAIRS, method=method, steps=1, progress=False)
        assert_same_effects(one_step, atp)
    ig = node_effects(neox, saes, PAIRS, method="ig", steps=5, submodules=["mlp_0"], progress=False)
    joint = node_effects(
        neox, saes, PAIRS, method="ig-joint", steps=5, submodules=["mlp_0"], progress=False
    )
    assert_same_effects(ig, joint)
    assert (
        relative_error(
            ig, node_effects(neox, saes, PAIRS, method="atp", submodules=["mlp_0"], progress=False)
        )
        > 0.05
    )


# -- (2) every method agrees where the metric is linear in the nodes -----------------------------


def test_all_methods_agree_on_a_linear_model(linear_model):
    saes = random_saes(linear_model, seed=3)
    subs = ["attn_1", "mlp_1", "resid_1"]
    results = {
        method: node_effects(
            linear_model, saes, PAIRS, method=method, submodules=subs, steps=3, progress=False
        )
        for method in METHODS
    }
    assert flat(results["exact"]).abs().max() > 1e-2
    for method in ("atp", "ig", "ig-joint"):
        assert_same_effects(results[method], results["exact"])


# -- (3) completeness of per-submodule IG ---------------------------------------------------------


def test_ig_completeness(neox, saes):
    """For one submodule, IG's node effects add up to the effect of patching that submodule whole.

    For resid_0 (the whole state) that is the total effect m(patch) - m(clean); for mlp_0 it is
    m(clean with mlp_0 set to its patch activation) - m(clean), computed here with plain hooks.
    The left-Riemann gap shrinks as steps grow.
    """

    def gap(sub, steps, target):
        result = node_effects(
            neox, saes, PAIRS, method="ig", steps=steps, submodules=[sub], progress=False
        )
        return abs(float(result[sub].features.sum() + result[sub].error) - target), result

    _, result = gap("resid_0", 1, 0.0)
    total = result.total_effect
    gaps = [gap("resid_0", steps, total)[0] for steps in (1, 4, 64)]
    assert gaps[0] > gaps[1] > gaps[2], gaps
    assert gaps[2] < 0.01 * abs(total), (gaps, total)

    clean = neox.tokenize([p.clean_prefix for p in PAIRS])
    patch = neox.tokenize([p.patch_prefix for p in PAIRS])
    clean_ids = answer_ids(neox, [p.clean_answer for p in PAIRS])
    patch_ids = answer_ids(neox, [p.patch_answer for p in PAIRS])
    patch_mlp = recorded(neox, patch, "mlp_0")

    def logit_diff(replace):
        return hooked_metric(neox, clean, "mlp_0", replace, patch_ids) - hooked_metric(
            neox, clean, "mlp_0", replace, clean_ids
        )

    truth = float((logit_diff(lambda x: patch_mlp) - logit_diff(lambda x: x)).mean())
    assert abs(truth - total) > 0.01 * abs(total)  # mlp_0 alone is not the whole effect
    gaps = [gap("mlp_0", steps, truth)[0] for steps in (1, 64)]
    assert gaps[1] < 0.1 * gaps[0] and gaps[1] < 0.02 * abs(truth), (gaps, truth)


# -- (4) zero-ablation ----------------------------------------------------------------------------


def test_zero_ablation(linear_model):
    """No patch prompts: delta = -clean. Linear model and metric: all methods agree, and the
    resid_1 effects add up to the effect of setting resid_1 to decode(0) + 0 = b_dec."""
    pairs = [PromptPair(p.clean_prefix, p.clean_answer) for p in PAIRS]
    saes = random_saes(linear_model, seed=4)

    def clean_logit(logits_last, info):
        return logits_last[torch.arange(len(info)), info.clean_answer]

    results = {
        method: node_effects(
            linear_model,
            saes,
            pairs,
            method=method,
            metric=clean_logit,
            submodules=["attn_1", "resid_1"],
            steps=2,
            progress=False,
        )
        for method in METHODS
    }
    for method in ("atp", "ig", "ig-joint"):
        assert_same_effects(results[method], results["exact"])
    exact = results["exact"]
    assert exact.total_effect is None and exact.metric == "clean_logit"

    batch = linear_model.tokenize([p.clean_prefix for p in pairs])
    ids = answer_ids(linear_model, [p.clean_answer for p in pairs])
    b_dec = saes["resid_1"].b_dec
    mask = batch.attention_mask[..., None].bool()
    ablated = hooked_metric(
        linear_model, batch, "resid_1", lambda x: torch.where(mask, b_dec, x), ids
    )
    unchanged = hooked_metric(linear_model, batch, "resid_1", lambda x: x, ids)
    truth = float((ablated - unchanged).mean())
    total = float(exact["resid_1"].features.sum() + exact["resid_1"].error)
    assert total == pytest.approx(truth, rel=1e-4, abs=1e-5)


def test_zero_ablation_default_metric(neox, saes):
    pairs = [PromptPair(p.clean_prefix, p.clean_answer) for p in PAIRS[:3]]
    result = node_effects(neox, saes, pairs, method="atp", progress=False)
    assert result.metric == "answer_logprob" and result.total_effect is None
    assert flat(result).abs().max() > 0
    with pytest.raises(MetricError, match="answer_logprob"):
        node_effects(neox, saes, pairs, method="atp", metric="logit_diff", progress=False)


# -- (5) aggregation and names --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_aggregation_none_sums_to_sum(neox, saes, method):
    kept = node_effects(
        neox, saes, SAME_LENGTH_PAIRS, method=method, aggregation="none", steps=3, progress=False
    )
    summed = node_effects(neox, saes, SAME_LENGTH_PAIRS, method=method, steps=3, progress=False)
    positions = neox.tokenize([SAME_LENGTH_PAIRS[0].clean_prefix]).input_ids.shape[1]
    for sub in kept:
        assert kept[sub].features.shape == (positions, saes[sub].width)
        assert kept[sub].error.shape == (positions,)
        assert summed[sub].features.shape == (saes[sub].width,) and summed[sub].error.ndim == 0
        torch.testing.assert_close(kept[sub].features.sum(0), summed[sub].features)
        torch.testing.assert_close(kept[sub].error.sum(0), summed[sub].error)
    assert kept.total_effect == pytest.approx(summed.total_effect)

    names = kept.nodes()
    assert len(names) == sum(positions * (saes[s].width + 1) for s in kept)
    assert names["resid_0/5@2"] == float(kept["resid_0"].features[2, 5])
    assert names[f"mlp_1/{ERROR}@4"] == float(kept["mlp_1"].error[4])
    assert kept.effect("resid_0/5@2") == names["resid_0/5@2"]
    summed_names = summed.nodes(threshold=1e-3)
    assert all("@" not in name for name in summed_names)
    assert all(abs(value) > 1e-3 for value in summed_names.values())
    assert summed.effect(f"embed/{ERROR}") == float(summed["embed"].error)
    with pytest.raises(KeyError, match="position"):
        summed.effect("resid_0/5@2")


# -- (6) batching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["atp", "ig", "exact"])
def test_batching_does_not_change_results(neox, saes, method):
    """Uneven batches (2, 2, 1) average over all five examples, padding included."""
    one = node_effects(neox, saes, PAIRS, method=method, batch_size=5, steps=3, progress=False)
    two = node_effects(neox, saes, PAIRS, method=method, batch_size=2, steps=3, progress=False)
    given = node_effects(neox, saes, [PAIRS[:4], PAIRS[4:]], method=method, steps=3, progress=False)
    for other in (two, given):
        assert_same_effects(one, other)
        assert other.total_effect == pytest.approx(one.total_effect, abs=1e-6)
        assert other.n_examples == 5


# -- (7) bad inputs -------------------------------------------------------------------------------


def test_bad_inputs(neox, saes):
    def run(pairs=PAIRS, **options):
        options.setdefault("method", "atp")
        return node_effects(neox, saes, pairs, progress=False, **options)

    uneven = PromptPair("the teachers near the desk", " are", "the teacher near desk", " is")
    with pytest.raises(TaskError, match="pair 2: clean prefix has 5 tokens, patch prefix 4"):
        run([PAIRS[0], uneven])
    multi = PromptPair("the teachers near the desk", " are", "the teacher near the desk", " is a")
    with pytest.raises(TaskError, match="patch_answer ' is a' is 2 tokens"):
        run([multi])
    with pytest.raises(ValueError, match="mlp_9.*Valid names"):
        run(submodules=["mlp_9"])
    with pytest.raises(ValueError, match="no dictionary for submodule 'mlp_0'"):
        node_effects(
            neox,
            {"resid_0": saes["resid_0"]},
            PAIRS,
            method="atp",
            submodules=["mlp_0"],
            progress=False,
        )
    with pytest.raises(ValueError, match="same number of tokens"):
        run(aggregation="none")
    with pytest.raises(ValueError, match="unknown method"):
        run(method="ig2")
    with pytest.raises(ExactRunsError, match="max_runs=10"):
        run(method="exact", max_runs=10)

    def broken(logits_last, info):
        values = logits_last[:, 0].clone()
        values[info.example == 3] = float("nan")
        return values

    for method in METHODS:
        with pytest.raises(MetricError, match=r"metric 'broken'.*\(dataset indices\): 3$"):
            run(method=method, metric=broken, batch_size=2, steps=2, max_runs=None)


def test_kl_to_clean(neox, saes):
    """KL from the clean run is flat at the clean run: AtP sees nothing, patching does."""
    subs = ["resid_1"]
    atp = node_effects(
        neox, saes, PAIRS[:3], method="atp", metric="kl_to_clean", submodules=subs, progress=False
    )
    exact = node_effects(
        neox, saes, PAIRS[:3], method="exact", metric="kl_to_clean", submodules=subs, progress=False
    )
    assert flat(atp).abs().max() < 1e-6 and atp.metric_clean == pytest.approx(0, abs=1e-6)
    assert exact.total_effect > 0 and flat(exact).min() > -1e-6 and flat(exact).max() > 0

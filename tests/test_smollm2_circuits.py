"""Correctness on a real pretrained model: SmolLM2-135M (30 layers, grouped-query attention).

Truths: plain PyTorch hooks on the Hugging Face modules for site reads and writes; exact
single-node patching computed here with one hook per submodule (no project code) for AtP and
IG; patching a whole submodule with a hook for IG's completeness; the model's own logits before
an edit for the edit context; and `circuits.load_model` of the same weights for the
TransformerLens bridge. Neuron nodes (``"neurons"``: each output dimension of a submodule) on
`en-sva-rc` pairs that share one token length, so effects per position can be compared.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import requires_smollm2
from test_models import EXPECTED_SITES, check_reads_and_writes

from attribution import node_effects
from circuits.dictionaries import load_dictionaries
from circuits.edit import Clamp, edited
from circuits.tasks import load_task

pytestmark = requires_smollm2

#: Early, middle and late submodules of each kind.
SUBMODULES = ["resid_5", "mlp_10", "attn_20", "resid_25"]
EXPECTED = EXPECTED_SITES["llama"]


@pytest.fixture(scope="module")
def pairs(smollm2_model):
    """Four `en-sva-rc` train pairs whose prompts all have the most common token length."""
    by_length: dict[int, list] = {}
    for pair in load_task("en-sva-rc", "train").pairs:
        length = len(smollm2_model.tokenizer(pair.clean_prefix)["input_ids"])
        by_length.setdefault(length, []).append(pair)
    return max(by_length.values(), key=len)[:4]


@pytest.fixture(scope="module")
def neurons(smollm2_model):
    return load_dictionaries(smollm2_model, "neurons", submodules=SUBMODULES)


@pytest.fixture(scope="module")
def effects(smollm2_model, neurons, pairs):
    """AtP and IG neuron effects per position, ``[pos, 576]`` per submodule."""
    return {
        method: node_effects(
            smollm2_model, neurons, pairs, method=method, aggregation="none", progress=False
        )
        for method in ("atp", "ig")
    }


def _module(model, sub: str) -> torch.nn.Module:
    kind, layer = sub.rsplit("_", 1)
    path, io = EXPECTED[kind]
    assert io == "output"
    return functools.reduce(getattr, path.format(i=layer).split("."), model.torch_model)


def _run(model, input_ids, module, edit=None):
    """Last-position logits ``[rows, vocab]`` and ``module``'s output ``[rows, pos, d_model]``,
    the output replaced by ``edit(output)`` when given."""
    seen = {}

    def hook(mod, args, output):
        act = output if isinstance(output, torch.Tensor) else output[0]
        seen["act"] = act.detach().clone()
        if edit is not None:
            new = edit(act)
            return new if isinstance(output, torch.Tensor) else (new, *output[1:])

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model.torch_model(input_ids=input_ids).logits[:, -1]
    finally:
        handle.remove()
    return logits, seen["act"]


def _logit_diff(model, logits, pairs, rows):
    """``logit[patch answer] - logit[clean answer]`` for each row (row i is pair ``rows[i]``)."""

    def ids(answers):
        return torch.tensor(
            [model.tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in answers]
        )

    patch = ids([pairs[i].patch_answer for i in rows])
    clean = ids([pairs[i].clean_answer for i in rows])
    index = torch.arange(len(rows))
    return logits[index, patch] - logits[index, clean]


def _tokens(model, prompts):
    batch = model.tokenize(prompts)
    assert bool(batch.attention_mask.all())  # one length: no padding
    return batch.input_ids


def _exact(model, pairs, sub, nodes):
    """Mean over pairs of m(clean with one neuron at one position set to its patch value) -
    m(clean), for each ``(position, neuron)`` in ``nodes`` ``[n, 2]``: ``[n]``."""
    module = _module(model, sub)
    clean = _tokens(model, [p.clean_prefix for p in pairs])
    patch = _tokens(model, [p.patch_prefix for p in pairs])
    _, patch_act = _run(model, patch, module)
    clean_logits, _ = _run(model, clean, module)
    n_pairs = len(pairs)
    example = torch.arange(n_pairs).repeat(len(nodes))  # row r: pair r % n_pairs, node r // n
    position = nodes[:, 0].repeat_interleave(n_pairs)
    neuron = nodes[:, 1].repeat_interleave(n_pairs)

    def patch_one(act):
        act = act.clone()
        rows = torch.arange(len(example))
        act[rows, position, neuron] = patch_act[example, position, neuron]
        return act

    logits, _ = _run(model, clean[example], module, patch_one)
    rows = example.tolist()
    m_patched = _logit_diff(model, logits, pairs, rows)
    m_clean = _logit_diff(model, clean_logits[example], pairs, rows)
    return (m_patched - m_clean).view(len(nodes), n_pairs).mean(1)


def _top_nodes(effect: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest-|effect| ``(position, neuron)`` of a ``[pos, width]`` tensor."""
    flat = effect.abs().flatten().topk(k).indices
    return torch.stack(torch.unravel_index(flat, effect.shape), dim=1)


def _relative_error(approx, exact) -> float:
    return float((approx - exact).norm() / exact.norm())


# -- sites -----------------------------------------------------------------------------------------


def test_site_reads_and_writes_match_plain_hooks(smollm2_model):
    names = {"embed"} | {f"{kind}_{i}" for kind in ("attn", "mlp", "resid") for i in (0, 14, 29)}
    batch = smollm2_model.tokenize(["The keys to the cabinet", "When Mary and John went"])
    check_reads_and_writes(smollm2_model, "llama", batch, names)


# -- node effects ----------------------------------------------------------------------------------


def test_atp_tracks_exact_patching_on_the_top_nodes(smollm2_model, pairs, effects):
    """On each submodule's 8 largest AtP nodes, exact single-node patching agrees with AtP to
    within 30% (relative L2) and in sign wherever the exact effect is not tiny."""
    for sub in SUBMODULES:
        atp = effects["atp"][sub].features
        nodes = _top_nodes(atp, 8)
        exact = _exact(smollm2_model, pairs, sub, nodes)
        approx = atp[nodes[:, 0], nodes[:, 1]]
        print(sub, "exact", exact.numpy().round(3), "atp", approx.numpy().round(3))
        assert exact.abs().max() > 5e-3, sub
        assert _relative_error(approx, exact) < 0.3, (sub, exact, approx)
        large = exact.abs() > 0.2 * exact.abs().max()
        assert bool((approx[large].sign() == exact[large].sign()).all()), sub


def test_ig_tracks_exact_patching_past_the_early_layers(smollm2_model, pairs, effects):
    """From layer 10 on, single neurons act nearly alone and IG's top nodes match exact
    patching; at resid_5 IG credits nodes for what they do together (the next test)."""
    for sub in SUBMODULES[1:]:
        ig = effects["ig"][sub].features
        nodes = _top_nodes(ig, 8)
        exact = _exact(smollm2_model, pairs, sub, nodes)
        approx = ig[nodes[:, 0], nodes[:, 1]]
        print(sub, "exact", exact.numpy().round(3), "ig", approx.numpy().round(3))
        assert _relative_error(approx, exact) < 0.3, (sub, exact, approx)


@pytest.mark.parametrize("sub", ["resid_5", "mlp_10"])
def test_ig_adds_up_to_patching_the_whole_submodule(smollm2_model, neurons, pairs, effects, sub):
    """Completeness: a submodule's IG effects sum to the effect of patching all of it, measured
    with a hook (for resid_5, the whole state, that is the total effect), up to the Riemann sum's
    error, which shrinks from 10 steps to 40."""
    module = _module(smollm2_model, sub)
    clean = _tokens(smollm2_model, [p.clean_prefix for p in pairs])
    patch = _tokens(smollm2_model, [p.patch_prefix for p in pairs])
    _, patch_act = _run(smollm2_model, patch, module)
    clean_logits, _ = _run(smollm2_model, clean, module)
    patched_logits, _ = _run(smollm2_model, clean, module, lambda act: patch_act)
    rows = list(range(len(pairs)))
    m_patched = _logit_diff(smollm2_model, patched_logits, pairs, rows)
    m_clean = _logit_diff(smollm2_model, clean_logits, pairs, rows)
    truth = float((m_patched - m_clean).mean())
    ig_10 = float(effects["ig"][sub].features.sum())
    ig_40 = node_effects(
        smollm2_model, {sub: neurons[sub]}, pairs, method="ig", steps=40, progress=False
    )
    ig = float(ig_40[sub].features.sum())
    atp = float(effects["atp"][sub].features.sum())
    print(f"{sub}: patched whole {truth:.4f}, IG sum {ig_10:.4f} / {ig:.4f}, AtP sum {atp:.4f}")
    assert abs(truth) > 0.1
    assert abs(ig - truth) < abs(ig_10 - truth)
    assert ig == pytest.approx(truth, rel=0.03)
    if sub == "resid_5":
        assert truth == pytest.approx(ig_40.total_effect, rel=1e-4)
        assert abs(atp - truth) > 2 * abs(ig - truth)  # the linear estimate misses the interaction


# -- edits -----------------------------------------------------------------------------------------


def test_an_edit_changes_the_logits_and_leaving_restores_them_bit_for_bit(smollm2_model):
    batch = smollm2_model.tokenize(["The keys to the cabinet", "The author that the guards like"])
    neurons = load_dictionaries(smollm2_model, "neurons", submodules=["resid_12", "mlp_3"])
    with torch.no_grad():
        before = smollm2_model.forward(batch)
        with edited(smollm2_model, neurons, [Clamp("resid_12/7", 30.0), Clamp("mlp_3/100", -5.0)]):
            during = smollm2_model.forward(batch)
        after = smollm2_model.forward(batch)
    assert (during - before).abs().max() > 0.1
    assert torch.equal(after, before)


# -- TransformerLens -------------------------------------------------------------------------------


def test_transformer_bridge_gives_the_same_reads_and_effects(
    smollm2_model, converted, pairs, effects
):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuits.models import load_model

    hf_model = AutoModelForCausalLM.from_pretrained(converted.dir)
    tokenizer = AutoTokenizer.from_pretrained(converted.dir)
    bridge = TransformerBridge.boot_transformers(
        str(converted.dir), hf_model=hf_model, tokenizer=tokenizer
    )
    # The bridge's own tokenizer prepends BOS, as TransformerLens does; SmolLM2's does not.
    prompt = "The keys to the cabinet"
    assert load_model(bridge).tokenize([prompt]).input_ids[0, 0] == tokenizer.bos_token_id
    model = load_model(bridge, tokenizer=tokenizer)
    assert model.torch_model is hf_model
    assert [s.name for s in model.submodules] == [s.name for s in smollm2_model.submodules]
    check_reads_and_writes(model, "llama", model.tokenize([prompt]), ["mlp_7"])

    batch = model.tokenize([p.clean_prefix for p in pairs])
    assert torch.equal(
        batch.input_ids, smollm2_model.tokenize([p.clean_prefix for p in pairs]).input_ids
    )
    with torch.no_grad():
        torch.testing.assert_close(
            model.forward(batch), smollm2_model.forward(batch), rtol=0, atol=2e-4
        )
    neurons = load_dictionaries(model, "neurons", submodules=SUBMODULES)
    atp = node_effects(model, neurons, pairs, method="atp", aggregation="none", progress=False)
    for sub in SUBMODULES:
        torch.testing.assert_close(
            atp[sub].features, effects["atp"][sub].features, rtol=1e-3, atol=1e-4
        )

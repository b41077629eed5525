"""Edited models: exact restoration, agreement with the ablation engine, steering against a
hand-computed unembedding, generation, and the ``circuits ablate`` command."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PAIRS, TINY_FAMILIES, random_saes, small_circuit

from circuits.ablation import Keep, ablation_values, keep_nodes, run_ablated
from circuits.edit import Ablate, Clamp, Steer, edited, next_token_change, read_nodes
from circuits.models import Batch, load_model


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir):
    model = load_model(str(tiny_model_dir("gpt2")))
    return model, random_saes(model, widths=(64,), seed=1)


def _batch(model):
    return model.tokenize([p.clean_prefix for p in PAIRS])


def _features(model, saes, sub, batch):
    """``[batch, pos, width]`` features of ``sub`` on an unedited forward."""
    seen = {}

    def grab(module, args, output):
        seen["x"] = output[0] if isinstance(output, tuple) else output

    handle = model.module(sub).register_forward_hook(grab)
    try:
        with torch.no_grad():
            model.forward(batch)
    finally:
        handle.remove()
    return seen["x"], saes[sub].encode(seen["x"])


class _Capture:
    """Records a module's output from a hook registered after the edit's (so it sees the
    edited activation)."""

    def __init__(self, module):
        self.module = module

    def __enter__(self):
        def grab(module, args, output):
            self.value = output[0] if isinstance(output, tuple) else output

        self.handle = self.module.register_forward_hook(grab)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _hook_counts(model):
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.torch_model.modules()]


def _some_edits():
    return [
        Ablate(["resid_0/3", "mlp_1/ε"]),
        Clamp("attn_1/5", 2.0),
        Steer("resid_1/7", 3.0),
    ]


def test_leaving_the_context_restores_logits_bit_for_bit(gpt2):
    model, saes = gpt2
    batch = _batch(model)
    hooks = _hook_counts(model)
    with torch.no_grad():
        before = model.forward(batch)
        with edited(model, saes, _some_edits()):
            inside = model.forward(batch)
        after = model.forward(batch)
        with pytest.raises(RuntimeError, match="boom"):
            with edited(model, saes, _some_edits()):
                raise RuntimeError("boom")
        after_error = model.forward(batch)
    assert not torch.equal(inside, before)
    assert torch.equal(after, before)
    assert torch.equal(after_error, before)
    assert _hook_counts(model) == hooks


def test_edits_that_change_nothing_keep_logits_exact(gpt2):
    model, saes = gpt2
    batch = _batch(model)
    _, f = _features(model, saes, "resid_0", batch)
    fires = (f > 0).flatten(0, 1).any(dim=0)  # [width]
    dead = int((~fires).nonzero()[0])
    with torch.no_grad():
        before = model.forward(batch)
        # A feature that never fires: zero-ablating, clamping to 0 and steering it only where it
        # fires change no activation, so the logits are the same bit for bit.
        nothing = [
            Ablate([f"resid_0/{dead}"]),
            Clamp(f"resid_0/{dead}", 0.0),
            Steer(f"resid_0/{dead}", 5.0, only_where_active=True),
            Steer("mlp_0/3", 0.0),
        ]
        with edited(model, saes, nothing):
            same = model.forward(batch)
    assert torch.equal(same, before)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_zero_ablation_matches_run_ablated(tiny_model_dir, family):
    model = load_model(str(tiny_model_dir(family)))
    saes = random_saes(model, widths=(64,), seed=2)
    batch = _batch(model)
    subs = ["attn_0", "resid_1"]
    names = ["attn_0/4", "attn_0/ε", "resid_1/9"]
    values = ablation_values(model, saes, None, "zero", submodules=subs)
    keep = {
        sub: Keep(~k.features, ~k.error)
        for sub, k in keep_nodes(model, saes, names, submodules=subs).items()
    }
    with torch.no_grad():
        expected = run_ablated(model, saes, batch, keep, values)
        with edited(model, saes, [Ablate(names)]):
            got = batch.at_last(model.forward(batch))
    assert torch.equal(got, expected), (got - expected).abs().max()


def test_mean_and_positioned_ablation_match_run_ablated(gpt2):
    model, saes = gpt2
    batch = _batch(model)
    reference = model.tokenize([p.patch_prefix for p in PAIRS])
    values = ablation_values(model, saes, reference, "mean", submodules=["mlp_0", "resid_0"])
    for names in (["mlp_0/1", "resid_0/ε"], ["mlp_0/1@2", "resid_0/ε@3", "resid_0/4@1"]):
        masks = keep_nodes(model, saes, names, submodules=values.submodules, n_pos=None)
        keep = {sub: Keep(~k.features, ~k.error) for sub, k in masks.items()}
        if keep["mlp_0"].positioned:  # positions past the named ones are kept, not ablated
            n_pos = batch.input_ids.shape[1]
            keep = {
                sub: Keep(
                    torch.cat([k.features, k.features.new_ones(n_pos - len(k.error), 64)]),
                    torch.cat([k.error, k.error.new_ones(n_pos - len(k.error))]),
                )
                for sub, k in keep.items()
            }
        with torch.no_grad():
            expected = run_ablated(model, saes, batch, keep, values)
            with edited(model, saes, [Ablate(names, how="mean", values=values)]):
                got = batch.at_last(model.forward(batch))
        assert torch.equal(got, expected), (names, (got - expected).abs().max())


def test_traces_see_the_edits(gpt2):
    model, saes = gpt2
    batch = _batch(model)
    with torch.no_grad(), edited(model, saes, _some_edits()):
        plain = model.forward(batch)
        with model.trace(batch):
            traced = model.read_logits().save()
    assert torch.equal(traced, plain)


def test_steering_the_last_residual_moves_logits_by_its_unembedding(gpt2):
    model, saes = gpt2
    batch = _batch(model)
    last = f"resid_{model.n_layers - 1}"
    index, scale = 11, 2.5
    x, _ = _features(model, saes, last, batch)
    direction = saes[last].W_dec[index]  # [d_model]
    hf = model.torch_model
    with torch.no_grad():
        # Independent truth: final layer norm and unembedding of the steered residual.
        expected = hf.lm_head(hf.transformer.ln_f(x + scale * direction))
        unsteered = hf.lm_head(hf.transformer.ln_f(x))
        with edited(model, saes, [Steer(f"{last}/{index}", scale)]):
            with _Capture(model.module(last)) as seen:
                got = model.forward(batch)
        assert torch.allclose(seen.value, x + scale * direction, atol=1e-6)
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
        # For a small step the change points along the direction's direct logit effect.
        eps = 1e-3
        with edited(model, saes, [Steer(f"{last}/{index}", eps)]):
            small = model.forward(batch) - unsteered
        _, jvp = torch.func.jvp(
            lambda h: hf.lm_head(hf.transformer.ln_f(h)), (x,), (direction.expand_as(x),)
        )
    cos = torch.nn.functional.cosine_similarity(small.flatten(), jvp.flatten(), dim=0)
    assert cos > 0.99, cos


def test_only_where_active_touches_only_firing_positions(gpt2):
    model, saes = gpt2
    batch = _batch(model)
    sub = "mlp_1"
    x, f = _features(model, saes, sub, batch)
    firing = f > 0  # [batch, pos, width]
    share = firing.float().mean(dim=(0, 1))
    index = int(((share - 0.5).abs()).argmin())  # fires at some positions, not all
    where = firing[..., index]  # [batch, pos]
    assert where.any() and not where.all()
    direction = saes[sub].W_dec[index]
    with torch.no_grad(), edited(model, saes, [Steer(f"{sub}/{index}", 4.0, True)]):
        with _Capture(model.module(sub)) as seen:
            model.forward(batch)
    assert torch.equal(seen.value[~where], x[~where])
    assert torch.allclose(seen.value[where], x[where] + 4.0 * direction, atol=1e-6)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_generation_sees_position_edits_at_exactly_their_token(tiny_model_dir, family, use_cache):
    model = load_model(str(tiny_model_dir(family)))
    saes = random_saes(model, widths=(64,), seed=1)
    prompt = model.tokenize([PAIRS[0].clean_prefix])
    n = prompt.input_ids.shape[1]

    def generate():
        new = model.generate(prompt, max_new_tokens=6, use_cache=use_cache)
        return torch.cat([prompt.input_ids, new], dim=1)

    last = f"resid_{model.n_layers - 1}"
    steer = Steer("resid_0/7", 10.0)
    # Edits at two positions that generate adds one at a time (n + 2 and n + 3): with a cache,
    # each is a call that continues the cache, so its absolute position must come from it.
    at = [Clamp(f"{last}/11@{n + 2}", 50.0), Ablate([f"mlp_0/ε@{n + 3}", f"attn_0/5@{n + 3}"])]
    with torch.no_grad():
        plain = generate()
        with edited(model, saes, [steer]):
            steered_only = generate()
        with edited(model, saes, [steer, *at]):
            steered = generate()
            # The edited model's own greedy choices over the whole sequence, in one forward:
            # every generated token was produced with the edits at its position.
            full = model.forward(
                Batch(steered, torch.ones_like(steered), steered.new_tensor([steered.shape[1] - 1]))
            )
        again = generate()
    assert not torch.equal(steered_only, plain)
    assert not torch.equal(steered, steered_only), "the position edits change no token"
    assert torch.equal(steered[0, : n + 2], steered_only[0, : n + 2]), "an edit came early"
    assert torch.equal(again, plain)
    choices = full[0, n - 1 : -1].argmax(-1)
    assert torch.equal(choices, steered[0, n:]), (choices.tolist(), steered[0, n:].tolist())


def test_bad_edits_are_refused_with_clear_errors(gpt2):
    model, saes = gpt2
    partial = {name: d for name, d in saes.items() if name != "mlp_1"}
    hooks = _hook_counts(model)
    with pytest.raises(ValueError, match="no edits"):
        with edited(model, saes, []):
            pass
    with pytest.raises(ValueError, match="malformed node name"):
        with edited(model, saes, [Ablate(["resid_0/x"])]):
            pass
    with pytest.raises(ValueError, match="No submodule"):
        with edited(model, saes, [Ablate(["resid_9/1"])]):
            pass
    with pytest.raises(ValueError, match="no dictionary"):
        with edited(model, partial, [Steer("mlp_1/1", 1.0)]):
            pass
    with pytest.raises(ValueError, match="out of range"):
        with edited(model, saes, [Clamp("resid_0/64", 1.0)]):
            pass
    with pytest.raises(ValueError, match="feature node"):
        with edited(model, saes, [Clamp("resid_0/ε", 1.0)]):
            pass
    with pytest.raises(ValueError, match="needs values"):
        Ablate(["resid_0/1"], how="mean")
    with pytest.raises(ValueError, match="at least one"):
        Ablate([])
    zero = ablation_values(model, saes, None, "zero", submodules=["resid_0"])
    with pytest.raises(ValueError, match="cover"):
        with edited(model, saes, [Ablate(["mlp_0/1"], values=zero)]):
            pass
    assert _hook_counts(model) == hooks


def test_read_nodes_takes_text_or_a_circuit(tmp_path):
    text = tmp_path / "nodes.txt"
    text.write_text("# kept nodes\nresid_0/3\n\nmlp_1/ε  # the error\n")
    assert read_nodes(text) == ["resid_0/3", "mlp_1/ε"]
    path = small_circuit().save(tmp_path / "circuit.json")
    assert sorted(read_nodes(path)) == sorted(n for n in small_circuit().graph if n != "y")
    (tmp_path / "bad.txt").write_text("resid_0/three\n")
    with pytest.raises(ValueError, match="malformed"):
        read_nodes(tmp_path / "bad.txt")


def test_cli_ablate_end_to_end(tiny_model_dir, tmp_path, capsys):
    from circuits.cli import main
    from circuits.dictionaries import save_dictionary

    path = tiny_model_dir("gpt2")
    model = load_model(str(path))
    saes = random_saes(model, widths=(64,), seed=3)
    for name, sae in saes.items():
        save_dictionary(sae, tmp_path / "dicts" / name)
    nodes = tmp_path / "nodes.txt"
    nodes.write_text("# two nodes\nresid_0/3\nmlp_1/ε\n")
    prompt = PAIRS[0].clean_prefix
    args = ["ablate", "--nodes", str(nodes), "--prompt", prompt, "--model", str(path)]
    args += ["--dictionaries", str(tmp_path / "dicts"), "--top", "3", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["nodes"] == 2 and result["ablation"] == "zero" and len(result["before"]) == 3
    expected = next_token_change(model, saes, prompt, [Ablate(["resid_0/3", "mlp_1/ε"])], top=3)
    for key in ("before", "after"):
        for row, want in zip(result[key], expected[key], strict=True):
            assert row["id"] == want["id"]
            assert row["before"] == pytest.approx(want["before"], abs=1e-6)
            assert row["after"] == pytest.approx(want["after"], abs=1e-6)
    assert result["total_variation"] > 0

    small_circuit().save(tmp_path / "circuit.json")
    for circuit in (tmp_path / "circuit.json", tmp_path):  # the file, or the directory
        args[2] = str(circuit)
        assert main(args[:-1] + ["--ablation", "mean"]) == 0
        out = capsys.readouterr().out
        assert "5 nodes mean-ablated" in out and "total variation" in out

    n_tokens = len(model.tokenize([prompt]).input_ids[0])
    nodes.write_text(f"resid_0/3@{n_tokens}\n")  # one past the last token
    args[2] = str(nodes)
    assert main(args) == 2
    assert f"position {n_tokens}, but" in capsys.readouterr().err
    nodes.write_text("resid_0/3\n")
    args[args.index("--prompt") + 1] = "the teachers near the zebra"  # no such word
    assert main(args) == 2
    assert "does not know" in capsys.readouterr().err

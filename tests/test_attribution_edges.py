"""Edge effects checked against independent truths.

Truths used here: a slow reference written plainly with PyTorch forward hooks (the upstream
submodule's features and error as leaves, every attributed submodule in between frozen at its
clean activation, one backward per kept downstream node); neurons in a residual block, where the
held-fixed Jacobian of ``resid_i`` is the identity and every edge can be written down by hand;
the chain rule where one submodule carries the whole state (edges out of a node add up to its
node effect); and a block made linear, where edges into a node add up to its node effect.
Models are the tiny random families of conftest with random ReLU SAEs of different widths.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import PAIRS, SAME_LENGTH_PAIRS, build_tiny_model, make_tiny_tokenizer, random_saes

from attribution import (
    ERROR,
    edge_effects,
    gradients,
    node_effects,
    pair_batches,
    run_spliced,
    wiring,
)
from attribution.ig import _mean_over_steps, _path
from attribution.kept import _kept_nodes
from attribution.passes import _decoder_rows, _held_fixed, _kept_encoder
from attribution.splice import repeat_batch
from circuits.dictionaries import SAE, BatchTopK, GatedSAE, Identity, JumpReLU, ReLU, TopK
from circuits.graph import Circuit, parse_node_name
from circuits.metrics import get_metric
from circuits.models import load_model
from circuits.tasks import PromptPair

WIDTHS = (48, 40, 24)


def mixed_dictionaries(model, seed: int = 1) -> dict:
    """Every shipped dictionary kind in turn (TopK, JumpReLU, BatchTopK, gated, ReLU, neurons),
    of five different widths."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    out = {}
    for i, sub in enumerate(model.submodules):
        d, width = sub.width, (48, 40, 24, 56, 32)[i % 5]
        w_enc, b_dec = randn(d, width) / math.sqrt(d), 0.1 * randn(d)
        kind = ("topk", "jumprelu", "batchtopk", "gated", "relu", "neurons")[i % 6]
        if kind == "neurons":
            out[sub.name] = Identity(d)
        elif kind == "gated":
            b_gate, r_mag, b_mag = 0.1 * randn(width), 0.1 * randn(width), 0.1 * randn(width)
            out[sub.name] = GatedSAE(w_enc, b_gate, r_mag, b_mag, 0.5 * w_enc.T, b_dec)
        else:
            activation = {
                "topk": TopK(8),
                "jumprelu": JumpReLU(0.1 * torch.rand(width, generator=generator)),
                "batchtopk": BatchTopK(8, 0.05),
                "relu": ReLU(),
            }[kind]
            out[sub.name] = SAE(w_enc, 0.05 * randn(width), 0.5 * w_enc.T, b_dec, activation)
    return out


def sfc_pairs(model) -> set[tuple[str, str]]:
    """SFC's wiring table, written out per layer."""
    names = {sub.name for sub in model.submodules}
    pairs = set()
    for i in range(model.n_layers):
        prev = f"resid_{i - 1}" if i else "embed"
        pairs |= {(f"mlp_{i}", f"resid_{i}"), (f"attn_{i}", f"resid_{i}")}
        if not model.parallel_attn:
            pairs.add((f"attn_{i}", f"mlp_{i}"))
        if prev in names:
            pairs |= {(prev, f"mlp_{i}"), (prev, f"attn_{i}"), (prev, f"resid_{i}")}
    return pairs


def top_nodes(model, saes, pairs, aggregation: str, per_submodule: int = 4) -> list[str]:
    """The largest AtP nodes of each submodule, plus error nodes (two positions with "none")."""
    effects = node_effects(
        model, saes, pairs, method="atp", aggregation=aggregation, progress=False
    )
    kept = []
    for sub in effects:
        record = effects[sub]
        flat = record.features.flatten()
        for k in flat.abs().topk(per_submodule).indices.tolist():
            if aggregation == "none":
                position, index = divmod(k, record.features.shape[-1])
                kept.append(f"{sub}/{index}@{position}")
            else:
                kept.append(f"{sub}/{k}")
        if aggregation == "none":
            last = record.features.shape[0] - 1
            kept += [f"{sub}/{ERROR}@{last}", f"{sub}/{ERROR}@{last - 2}"]
        else:
            kept.append(f"{sub}/{ERROR}")
    return kept


# -- the slow reference: plain hooks, one backward per kept downstream node ---------------------


def plain_forward(model, batch, replace: dict, record: str | None = None) -> dict:
    """A plain forward in which each submodule in ``replace`` outputs the given tensor.

    Returns ``{name: activation}`` for every submodule (the activation as the model saw it).
    """
    seen, handles = {}, []

    def make(name):
        def hook(module, args, output):
            activation = output if isinstance(output, torch.Tensor) else output[0]
            new = replace.get(name, activation)
            seen[name] = new
            return new if isinstance(output, torch.Tensor) else (new, *output[1:])

        return hook

    for sub in model.submodules:
        assert model.site(sub.name).io == "output"
        handles.append(model.module(sub.name).register_forward_hook(make(sub.name)))
    try:
        model.forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def atp_left(model, saes, batch, names, info):
    run = run_spliced(model, saes, batch.clean, split=names, grad=True)
    metric = get_metric("logit_diff")
    return gradients(metric(run.logits, info.with_clean_logits(run.logits)), run.values)


def ig_left(model, saes, batch, names, info, steps):
    """IG mean gradients per submodule, one interpolated pass each."""
    clean = run_spliced(model, saes, batch.clean, split=names).values
    patch = run_spliced(model, saes, batch.patch, split=names).values
    stacked, info = repeat_batch(batch.clean, steps), info.repeat(steps)
    out = {}
    for name in names:
        run = run_spliced(
            model, saes, stacked, values={name: _path(clean[name], patch[name], steps)}, grad=True
        )
        grad = gradients(get_metric("logit_diff")(run.logits, info), run.values)[name]
        out[name] = _mean_over_steps(grad, steps)
    return out


def at(tensor, index, position):
    """``tensor[:, position, index]`` summed over positions when ``position`` is None."""
    if position is None:
        return tensor[:, :, index] if index is not None else tensor
    return tensor[:, position, index] if index is not None else tensor[:, position]


def slow_edges(model, saes, pairs, kept, *, batch_size, left=atp_left) -> dict:
    names = [sub.name for sub in model.submodules if sub.name in saes]
    nodes = {name: parse_node_name(name) for name in kept}
    by_sub = {sub: [n for n in kept if nodes[n].submodule == sub] for sub in names}
    sums, count = {}, 0
    for batch in pair_batches(model, pairs, batch_size=batch_size):
        count += len(batch)
        clean_logits = batch.clean.at_last(model.forward(batch.clean)).detach()
        info = batch.info.with_clean_logits(clean_logits)
        grads = left(model, saes, batch, names, info)
        with torch.no_grad():
            x_clean = plain_forward(model, batch.clean, {})
        clean = run_spliced(model, saes, batch.clean, split=names).values
        patch = run_spliced(model, saes, batch.patch, split=names).values
        mask = batch.mask[..., None]
        for up, down in sfc_pairs(model):
            if not by_sub[up] or not by_sub[down]:
                continue
            between = names[names.index(up) + 1 : names.index(down)]
            f = saes[up].encode(x_clean[up]).detach().requires_grad_(True)
            e = (x_clean[up] - saes[up].decode(f)).detach().requires_grad_(True)
            replace = {up: saes[up].decode(f) + e} | {s: x_clean[s].detach() for s in between}
            x_down = plain_forward(model, batch.clean, replace)[down]
            f_down = saes[down].encode(x_down)
            e_down = x_down - saes[down].decode(f_down)
            for d in by_sub[down]:
                node = nodes[d]
                g = grads[down]
                if node.index is not None:
                    target = at(g.features * mask * f_down, node.index, node.position).sum()
                else:
                    target = at(g.error * mask * e_down, None, node.position).sum()
                grad_f, grad_e = torch.autograd.grad(target, [f, e], retain_graph=True)
                delta_f = (patch[up].features - clean[up].features) * mask
                delta_e = (patch[up].error - clean[up].error) * mask
                for u in by_sub[up]:
                    node_u = nodes[u]
                    if node_u.index is not None:
                        value = at(grad_f * delta_f, node_u.index, node_u.position).sum()
                    else:
                        value = at(grad_e * delta_e, None, node_u.position).sum()
                    sums[(u, d)] = sums.get((u, d), 0.0) + float(value)
        last = names[-1]
        for u in by_sub[last]:
            node_u = nodes[u]
            g, c, p = grads[last], clean[last], patch[last]
            if node_u.index is not None:
                value = at(
                    g.features * (p.features - c.features) * mask, node_u.index, node_u.position
                )
            else:
                value = at(g.error * (p.error - c.error) * mask, None, node_u.position)
            sums[(u, "y")] = sums.get((u, "y"), 0.0) + float(value.sum())
    return {key: value / count for key, value in sums.items()}


def assert_same_edges(fast: dict, slow: dict, atol: float = 1e-7, rtol: float = 1e-4) -> None:
    extra = set(fast) - set(slow)
    assert not extra, f"edges the reference does not wire: {sorted(extra)[:5]}"
    keys = sorted(slow)
    got = torch.tensor([fast.get(key, 0.0) for key in keys], dtype=torch.float64)
    want = torch.tensor([slow[key] for key in keys], dtype=torch.float64)
    scale = float(want.abs().max())
    torch.testing.assert_close(got, want, atol=atol + rtol * scale, rtol=rtol)


# -- wiring: SFC's table, and exactly what the held-fixed graph reaches -------------------------


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2", "llama", "gemma2"])
def test_wiring_is_sfc_table_and_what_the_graph_reaches(tiny_models, family):
    """The held-fixed forward cuts every attributed submodule: (f_d, e_d) reaches the leaves of
    exactly the submodules SFC wires into d (parallel blocks have no attn_i -> mlp_i)."""
    model = tiny_models(family)
    assert model.parallel_attn == (family == "gpt_neox")
    saes = random_saes(model, WIDTHS)
    names = [sub.name for sub in model.submodules]
    wires = wiring(model, names)
    pairs = {(up, down) for down, ups in wires.items() if down != "y" for up in ups}
    assert pairs == sfc_pairs(model)
    assert wires["y"] == (f"resid_{model.n_layers - 1}",)

    batch = model.tokenize(["the teachers near the desk", "the cat sat"])
    every = [f"{name}/{k}" for name in names for k in range(saes[name].width)]
    kept = _kept_nodes(every, names, saes, model, positions=False)
    rows = {n: _decoder_rows(saes[n], kept[n].columns, model.device, model.dtype) for n in names}
    splits, _ = _held_fixed(model, saes, batch, names, kept, rows)
    for i, down in enumerate(names):
        f_down, e_down = splits[down].attached
        earlier = names[:i]
        leaves = [leaf for up in earlier for leaf in splits[up].leaves]
        if not leaves:
            continue
        grads = torch.autograd.grad(
            f_down.sum() + e_down.sum(), leaves, allow_unused=True, retain_graph=True
        )
        reached = {
            up
            for k, up in enumerate(earlier)
            if {grads[2 * k] is None, grads[2 * k + 1] is None} != {True}
        }
        assert reached == set(wires[down]), down


# -- neurons in a residual block: edges by hand --------------------------------------------------


@pytest.mark.parametrize("family", ["gpt_neox", "gpt2"])
def test_residual_edges_by_hand(tiny_models, family):
    """With neurons, resid_i = resid_{i-1} + attn_i + mlp_i and the other two held fixed, so the
    Jacobian of each term is the identity: IE(u/j -> resid_i/k) = [j == k] g_k delta_u,k."""
    model = tiny_models(family)
    neurons = {sub.name: Identity(sub.width) for sub in model.submodules}
    names = list(neurons)
    units = [0, 3, 7, 12]
    kept = [f"{sub}/{k}" for sub in ("attn_1", "mlp_1", "resid_0", "resid_1") for k in units]
    edges = edge_effects(model, neurons, PAIRS, kept, batch_size=2, progress=False)

    expected = {}
    for batch in pair_batches(model, PAIRS, batch_size=5):
        logits = batch.clean.at_last(model.forward(batch.clean)).detach()
        grads = atp_left(model, neurons, batch, names, batch.info.with_clean_logits(logits))
        clean = run_spliced(model, neurons, batch.clean, split=names).values
        patch = run_spliced(model, neurons, batch.patch, split=names).values
        g = grads["resid_1"].features * batch.mask[..., None]  # [batch, pos, d_model]
        for up in ("attn_1", "mlp_1", "resid_0"):
            delta = patch[up].features - clean[up].features
            per_unit = (g * delta).sum(dim=(0, 1)) / len(batch)  # [d_model]
            for j in units:
                for k in units:
                    expected[(f"{up}/{j}", f"resid_1/{k}")] = float(per_unit[k]) if j == k else 0.0
    for key, value in expected.items():
        assert edges.get(key, 0.0) == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert sum(abs(v) for v in expected.values()) > 0
    assert not any(u.split("/")[1] != d.split("/")[1] for u, d in edges if d.startswith("resid_1"))


# -- the batched computation against the slow reference ------------------------------------------


@pytest.mark.parametrize(
    "family, aggregation",
    [
        ("gpt_neox", "sum"),
        ("gpt_neox", "none"),
        ("gpt2", "sum"),
        ("gpt2", "none"),
        ("llama", "sum"),
    ],
)
def test_matches_slow_reference(tiny_models, family, aggregation):
    """Parallel and sequential blocks, SAEs of three widths, uneven batches of two: the batched
    products equal one backward per downstream node, in every direction and chunk size, and the
    edges out of (and into) error nodes are real."""
    model = tiny_models(family)
    saes = random_saes(model, WIDTHS)
    pairs = PAIRS if aggregation == "sum" else SAME_LENGTH_PAIRS
    kept = top_nodes(model, saes, pairs, aggregation)
    slow = slow_edges(model, saes, pairs, kept, batch_size=2)
    assert max(abs(v) for v in slow.values()) > 1e-3

    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jvp falls back to vjp into attention on CPU
        for direction, chunk_size in (("vjp", 1), ("vjp", 3), ("jvp", 2), ("auto", None)):
            results[(direction, chunk_size)] = edge_effects(
                model,
                saes,
                pairs,
                kept,
                aggregation=aggregation,
                batch_size=2,
                chunk_size=chunk_size,
                direction=direction,
                progress=False,
            )
    for fast in results.values():
        assert_same_edges(fast, slow)

    edges = results[("vjp", 3)]
    from_errors = {k: v for k, v in edges.items() if ERROR in k[0] and k[1] != "y"}
    into_errors = {k: v for k, v in edges.items() if ERROR in k[1]}
    assert from_errors and max(abs(v) for v in from_errors.values()) > 1e-4
    assert into_errors and max(abs(v) for v in into_errors.values()) > 1e-4
    ups = {parse_node_name(u).submodule for u, _ in from_errors}
    assert {"resid_0", "attn_1", "mlp_1"} <= ups
    if aggregation == "sum":  # with "none" the kept embed errors sit where the tokens agree
        assert "embed" in ups
    if aggregation == "none":
        assert all(
            parse_node_name(u).position <= parse_node_name(d).position for u, d in edges if d != "y"
        )


def test_kept_columns_encoder_matches_the_full_one(tiny_models):
    """The narrow encoder of each shipped kind gives encode(x)[..., columns] and its Jacobian."""
    model = tiny_models("gpt2")
    dictionaries = mixed_dictionaries(model)
    x = torch.randn(2, 5, model.d_model, generator=torch.Generator().manual_seed(0))
    for name, dictionary in dictionaries.items():
        columns = torch.tensor([1, 4, 5, 17, 23])
        narrow = _kept_encoder(dictionary, columns)
        assert narrow is not None, name
        x_full, x_narrow = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        full = dictionary.encode(x_full)
        got = narrow(x_narrow, full.detach())
        torch.testing.assert_close(got, full[..., columns])
        assert got.abs().sum() > 0, name
        cotangent = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
        (want_grad,) = torch.autograd.grad((full[..., columns] * cotangent).sum(), x_full)
        (got_grad,) = torch.autograd.grad((got * cotangent).sum(), x_narrow)
        torch.testing.assert_close(got_grad, want_grad)


def test_every_dictionary_kind_matches_slow_reference(tiny_models):
    model = tiny_models("gpt2")
    dictionaries = mixed_dictionaries(model)
    kept = top_nodes(model, dictionaries, PAIRS, "sum")
    slow = slow_edges(model, dictionaries, PAIRS, kept, batch_size=2)
    fast = edge_effects(
        model, dictionaries, PAIRS, kept, batch_size=2, chunk_size=3, progress=False
    )
    assert_same_edges(fast, slow)


def test_ig_left_vector(tiny_models):
    """gradient="ig" uses the downstream submodule's IG mean gradient (as the reference does) with
    the clean-input Jacobian; one step is AtP; y gets the IG node effects."""
    model = tiny_models("gpt_neox")
    saes = random_saes(model, WIDTHS)
    kept = top_nodes(model, saes, PAIRS, "sum", per_submodule=3)
    steps = 3
    fast = edge_effects(model, saes, PAIRS, kept, gradient="ig", steps=steps, progress=False)
    slow = slow_edges(
        model,
        saes,
        PAIRS,
        kept,
        batch_size=16,
        left=lambda m, s, b, n, i: ig_left(m, s, b, n, i, steps),
    )
    assert_same_edges(fast, slow)

    ig = node_effects(model, saes, PAIRS, method="ig", steps=steps, progress=False)
    following = edge_effects(model, saes, PAIRS, kept, effects=ig, progress=False)
    assert following == pytest.approx(fast, rel=1e-5, abs=1e-9)
    for (up, down), weight in following.items():
        if down == "y":
            assert weight == pytest.approx(ig.effect(up), rel=1e-4, abs=1e-7)

    atp = edge_effects(model, saes, PAIRS, kept, progress=False)
    for gradient in ("ig", "ig-joint"):
        one = edge_effects(model, saes, PAIRS, kept, gradient=gradient, steps=1, progress=False)
        assert one == pytest.approx(atp, rel=1e-4, abs=1e-8)
    assert fast != pytest.approx(atp, rel=1e-3, abs=1e-6)


# -- relations the definitions imply -------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["sum", "none", "zero-ablation"])
def test_edges_out_of_a_node_add_up_to_its_effect(tiny_models, aggregation):
    """resid_1 carries the whole state of a 2-layer model, so every path from resid_0 to the
    metric passes through it; with all resid_1 nodes kept, the chain rule and the pass-through
    split make sum_d IE(u -> d) = AtP effect of u exactly, for every resid_0 node u. Without
    patch prompts (zero-ablation) the same holds with delta = -clean."""
    model = tiny_models("gpt2")
    saes = random_saes(model, WIDTHS)
    subs = ["resid_0", "resid_1"]
    pairs = SAME_LENGTH_PAIRS if aggregation == "none" else PAIRS
    if aggregation == "zero-ablation":
        pairs, aggregation = [PromptPair(p.clean_prefix, p.clean_answer) for p in pairs], "sum"
    effects = node_effects(
        model, saes, pairs, method="atp", aggregation=aggregation, submodules=subs, progress=False
    )
    every = list(effects.nodes())
    edges = edge_effects(model, saes, pairs, every, effects=effects, batch_size=2, progress=False)
    outgoing = {}
    for (up, down), weight in edges.items():
        if down != "y":
            assert up.startswith("resid_0/") and down.startswith("resid_1/")
            outgoing[up] = outgoing.get(up, 0.0) + weight
    nodes = effects.nodes()
    scale = max(abs(v) for v in nodes.values())
    for name, effect in nodes.items():
        if name.startswith("resid_0/"):
            assert outgoing.get(name, 0.0) == pytest.approx(effect, abs=1e-5 * scale), name
        else:
            assert edges[(name, "y")] == pytest.approx(effect, abs=1e-6 * scale), name
    assert sum(abs(v) for k, v in outgoing.items() if ERROR in k) > 1e-3 * scale


@pytest.mark.parametrize("aggregation", ["sum", "none"])
def test_edges_into_a_linear_node_add_up_to_its_effect(aggregation):
    """Make layer 1's MLP linear (no norm, identity activation) in a parallel block: mlp_1 is then
    affine in resid_0, its only upstream, so summed over every resid_0 node (features and error)
    IE(u -> mlp_1/k) = dm/dmlp_1,k * J * delta resid_0 = the AtP effect of mlp_1/k."""
    torch_model = build_tiny_model("gpt_neox", seed=2)
    torch_model.gpt_neox.layers[1].mlp.act = torch.nn.Identity()
    torch_model.gpt_neox.layers[1].post_attention_layernorm = torch.nn.Identity()
    with torch.no_grad():  # random-init logits are tiny; scale them up
        torch_model.get_output_embeddings().weight.mul_(100.0)
    model = load_model(torch_model, tokenizer=make_tiny_tokenizer())
    dictionaries = {
        "resid_0": random_saes(model, WIDTHS)["resid_0"],
        "mlp_1": Identity(model.d_model),
    }
    pairs = PAIRS if aggregation == "sum" else SAME_LENGTH_PAIRS
    effects = node_effects(
        model, dictionaries, pairs, method="atp", aggregation=aggregation, progress=False
    )
    every = list(effects.nodes())
    edges = edge_effects(model, dictionaries, pairs, every, effects=effects, progress=False)
    incoming = {}
    for (_, down), weight in edges.items():
        if down != "y":
            incoming[down] = incoming.get(down, 0.0) + weight
    mlp = {name: v for name, v in effects.nodes().items() if name.startswith("mlp_1/")}
    scale = max(abs(v) for v in mlp.values())
    assert scale > 1e-3
    for name, effect in mlp.items():
        assert incoming.get(name, 0.0) == pytest.approx(effect, abs=1e-5 * scale), name


def test_output_edges_without_a_final_residual(tiny_models):
    """Attributing only mlp_0 and attn_1: both reach y; attn_1 (the last) gets its node effects,
    mlp_0 its direct effect, checked with plain hooks that freeze attn_1 at its clean value."""
    model = tiny_models("gpt2")
    saes = random_saes(model, WIDTHS)
    subs = ["mlp_0", "attn_1"]
    assert wiring(model, subs) == {"mlp_0": (), "attn_1": ("mlp_0",), "y": ("mlp_0", "attn_1")}
    effects = node_effects(model, saes, PAIRS, method="atp", submodules=subs, progress=False)
    kept = effects.nodes()
    edges = edge_effects(model, saes, PAIRS, kept, effects=effects, progress=False)
    for name in kept:
        if name.startswith("attn_1/"):
            assert edges[(name, "y")] == pytest.approx(effects.effect(name), rel=1e-4, abs=1e-8)

    (batch,) = pair_batches(model, PAIRS, batch_size=16)
    with torch.no_grad():
        x_clean = plain_forward(model, batch.clean, {})
    sae = saes["mlp_0"]
    f = sae.encode(x_clean["mlp_0"]).detach().requires_grad_(True)
    e = (x_clean["mlp_0"] - sae.decode(f)).detach().requires_grad_(True)
    replace = {"mlp_0": sae.decode(f) + e, "attn_1": x_clean["attn_1"].detach()}
    handles = []
    for name, value in replace.items():
        handles.append(
            model.module(name).register_forward_hook(
                lambda m, a, o, value=value: (
                    value if isinstance(o, torch.Tensor) else (value, *o[1:])
                )
            )
        )
    try:
        logits = batch.clean.at_last(model.forward(batch.clean))
    finally:
        for handle in handles:
            handle.remove()
    metric = get_metric("logit_diff")(logits, batch.info).sum()
    grad_f, grad_e = torch.autograd.grad(metric, [f, e])
    patch = run_spliced(model, saes, batch.patch, split=subs).values["mlp_0"]
    mask = batch.mask[..., None]
    direct_f = (grad_f * (patch.features - f.detach()) * mask).sum(dim=(0, 1)) / len(batch)
    direct_e = (grad_e * (patch.error - e.detach()) * mask).sum() / len(batch)
    for name in kept:
        if name.startswith("mlp_0/"):
            index = name.split("/")[1]
            want = direct_e if index == ERROR else direct_f[int(index)]
            assert edges.get((name, "y"), 0.0) == pytest.approx(float(want), rel=1e-4, abs=1e-8)
    assert abs(float(direct_e)) > 1e-4


def test_circuit_from_edges(tiny_models):
    """The result plugs into Circuit.from_effects as it is, with and without positions."""
    model = tiny_models("gpt_neox")
    saes = random_saes(model, WIDTHS)
    for aggregation, pairs in (("sum", PAIRS), ("none", SAME_LENGTH_PAIRS)):
        effects = node_effects(
            model, saes, pairs, method="atp", aggregation=aggregation, progress=False
        )
        magnitudes = sorted(abs(v) for v in effects.nodes().values())
        kept = effects.nodes(threshold=magnitudes[-40])  # about the 40 largest nodes
        edges = edge_effects(model, saes, pairs, kept, effects=effects, progress=False)
        circuit = Circuit.from_effects(
            kept, edges, {"aggregation": aggregation, "total_effect": effects.total_effect}
        )
        assert circuit.graph.number_of_edges() == len(edges) > 0
        assert circuit.graph.in_degree("y") > 0


# -- bad inputs -----------------------------------------------------------------------------------


def test_bad_inputs(tiny_models):
    model = tiny_models("gpt_neox")
    saes = random_saes(model, WIDTHS)

    def run(nodes, pairs=PAIRS, dictionaries=saes, **options):
        return edge_effects(model, dictionaries, pairs, nodes, progress=False, **options)

    with pytest.raises(ValueError, match="malformed node name 'resid_0/x'"):
        run(["resid_0/x"])
    with pytest.raises(ValueError, match="malformed node name 'resid0/3'"):
        run({"resid0": [3]})
    with pytest.raises(ValueError, match="No submodule 'resid_7'"):
        run(["resid_7/1"])
    partial = {name: saes[name] for name in ("resid_0", "resid_1")}
    with pytest.raises(ValueError, match="'mlp_1/3' is in mlp_1, which is not attributed"):
        run(["resid_0/1", "mlp_1/3"], dictionaries=partial)
    with pytest.raises(ValueError, match="not attributed"):
        run(["resid_0/1", "mlp_1/3"], submodules=["resid_0", "resid_1"])
    with pytest.raises(ValueError, match=r"has 24 features \(0..23\)"):
        run({"mlp_0": [24]})
    with pytest.raises(ValueError, match="without '@<position>'"):
        run(["resid_0/1@2"])
    with pytest.raises(ValueError, match="with '@<position>'"):
        run(["resid_0/1"], pairs=SAME_LENGTH_PAIRS, aggregation="none")
    with pytest.raises(ValueError, match=r"6 tokens \(positions 0..5\)"):
        run({"resid_0": [(1, 6)]}, pairs=SAME_LENGTH_PAIRS, aggregation="none")
    with pytest.raises(ValueError, match="same number of tokens"):
        run(["resid_0/1@2"], aggregation="none")
    with pytest.raises(TypeError, match="effects="):
        run(node_effects(model, saes, PAIRS, method="atp", progress=False))
    with pytest.raises(TypeError, match="not one string"):
        run("resid_0/1")
    effects = node_effects(model, saes, PAIRS, method="atp", progress=False)
    with pytest.raises(ValueError, match="aggregation='none' contradicts"):
        run(["resid_0/1"], effects=effects, aggregation="none")
    for option, value in (
        ("aggregation", "mean"),
        ("gradient", "exact"),
        ("direction", "both"),
        ("chunk_size", 0),
        ("steps", 0),
    ):
        with pytest.raises(ValueError, match=option):
            run(["resid_0/1"], **{option: value})

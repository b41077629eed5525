"""load_model and submodule addressing, checked against plain PyTorch hooks on tiny models.

The truth here is independent of circuits.models: for every family the expected module path of
each submodule is written out below, and a plain forward hook on that module (reading a tensor
output or a tuple's first element, or the first positional input) says what a read must return
and what a write must do to the logits. Batches hold three prompts of different lengths.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import TINY_FAMILIES, build_tiny_model, make_tiny_config, make_tiny_tokenizer

from circuits import models
from circuits.models import (
    Architecture,
    Site,
    Submodule,
    families,
    load_model,
    loading,
    register_architecture,
)

PROMPTS = ["the teachers near the desk are", "the cat", "a dog sat on the mat that was"]

#: Independent truth: (module path from the root, "output" | "input") per submodule kind.
EXPECTED_SITES = {
    "gpt2": {
        "embed": ("transformer.wte", "output"),
        "attn": ("transformer.h.{i}.attn", "output"),
        "mlp": ("transformer.h.{i}.mlp", "output"),
        "resid": ("transformer.h.{i}", "output"),
    },
    "gpt_neox": {
        "embed": ("gpt_neox.embed_in", "output"),
        "attn": ("gpt_neox.layers.{i}.attention", "output"),
        "mlp": ("gpt_neox.layers.{i}.mlp", "output"),
        "resid": ("gpt_neox.layers.{i}", "output"),
    },
    "llama": {
        "embed": ("model.embed_tokens", "output"),
        "attn": ("model.layers.{i}.self_attn", "output"),
        "mlp": ("model.layers.{i}.mlp", "output"),
        "resid": ("model.layers.{i}", "output"),
    },
    "gemma2": {
        "attn": ("model.layers.{i}.self_attn.o_proj", "input"),
        "mlp": ("model.layers.{i}.post_feedforward_layernorm", "output"),
        "resid": ("model.layers.{i}", "output"),
    },
}


def expected_site(family: str, sub: Submodule) -> tuple[str, str]:
    path, io = EXPECTED_SITES[family][sub.kind]
    return path.format(i=sub.layer), io


def module_at(root: torch.nn.Module, path: str) -> torch.nn.Module:
    return functools.reduce(getattr, path.split("."), root)


def hooked_forward(model, batch, path, io, edit=None):
    """A plain forward with one PyTorch hook: (activation seen, logits [batch, pos, vocab])."""
    module = module_at(model.torch_model, path)
    seen = {}

    def on_output(mod, args, output):
        act = output if isinstance(output, torch.Tensor) else output[0]
        seen["act"] = act.detach().clone()
        if edit is not None:
            new = edit(act)
            return new if isinstance(output, torch.Tensor) else (new, *output[1:])

    def on_input(mod, args):
        seen["act"] = args[0].detach().clone()
        if edit is not None:
            return (edit(args[0]), *args[1:])

    if io == "output":
        handle = module.register_forward_hook(on_output)
    else:
        handle = module.register_forward_pre_hook(on_input)
    try:
        with torch.no_grad():
            out = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        handle.remove()
    return seen["act"], out.logits


def check_reads_and_writes(model, family, batch, names=None):
    """Every submodule (or those in ``names``): read == hook, and write(+vec) changes logits
    exactly as the hook edit."""
    subs = [s for s in model.submodules if names is None or s.name in names]
    reads = {}
    with model.trace(batch):
        for sub in subs:
            reads[sub.name] = model.read(sub).save()

    generator = torch.Generator().manual_seed(1)
    for sub in subs:
        path, io = expected_site(family, sub)
        assert model.site(sub) == Site(path, io)
        assert model.module(sub) is module_at(model.torch_model, path)

        expected_act, clean_logits = hooked_forward(model, batch, path, io)
        got = reads[sub.name]
        assert got.shape == (len(batch), batch.input_ids.shape[1], sub.width), sub.name
        torch.testing.assert_close(got, expected_act, rtol=0, atol=1e-6, msg=sub.name)

        vec = torch.randn(sub.width, generator=generator).to(model.dtype)
        _, expected_logits = hooked_forward(model, batch, path, io, edit=lambda a, vec=vec: a + vec)
        with model.trace(batch):
            model.write(sub, model.read(sub) + vec)
            logits = model.read_logits().save()
        assert (expected_logits - clean_logits).abs().max() > 1e-4, sub.name
        torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5, msg=sub.name)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_model(request, tiny_model_dir):
    return request.param, load_model(tiny_model_dir(request.param))


# -- loading and facts ----------------------------------------------------------------------------


def test_submodules_in_forward_order(family_model):
    family, model = family_model
    config = model.torch_model.config
    names = [sub.name for sub in model.submodules]
    layered = [f"{kind}_{i}" for i in range(2) for kind in ("attn", "mlp", "resid")]
    assert names == (layered if family == "gemma2" else ["embed", *layered])
    assert model.n_layers == 2 and model.d_model == 32
    assert model.vocab_size == config.vocab_size
    assert model.parallel_attn == (family == "gpt_neox")
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    for sub in model.submodules:
        assert sub.layer == (None if sub.kind == "embed" else int(sub.name.rsplit("_", 1)[1]))
        expected_width = 48 if (family == "gemma2" and sub.kind == "attn") else 32
        assert sub.width == expected_width, sub.name
    assert model.submodule("mlp_1") == model.submodules[names.index("mlp_1")]


def test_unknown_submodule_lists_valid_names(family_model):
    _, model = family_model
    with pytest.raises(ValueError, match="mlp_7") as error:
        model.submodule("mlp_7")
    assert "resid_1" in str(error.value) and "attn_0" in str(error.value)
    with pytest.raises(ValueError, match="Valid names"):
        with model.trace(model.tokenize(["the cat"])):
            model.read("nonsense")


# -- reading and writing --------------------------------------------------------------------------


def test_read_and_write_match_plain_hooks(family_model):
    family, model = family_model
    check_reads_and_writes(model, family, model.tokenize(PROMPTS))


def test_invokes_of_different_lengths(family_model):
    """nnsight pads invokes to one width; padding on the right keeps each Batch.last valid."""
    _, model = family_model
    long, short = model.tokenize(PROMPTS), model.tokenize(["the cat sat"])
    with model.lm.trace() as tracer:
        with tracer.invoke(**model.inputs(long)):
            long_act = model.read("resid_1").save()
            long_last = long.at_last(model.read_logits()).save()
        with tracer.invoke(**model.inputs(short)):
            short_last = short.at_last(model.read_logits()).save()
    with torch.no_grad():
        torch.testing.assert_close(long_last, long.at_last(model.forward(long)), rtol=0, atol=1e-5)
        torch.testing.assert_close(
            short_last, short.at_last(model.forward(short)), rtol=0, atol=1e-5
        )
    assert long_act.shape == (3, long.input_ids.shape[1], model.d_model)


def test_write_rejects_wrong_shape(family_model):
    _, model = family_model
    batch = model.tokenize(PROMPTS)
    with pytest.raises(ValueError, match="cannot write"):
        with model.trace(batch):
            model.write("resid_0", torch.zeros(model.d_model))


def test_gradient_through_tuple_output(tiny_model_dir):
    """GPT-NeoX attention returns (out, weights): .grad must be the activation's, per row."""
    model = load_model(tiny_model_dir("gpt_neox"))
    batch = model.tokenize(PROMPTS)
    with model.trace(batch):
        act = model.read("attn_0")
        metric = batch.at_last(model.read_logits())[:, 5].sum()
        with metric.backward():
            grad = act.grad.save()

    module = model.module("attn_0")
    seen = {}

    def keep(mod, args, output):
        output[0].retain_grad()
        seen["act"] = output[0]

    handle = module.register_forward_hook(keep)
    try:
        logits = model.forward(batch)
    finally:
        handle.remove()
    batch.at_last(logits)[:, 5].sum().backward()
    assert grad.shape == (3, batch.input_ids.shape[1], 32)
    torch.testing.assert_close(grad, seen["act"].grad, rtol=0, atol=1e-6)
    assert grad[2].abs().sum() > 0


def test_logits_helper_inside_trace_matches_plain_forward(family_model):
    _, model = family_model
    batch = model.tokenize(PROMPTS)
    with model.trace(batch):
        last = batch.at_last(model.read_logits()).save()
    with torch.no_grad():
        plain = batch.at_last(model.forward(batch))
    assert last.shape == (3, model.vocab_size)
    torch.testing.assert_close(last, plain, rtol=0, atol=1e-6)


# -- padding --------------------------------------------------------------------------------------


def test_padding_keeps_last_token_logits(family_model):
    _, model = family_model
    batch = model.tokenize(PROMPTS)
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert batch.last.tolist() == [n - 1 for n in lengths]
    assert batch.attention_mask.sum(dim=1).tolist() == lengths
    assert batch.input_ids[0, 0] == model.tokenizer.bos_token_id  # right padding: BOS first
    with torch.no_grad():
        together = batch.at_last(model.forward(batch))
        for row, prompt in enumerate(PROMPTS):
            alone_batch = model.tokenize([prompt])
            alone = alone_batch.at_last(model.forward(alone_batch))[0]
            torch.testing.assert_close(together[row], alone, rtol=0, atol=1e-5)


def test_tokenizer_without_pad_token_is_not_mutated(tiny_model_dir):
    tokenizer = make_tiny_tokenizer()
    assert tokenizer.pad_token is None
    side = tokenizer.padding_side
    model = load_model(tiny_model_dir("llama"), tokenizer=tokenizer)
    batch = model.tokenize(PROMPTS)
    assert tokenizer.pad_token is None and tokenizer.padding_side == side
    assert model.tokenizer is not tokenizer
    assert batch.input_ids[1, batch.last[1] + 1] == tokenizer.eos_token_id


def test_tokenize_rejects_bad_input(family_model):
    _, model = family_model
    with pytest.raises(TypeError, match="list"):
        model.tokenize("the cat")
    with pytest.raises(ValueError, match="no tokens"):
        model.tokenize(["the cat", ""], add_special_tokens=False)
    limit = model.max_positions
    assert limit == 64  # the tiny configs' position limit
    model.tokenize(["the"] * (limit - 1))
    with pytest.raises(ValueError, match=f"{limit + 4} tokens, more than the model's {limit}"):
        model.tokenize(["the cat", " ".join(["the"] * (limit + 3))])


# -- sources --------------------------------------------------------------------------------------


def test_built_model_with_and_without_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    built = build_tiny_model("llama")
    model = load_model(built, tokenizer=make_tiny_tokenizer())
    assert model.torch_model is built and model.architecture.name == "llama"
    check_reads_and_writes(model, "llama", model.tokenize(PROMPTS[:2]))

    with pytest.raises(ValueError, match="tokenizer="):
        load_model(build_tiny_model("gpt2"))

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir("gpt2"))
    model = load_model(loaded)  # tokenizer found through name_or_path
    assert model.tokenizer.bos_token == "<bos>"


def test_transformer_bridge(tiny_model_dir):
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tiny_model_dir("gpt_neox")
    hf_model = AutoModelForCausalLM.from_pretrained(directory)
    bridge = TransformerBridge.boot_transformers(
        str(directory), hf_model=hf_model, tokenizer=AutoTokenizer.from_pretrained(directory)
    )
    model = load_model(bridge)
    assert model.torch_model is bridge.original_model
    assert model.architecture.name == "gpt_neox" and model.parallel_attn
    check_reads_and_writes(model, "gpt_neox", model.tokenize(PROMPTS))

    # The bridge computes what a fresh copy of the same weights computes.
    fresh = AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
    batch = model.tokenize(PROMPTS)
    with torch.no_grad():
        expected = fresh(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        torch.testing.assert_close(model.forward(batch), expected, rtol=0, atol=1e-5)


def test_hooked_transformer():
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError:
        pytest.skip("TransformerLens 3.x HookedTransformer is not installed (4.x removed it)")

    config = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=64,
        d_vocab=24,
        act_fn="gelu",
        normalization_type="LN",
    )
    torch.manual_seed(0)
    hooked = HookedTransformer(config).eval()
    model = load_model(hooked, tokenizer=make_tiny_tokenizer())
    assert model.architecture.name == "hooked_transformer"
    batch = model.tokenize(PROMPTS)
    hook_names = {
        "embed": "hook_embed",
        "attn": "blocks.{i}.hook_attn_out",
        "mlp": "blocks.{i}.hook_mlp_out",
        "resid": "blocks.{i}.hook_resid_post",
    }
    for sub in model.submodules:
        name = hook_names[sub.kind].format(i=sub.layer)
        seen = {}

        def keep(act, hook, seen=seen):
            seen["act"] = act.detach().clone()

        with torch.no_grad():
            hooked.run_with_hooks(
                batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=[(name, keep)]
            )
        with model.trace(batch):
            got = model.read(sub).save()
        torch.testing.assert_close(got, seen["act"], rtol=0, atol=1e-6, msg=sub.name)


def test_missing_local_path_names_it(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(FileNotFoundError, match="no-model-here") as error:
        load_model(missing)
    assert "save_pretrained" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "empty")


def test_model_code_is_never_run_unless_trusted(tmp_path):
    """A directory whose config points at code of its own is refused; the code never runs."""
    import json

    marker = tmp_path / "ran"
    directory = tmp_path / "custom"
    directory.mkdir()
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (directory / name).write_text(code)
    config = {
        "model_type": "custom-model",
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomModel",
        },
    }
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code=True") as error:
        load_model(directory)
    assert "--trust-remote-code" in str(error.value)
    assert not marker.exists()


def test_model_directory_without_tokenizer_files(tmp_path):
    build_tiny_model("gpt2").save_pretrained(tmp_path)
    with pytest.raises(OSError, match="has no vocabulary") as error:
        load_model(tmp_path)
    assert str(tmp_path) in str(error.value)
    assert load_model(tmp_path, tokenizer=make_tiny_tokenizer()).tokenize(["the cat"])


def test_unknown_hub_name_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="no-such-owner/no-such-model") as error:
        load_model("no-such-owner/no-such-model")
    assert "EleutherAI/pythia-70m-deduped" in str(error.value)


def test_zoo_source(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setattr(loading, "ZOO_MODEL_DIR", tmp_path / "zoo" / "data" / "model")
    with pytest.raises(FileNotFoundError, match="circuits zoo build"):
        load_model("zoo")
    monkeypatch.setattr(loading, "ZOO_MODEL_DIR", tiny_model_dir("gpt_neox"))
    assert loading._resolve_source("zoo") == str(tiny_model_dir("gpt_neox"))
    assert load_model("zoo").architecture.name == "gpt_neox"


def test_dtype_and_device_options(tiny_model_dir):
    directory = tiny_model_dir("llama")
    model = load_model(directory, dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16 and model.device == torch.device("cpu")
    assert all(p.dtype == torch.bfloat16 for p in model.torch_model.parameters())
    batch = model.tokenize(PROMPTS)
    with model.trace(batch):
        act = model.read("mlp_0").save()
    assert act.dtype == torch.bfloat16

    model = load_model(directory, dtype=torch.float64)
    assert model.dtype == torch.float64
    with pytest.raises(ValueError, match="bfloat16"):
        load_model(directory, dtype="float33")

    built = build_tiny_model("gpt2")
    model = load_model(built, tokenizer=make_tiny_tokenizer(), dtype="float64")
    assert model.dtype == torch.float64 and built.transformer.wte.weight.dtype == torch.float64


def test_a_device_map_that_offloads_a_layer_to_disk(tiny_model_dir, tmp_path):
    """Layer 1 kept on disk by accelerate (its parameters are meta tensors here): the logits, the
    fingerprint and AtP effects equal those of the model loaded whole."""
    from conftest import PAIRS

    from attribution import node_effects
    from circuits.dictionaries import load_dictionaries

    directory = tiny_model_dir("gpt_neox")
    placement = {
        "gpt_neox.embed_in": "cpu", "gpt_neox.emb_dropout": "cpu", "gpt_neox.layers.0": "cpu",
        "gpt_neox.layers.1": "disk", "gpt_neox.final_layer_norm": "cpu",
        "gpt_neox.rotary_emb": "cpu", "lm_head": "cpu",
    }  # fmt: skip
    mapped = load_model(directory, device_map=placement, offload_folder=tmp_path / "offload")
    whole = load_model(directory)
    layer = mapped.torch_model.gpt_neox.layers[1]
    assert layer.attention.dense.weight.is_meta  # really offloaded
    assert mapped.device_of("resid_1") == torch.device("cpu") == mapped.device
    batch = whole.tokenize(PROMPTS)
    torch.testing.assert_close(mapped.forward(batch), whole.forward(batch), rtol=0, atol=0)
    assert mapped.fingerprint() == whole.fingerprint()
    effects = [
        node_effects(m, load_dictionaries(m, "neurons"), PAIRS, method="atp", progress=False)
        for m in (mapped, whole)
    ]
    for name in effects[1].effects:
        torch.testing.assert_close(
            effects[0].effects[name].features, effects[1].effects[name].features
        )
    with pytest.raises(ValueError, match="instead of device"):
        load_model(directory, device="cpu", device_map="auto")


def test_device_map_option_errors(tiny_model_dir, capsys):
    from circuits.cli import main

    argv = ["discover", "--model", str(tiny_model_dir("gpt_neox")), "--dictionaries", "neurons"]
    assert main([*argv, "--task", "sva-rc", "--device-map", "[1, 2]", "--out", "x"]) == 2
    assert "--device-map: give 'auto', a JSON object" in capsys.readouterr().err


# -- the alias table ------------------------------------------------------------------------------


def test_unknown_architecture_then_registered(monkeypatch):
    import transformers

    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    config = transformers.GPTJConfig(
        vocab_size=24,
        n_embd=32,
        n_layer=2,
        n_head=4,
        rotary_dim=4,
        n_positions=64,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(0)
    gptj = transformers.GPTJForCausalLM(config).eval()
    with pytest.raises(ValueError, match="'gptj'") as error:
        load_model(gptj, tokenizer=make_tiny_tokenizer())
    message = str(error.value)
    for name in ("gpt2", "gpt_neox", "llama", "gemma2", "register_architecture(Architecture("):
        assert name in message

    register_architecture(
        Architecture(
            name="gptj",
            model_types=("gptj",),
            blocks="transformer.h",
            embed="transformer.wte",
            attn=Site("attn"),
            mlp=Site("mlp"),
            parallel_attn=True,
        )
    )
    model = load_model(gptj, tokenizer=make_tiny_tokenizer())
    assert model.parallel_attn and model.architecture.name == "gptj"
    EXPECTED_SITES["gptj"] = EXPECTED_SITES["gpt2"]
    try:
        check_reads_and_writes(model, "gptj", model.tokenize(PROMPTS))
    finally:
        del EXPECTED_SITES["gptj"]


def test_rows_that_do_not_fit_the_model_are_rejected(monkeypatch, tiny_model_dir):
    import transformers

    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    # OPT's fc2 runs on flattened [batch * pos, d] rows, so it is no [batch, pos, width] site.
    config = transformers.OPTConfig(
        vocab_size=24,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=64,
    )
    opt = transformers.OPTForCausalLM(config).eval()
    register_architecture(
        Architecture(
            name="opt",
            model_types=("opt",),
            blocks="model.decoder.layers",
            embed="model.decoder.embed_tokens",
            attn=Site("self_attn"),
            mlp=Site("fc2"),
        )
    )
    with pytest.raises(ValueError, match=r"mlp_0 .*fc2.*\[batch, pos, width\]"):
        load_model(opt, tokenizer=make_tiny_tokenizer())

    register_architecture(
        Architecture(
            name="bad_llama",
            model_types=("llama",),
            blocks="model.layers",
            embed="model.embed_tokens",
            attn=Site("self_attn"),
            mlp=Site("mlp.down_proj.weight"),
        )
    )
    with pytest.raises(TypeError, match="down_proj.weight"):
        load_model(tiny_model_dir("llama"))
    register_architecture(
        Architecture(
            name="bad_llama",
            model_types=("llama",),
            blocks="model.layers",
            embed="model.embed_tokens",
            attn=Site("self_attn"),
            mlp=Site("feed_forward"),
        )
    )
    with pytest.raises(AttributeError, match="feed_forward"):
        load_model(tiny_model_dir("llama"))


def test_architecture_override_by_name(tiny_model_dir):
    with pytest.raises(ValueError, match="registered"):
        load_model(tiny_model_dir("llama"), architecture="no-such-family")
    model = load_model(tiny_model_dir("llama"), architecture="llama")
    assert model.architecture is models.architectures()["llama"]


def test_site_validates_io():
    with pytest.raises(ValueError, match="output"):
        Site("mlp", "outptu")


def test_config_helper_is_tiny():
    assert make_tiny_config("gpt2").n_layer == 2

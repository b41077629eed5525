"""Hub dictionaries: ``sae-lens:`` and ``sparsify:`` specs read from an offline Hugging Face cache.

Each test writes a release's files into a cache laid out as huggingface_hub lays it out
(``models--{org}--{name}/refs/main`` holding a commit, ``snapshots/<commit>/<folder>/...``) with
``HF_HUB_OFFLINE`` set, and checks the loaded dictionaries against the published formulas applied
to the tensors written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

from circuits import load_dictionaries
from circuits.dictionaries import fetch_dictionaries, sae_lens_releases, submodule_for_hook

COMMIT = "0123456789abcdef0123456789abcdef01234567"
D, F = 32, 16  # the tiny models' d_model, the SAEs' width


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline; huggingface_hub read both settings at import."""
    root = tmp_path / "hf-cache"
    for name, value in (("HF_HUB_CACHE", str(root)), ("HF_HUB_OFFLINE", True)):
        monkeypatch.setenv(name, str(int(value)) if isinstance(value, bool) else value)
        monkeypatch.setattr(huggingface_hub.constants, name, value)
    return root


def snapshot(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` at ``COMMIT``, with ``refs/main`` pointing at it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def sae_tensors(d: int, seed: int) -> dict[str, torch.Tensor]:
    return {
        "W_enc": rand(d, F, seed=seed),  # [d_in, d_sae]
        "b_enc": rand(F, seed=seed + 1),
        "W_dec": rand(F, d, seed=seed + 2),  # [d_sae, d_in]
        "b_dec": rand(d, seed=seed + 3),
    }


def write_sae_lens(
    folder: Path, hook: str, *, d: int = D, seed: int = 0, weights: bool = True, key="hook_name"
) -> dict[str, torch.Tensor]:
    """A standard (ReLU) SAE in sae-lens's layout; ``key`` is the config's name for the hook."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "standard", "d_in": d, "d_sae": F, key: hook, "activation_fn": "relu"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tensors = sae_tensors(d, seed)
    if weights:
        save_file(tensors, str(folder / "sae_weights.safetensors"))
    return tensors


def write_gemma_scope(folder: Path, *, d: int = D, seed: int = 0) -> dict[str, torch.Tensor]:
    """A JumpReLU SAE in GemmaScope's ``params.npz``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {**sae_tensors(d, seed), "threshold": rand(F, seed=seed + 4).abs()}
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in tensors.items()})
    return tensors


def write_sparsify(folder: Path, *, k: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A TopK SAE in sparsify's layout: ``encoder.weight`` is [num_latents, d_in]."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps({"k": k, "num_latents": F, "d_in": D}))
    t = sae_tensors(D, seed)
    tensors = {
        "encoder.weight": t["W_enc"].T.contiguous(),
        "encoder.bias": t["b_enc"],
        "W_dec": t["W_dec"],
        "b_dec": t["b_dec"],
    }
    save_file(tensors, str(folder / "sae.safetensors"))
    return tensors


def check_relu(d, t: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    """sae-lens standard: f = ReLU((x - b_dec) W_enc + b_enc), x_hat = f W_dec + b_dec."""
    f = torch.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
    assert_close(d.encode(x), f)
    assert_close(d.decode(f), f @ t["W_dec"] + t["b_dec"])


def x_of(d: int = D) -> torch.Tensor:
    return rand(2, 3, d, seed=99)  # [batch, pos, d_model]


# ------------------------------------------------------------------------------------------------
# sae-lens


def test_gpt2_res_jb_lands_on_the_resid_before_the_block(cache, tiny_models):
    model = tiny_models("gpt2")
    repo = snapshot(cache, "jbloom/GPT2-Small-SAEs-Reformatted")
    # sae-lens files written before sae-lens 6 call the hook "hook_point".
    t1 = write_sae_lens(
        repo / "blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre", key="hook_point"
    )
    t2 = write_sae_lens(repo / "blocks.2.hook_resid_pre", "blocks.2.hook_resid_pre", seed=10)

    ds = load_dictionaries(model, "sae-lens:gpt2-small-res-jb/blocks.1.hook_resid_pre")
    assert list(ds) == ["resid_0"]
    check_relu(ds["resid_0"], t1, x_of())

    ds = load_dictionaries(model, "sae-lens:gpt2-small-res-jb/blocks.[12].hook_resid_pre")
    assert list(ds) == ["resid_0", "resid_1"]
    check_relu(ds["resid_1"], t2, x_of())


def test_sfc_pythia_release_and_only_kept_weights_are_read(cache, tiny_models):
    model = tiny_models("gpt_neox")
    res = snapshot(cache, "ctigges/pythia-70m-deduped__res-sm_processed")
    write_sae_lens(res / "e-res-sm", "blocks.0.hook_resid_pre", weights=False)  # config only
    t0 = write_sae_lens(res / "0-res-sm", "blocks.0.hook_resid_post", seed=5)
    mlp = snapshot(cache, "ctigges/pythia-70m-deduped__mlp-sm_processed")
    t_mlp = write_sae_lens(mlp / "1-mlp-sm", "blocks.1.hook_mlp_out", seed=7)

    spec = "sae-lens:pythia-70m-deduped-res-sm/blocks.0.hook_resid_*"
    ds = load_dictionaries(model, spec, submodules=["resid_0"])
    assert list(ds) == ["resid_0"]
    check_relu(ds["resid_0"], t0, x_of())
    with pytest.raises(FileNotFoundError, match="e-res-sm/sae_weights.safetensors"):
        load_dictionaries(model, spec)  # embed is block 0's input in GPT-NeoX: its weights are due
    with pytest.raises(
        FileNotFoundError, match=r"no dictionary for requested submodule\(s\) \['mlp_0'\]"
    ):
        load_dictionaries(model, spec, submodules=["mlp_0"])

    ds = load_dictionaries(model, "sae-lens:pythia-70m-deduped-mlp-sm/blocks.1.hook_mlp_out")
    assert list(ds) == ["mlp_1"]
    check_relu(ds["mlp_1"], t_mlp, x_of())


def test_gemma_scope_canonical_resid_and_attention_z(cache, tiny_models):
    model = tiny_models("gemma2")  # attn_i is o_proj's input, 4 heads x 12 = 48 wide
    res = snapshot(cache, "google/gemma-scope-2b-pt-res")
    t_res = write_gemma_scope(res / "layer_1/width_16k/average_l0_102")  # the canonical L0
    att = snapshot(cache, "google/gemma-scope-2b-pt-att")
    t_att = write_gemma_scope(att / "layer_0/width_16k/average_l0_104", d=48, seed=3)

    ds = load_dictionaries(
        model, "sae-lens:gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical"
    )
    ds.update(
        load_dictionaries(
            model, "sae-lens:gemma-scope-2b-pt-att-canonical/layer_0/width_16k/canonical"
        )
    )
    for name, t, x in (("resid_1", t_res, x_of()), ("attn_0", t_att, x_of(48))):
        pre = x @ t["W_enc"] + t["b_enc"]  # GemmaScope: no b_dec subtracted, JumpReLU
        f = pre * (pre > t["threshold"])
        assert_close(ds[name].encode(x), f)
        assert_close(ds[name].decode(f), f @ t["W_dec"] + t["b_dec"])


def test_directory_of_an_installed_sae_lens(cache, tiny_models, monkeypatch):
    lookup = SimpleNamespace(
        repo_id="someone/saes",
        model="gpt2-small",
        conversion_func=None,
        saes_map={"blocks.0.hook_mlp_out": "mlp0"},
        config_overrides=None,
    )
    refused = {
        "rescaled": SimpleNamespace(
            **{**vars(lookup), "config_overrides": {"normalize_activations": "layer_norm"}}
        ),
        "llama": SimpleNamespace(**{**vars(lookup), "conversion_func": "llama_scope"}),
    }
    directory = SimpleNamespace(get_pretrained_saes_directory=lambda: {"mine": lookup, **refused})
    monkeypatch.setitem(sys.modules, "sae_lens.loading.pretrained_saes_directory", directory)
    assert set(sae_lens_releases()) == {"mine", "rescaled", "llama"}

    t = write_sae_lens(snapshot(cache, "someone/saes") / "mlp0", "blocks.0.hook_mlp_out")
    ds = load_dictionaries(tiny_models("gpt2"), "sae-lens:mine/blocks.0.hook_mlp_out")
    check_relu(ds["mlp_0"], t, x_of())
    with pytest.raises(ValueError, match="overrides its cfg.json.*normalize_activations"):
        load_dictionaries(tiny_models("gpt2"), "sae-lens:rescaled/blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="'llama_scope' loader, which is not read here"):
        load_dictionaries(tiny_models("gpt2"), "sae-lens:llama/blocks.0.hook_mlp_out")


# ------------------------------------------------------------------------------------------------
# sparsify


def test_sparsify_hookpoints(cache, tiny_models):
    model = tiny_models("gpt_neox")
    repo = snapshot(cache, "EleutherAI/sae-pythia-70m-32k")
    hookpoints = {"embed_in": "embed", "layers.0": "resid_0", "layers.0.attention": "attn_0"}
    hookpoints["layers.1.mlp"] = "mlp_1"
    written = {
        name: write_sparsify(repo / hp, seed=i) for i, (hp, name) in enumerate(hookpoints.items())
    }
    write_sparsify(repo / "layers.1.mlp.act")  # the MLP's inner activation: no submodule

    with pytest.warns(UserWarning, match=r"\['layers.1.mlp.act'\]"):
        ds = load_dictionaries(model, "sparsify:EleutherAI/sae-pythia-70m-32k")
    assert list(ds) == ["embed", "attn_0", "resid_0", "mlp_1"]
    x = x_of()
    for name, t in written.items():
        # sparsify: top-k of ReLU((x - b_dec) W_enc^T + b_enc), decoded as f W_dec + b_dec
        pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
        kth = pre.topk(4, dim=-1).values[..., -1:]
        f = pre * (pre >= kth)
        assert_close(ds[name].encode(x), f)
        assert_close(ds[name].decode(f), f @ t["W_dec"] + t["b_dec"])

    with pytest.warns(UserWarning):
        only = fetch_dictionaries(
            model, "sparsify:EleutherAI/sae-pythia-70m-32k", submodules=["mlp_1"]
        )
    assert only == {"mlp_1": repo / "layers.1.mlp"}


# ------------------------------------------------------------------------------------------------
# Hook names


@pytest.mark.parametrize(
    "family, hook, name",
    [
        ("gpt2", "hook_embed", "embed"),
        ("gpt2", "blocks.1.hook_resid_pre", "resid_0"),
        ("gpt2", "blocks.1.hook_resid_post", "resid_1"),
        ("gpt2", "blocks.0.hook_mlp_out", "mlp_0"),
        ("gpt2", "blocks.1.hook_attn_out", "attn_1"),
        ("gpt_neox", "blocks.0.hook_resid_pre", "embed"),
        ("llama", "blocks.0.hook_resid_pre", "embed"),
        ("gemma2", "blocks.1.attn.hook_z", "attn_1"),
    ],
)
def test_hook_names(tiny_models, family, hook, name):
    assert submodule_for_hook(tiny_models(family), hook) == name


@pytest.mark.parametrize(
    "family, hook, message",
    [
        ("gpt2", "blocks.0.attn.hook_z", r"attn_0 is the output of transformer\.h\.0\.attn"),
        ("gemma2", "blocks.0.hook_attn_out", r"attn_0 is the input of .*o_proj.*attn\.hook_z"),
        ("gpt2", "blocks.0.hook_resid_pre", "block 0's input.*token embedding"),
        ("gemma2", "hook_embed", "would be embed, which this gemma2 model does not have"),
        ("gpt2", "blocks.5.hook_resid_post", r"would be resid_5.*\(2 layers"),
        ("gpt2", "blocks.0.hook_resid_mid", "not a submodule's activation; supported: hook_embed"),
    ],
)
def test_hooks_that_are_no_submodule(tiny_models, family, hook, message):
    with pytest.raises(ValueError, match=message):
        submodule_for_hook(tiny_models(family), hook)


# ------------------------------------------------------------------------------------------------
# Errors


def test_unknown_release_and_sae_id(cache, tiny_models):
    with pytest.raises(ValueError, match="unknown sae-lens release 'gpt3-res'.*gpt2-small-res-jb"):
        load_dictionaries(tiny_models("gpt2"), "sae-lens:gpt3-res/blocks.1.hook_resid_pre")
    with pytest.raises(
        ValueError,
        match=r"'gpt2-small-res-jb' \(jbloom/GPT2-Small-SAEs-Reformatted\) has no SAE id",
    ):
        load_dictionaries(
            tiny_models("gpt2"), "sae-lens:gpt2-small-res-jb/blocks.99.hook_resid_pre"
        )
    with pytest.raises(ValueError, match="unknown dictionary scheme"):
        fetch_dictionaries(tiny_models("gpt2"), "saelens:gpt2-small-res-jb/blocks.1.hook_resid_pre")


def test_files_missing_from_the_offline_cache(cache, tiny_models):
    repo_id, folder = "jbloom/GPT2-Small-SAEs-Reformatted", "blocks.1.hook_resid_pre"
    spec = f"sae-lens:gpt2-small-res-jb/{folder}"
    with pytest.raises(FileNotFoundError) as info:
        load_dictionaries(tiny_models("gpt2"), spec)
    message = str(info.value)
    for part in (repo_id, f"{folder}/cfg.json", str(cache), "HF_HUB_OFFLINE", "hf download"):
        assert part in message

    write_sae_lens(snapshot(cache, repo_id) / folder, folder, weights=False)
    with pytest.raises(FileNotFoundError, match=f"{folder}/sae_weights.safetensors"):
        load_dictionaries(tiny_models("gpt2"), spec)
    with pytest.raises(FileNotFoundError, match="EleutherAI/sae-x: the repo is not in the Hugging"):
        load_dictionaries(tiny_models("gpt2"), "sparsify:EleutherAI/sae-x")


def test_width_mismatch_and_clashes(cache, tiny_models):
    repo = snapshot(cache, "jbloom/GPT2-Small-SAEs-Reformatted")
    write_sae_lens(repo / "blocks.1.hook_resid_pre", "blocks.1.hook_resid_pre", d=16)
    with pytest.raises(ValueError, match="has d_model 16, but submodule resid_0 has width 32"):
        load_dictionaries(tiny_models("gpt2"), "sae-lens:gpt2-small-res-jb/blocks.1.hook_resid_pre")
    # Two widths of one layer: both are resid_0, found from the names alone.
    with pytest.raises(ValueError, match="several dictionaries for one submodule.*resid_0"):
        load_dictionaries(
            tiny_models("gemma2"), "sae-lens:gemma-scope-2b-pt-res-canonical/layer_0/*"
        )

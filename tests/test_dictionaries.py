"""Dictionaries: files written by hand in each public layout, checked against published formulas.

Every reference formula below is computed from the raw tensors as the public code computes it,
independently of ``circuits.dictionaries``.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

from circuits.dictionaries import (
    SAE,
    BatchTopK,
    Dictionary,
    DictionaryFormatError,
    GatedSAE,
    Identity,
    JumpReLU,
    ReLU,
    TopK,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from circuits.dictionaries import mapping as dl  # load_dictionaries reads ZOO_DICTIONARIES here

D, F = 6, 10  # d_model, width


def rand(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 17 * len(shape) + sum(shape))
    return torch.randn(*shape, generator=g) * scale


@pytest.fixture
def x() -> torch.Tensor:
    return rand(3, 4, D, seed=99)  # [batch, pos, d_model]


def write_dl(path: Path, state: dict[str, torch.Tensor], trainer: dict | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "ae.pt")
    if trainer is not None:
        (path / "config.json").write_text(json.dumps({"trainer": trainer}))
    return path


def write_cfg_safetensors(path: Path, name: str, cfg: dict, tensors: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / name))
    return path


def topk_rows(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's k largest entries (random floats: no ties)."""
    kth = acts.sort(dim=-1, descending=True).values[..., k - 1 : k]
    return acts * (acts >= kth)


# ------------------------------------------------------------------------------------------------
# dictionary_learning


def dl_autoencoder_state(seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        "bias": rand(D, seed=seed),
        "encoder.weight": rand(F, D, seed=seed + 1),
        "encoder.bias": rand(F, seed=seed + 2),
        "decoder.weight": rand(D, F, seed=seed + 3),
    }


def test_dictionary_learning_autoencoder(tmp_path, x):
    s = dl_autoencoder_state()
    path = write_dl(
        tmp_path / "ae", s, {"dict_class": "AutoEncoder", "activation_dim": D, "dict_size": F}
    )
    d = load_dictionary(path)
    f_ref = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    assert isinstance(d, SAE) and (d.d_model, d.width) == (D, F)
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ s["decoder.weight"].T + s["bias"])


def test_dictionary_learning_autoencoder_without_config(tmp_path, x):
    s = dl_autoencoder_state()
    d = load_dictionary(write_dl(tmp_path / "ae", s, None) / "ae.pt")
    f_ref = torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    assert_close(d.encode(x), f_ref)


def test_dictionary_learning_autoencoder_new(tmp_path, x):
    s = {
        "encoder.weight": rand(F, D, seed=1),
        "encoder.bias": rand(F, seed=2),
        "decoder.weight": rand(D, F, seed=3),
        "decoder.bias": rand(D, seed=4),
    }
    d = load_dictionary(write_dl(tmp_path, s, {"dict_class": "AutoEncoderNew"}))
    f_ref = torch.relu(x @ s["encoder.weight"].T + s["encoder.bias"])
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ s["decoder.weight"].T + s["decoder.bias"])


@pytest.mark.parametrize("dict_class", ["AutoEncoderTopK", "BatchTopKSAE"])
def test_dictionary_learning_topk_and_batchtopk(tmp_path, x, dict_class):
    k, threshold = 3, 0.4
    s = {
        "k": torch.tensor(k, dtype=torch.int32),
        "threshold": torch.tensor(threshold),
        "decoder.weight": rand(D, F, seed=1),
        "encoder.weight": rand(F, D, seed=2),
        "encoder.bias": rand(F, seed=3),
        "b_dec": rand(D, seed=4),
    }
    trainer = {"dict_class": dict_class, "activation_dim": D, "dict_size": F, "k": k}
    d = load_dictionary(write_dl(tmp_path / dict_class, s, trainer))
    post_relu = torch.relu((x - s["b_dec"]) @ s["encoder.weight"].T + s["encoder.bias"])
    if dict_class == "AutoEncoderTopK":  # per-token top-k
        f_ref = topk_rows(post_relu, k)
        assert isinstance(d.activation, TopK) and d.activation.k == k
    else:  # BatchTopKSAE at inference: the learned threshold
        f_ref = post_relu * (post_relu > threshold)
        assert isinstance(d.activation, BatchTopK) and d.activation.k == k
        assert 0 < int((f_ref > 0).sum()) < int((post_relu > 0).sum())  # the threshold bites
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ s["decoder.weight"].T + s["b_dec"])


def test_dictionary_learning_jumprelu(tmp_path, x):
    s = {
        "W_enc": rand(D, F, seed=1),
        "b_enc": rand(F, seed=2),
        "W_dec": rand(F, D, seed=3),
        "b_dec": rand(D, seed=4),
        "threshold": rand(F, seed=5).abs(),
    }
    trainer = {"dict_class": "JumpReluAutoEncoder", "activation_dim": D, "dict_size": F}
    d = load_dictionary(write_dl(tmp_path / "jr", s, trainer))
    pre = x @ s["W_enc"] + s["b_enc"]  # apply_b_dec_to_input is False in that class
    f_ref = torch.relu(pre * (pre > s["threshold"]))
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ s["W_dec"] + s["b_dec"])


def dl_gated_state() -> dict[str, torch.Tensor]:
    return {
        "decoder_bias": rand(D, seed=1),
        "encoder.weight": rand(F, D, seed=2),
        "r_mag": rand(F, seed=3, scale=0.5),
        "gate_bias": rand(F, seed=4),
        "mag_bias": rand(F, seed=5),
        "decoder.weight": rand(D, F, seed=6),
    }


def gated_reference(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
    f_gate = (x_enc + s["gate_bias"] > 0).float()
    f_mag = torch.relu(s["r_mag"].exp() * x_enc + s["mag_bias"])
    return f_gate * f_mag


def test_dictionary_learning_gated(tmp_path, x):
    s = dl_gated_state()
    trainer = {"dict_class": "GatedAutoEncoder", "activation_dim": D, "dict_size": F}
    d = load_dictionary(write_dl(tmp_path / "gated", s, trainer))
    assert isinstance(d, GatedSAE)
    f_ref = gated_reference(s, x)
    assert (f_ref > 0).any() and (f_ref == 0).any()
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ s["decoder.weight"].T + s["decoder_bias"])


def test_sfc_release_layout_one_level_down(tmp_path, x):
    """dictionary_learning's release nests each dictionary: embed/10_32768/ae.pt."""
    s = dl_autoencoder_state()
    write_dl(tmp_path / "embed" / "10_32768", s, {"dict_class": "AutoEncoder"})
    d = load_dictionary(tmp_path / "embed")
    assert_close(
        d.encode(x), torch.relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
    )


# ------------------------------------------------------------------------------------------------
# sae-lens


def sae_lens_tensors(**extra: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "W_enc": rand(D, F, seed=11),
        "b_enc": rand(F, seed=12),
        "W_dec": rand(F, D, seed=13),
        "b_dec": rand(D, seed=14),
        **extra,
    }


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_sae_lens_standard(tmp_path, x, apply_b_dec):
    t = sae_lens_tensors()
    cfg = {"architecture": "standard", "d_in": D, "d_sae": F, "apply_b_dec_to_input": apply_b_dec}
    d = load_dictionary(write_cfg_safetensors(tmp_path, "sae_weights.safetensors", cfg, t))
    sae_in = x - t["b_dec"] * apply_b_dec
    f_ref = torch.relu(sae_in @ t["W_enc"] + t["b_enc"])
    assert d.apply_b_dec_to_input is apply_b_dec
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ t["W_dec"] + t["b_dec"])


def test_sae_lens_jumprelu(tmp_path, x):
    t = sae_lens_tensors(threshold=rand(F, seed=15).abs())
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": F, "apply_b_dec_to_input": False}
    d = load_dictionary(write_cfg_safetensors(tmp_path, "sae_weights.safetensors", cfg, t))
    pre = x @ t["W_enc"] + t["b_enc"]
    f_ref = torch.relu(pre) * (pre > t["threshold"])
    assert_close(d.encode(x), f_ref)


@pytest.mark.parametrize(
    "cfg",
    [
        {"architecture": "topk", "k": 4},  # sae-lens 6
        {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4}},  # before 6
    ],
)
def test_sae_lens_topk(tmp_path, x, cfg):
    t = sae_lens_tensors()
    cfg = {**cfg, "d_in": D, "d_sae": F, "apply_b_dec_to_input": True}
    d = load_dictionary(write_cfg_safetensors(tmp_path, "sae_weights.safetensors", cfg, t))
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    values, indices = pre.topk(4, dim=-1)
    f_ref = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    assert_close(d.encode(x), f_ref)


def test_sae_lens_topk_rescaled_by_decoder_norm(tmp_path, x):
    t = sae_lens_tensors()
    cfg = {
        "architecture": "topk",
        "k": 3,
        "d_in": D,
        "d_sae": F,
        "rescale_acts_by_decoder_norm": True,
    }
    d = load_dictionary(write_cfg_safetensors(tmp_path, "sae_weights.safetensors", cfg, t))
    norms = t["W_dec"].norm(dim=-1)
    pre = ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]) * norms
    values, indices = pre.topk(3, dim=-1)
    f_ref = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), (f_ref / norms) @ t["W_dec"] + t["b_dec"])


def test_sae_lens_gated(tmp_path, x):
    t = sae_lens_tensors(
        b_gate=rand(F, seed=16), r_mag=rand(F, seed=17, scale=0.5), b_mag=rand(F, seed=18)
    )
    del t["b_enc"]
    cfg = {"architecture": "gated", "d_in": D, "d_sae": F, "apply_b_dec_to_input": True}
    d = load_dictionary(write_cfg_safetensors(tmp_path, "sae_weights.safetensors", cfg, t))
    sae_in = x - t["b_dec"]
    active = (sae_in @ t["W_enc"] + t["b_gate"] > 0).float()
    magnitude = torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    f_ref = active * magnitude
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ t["W_dec"] + t["b_dec"])


# ------------------------------------------------------------------------------------------------
# sparsify and GemmaScope


def test_sparsify(tmp_path, x):
    t = {
        "encoder.weight": rand(F, D, seed=21),
        "encoder.bias": rand(F, seed=22),
        "W_dec": rand(F, D, seed=23),
        "b_dec": rand(D, seed=24),
    }
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
           "num_latents": F, "k": 3, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": D}  # fmt: skip
    path = write_cfg_safetensors(tmp_path / "layers.0", "sae.safetensors", cfg, t)
    d = load_dictionary(path)
    pre_acts = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
    top_acts, top_indices = pre_acts.topk(3, dim=-1)
    f_ref = torch.zeros_like(pre_acts).scatter(-1, top_indices, top_acts)
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ t["W_dec"] + t["b_dec"])
    assert_close(load_dictionary(path / "sae.safetensors").encode(x), f_ref)  # the file itself


def test_gemma_scope(tmp_path, x):
    p = {
        "W_enc": rand(D, F, seed=31).numpy(),
        "b_enc": rand(F, seed=32).numpy(),
        "W_dec": rand(F, D, seed=33).numpy(),
        "b_dec": rand(D, seed=34).numpy(),
        "threshold": rand(F, seed=35).abs().numpy(),
    }
    np.savez(tmp_path / "params.npz", **p)
    d = load_dictionary(tmp_path)
    T = {k: torch.from_numpy(v) for k, v in p.items()}
    pre_acts = x @ T["W_enc"] + T["b_enc"]
    f_ref = (pre_acts > T["threshold"]) * torch.relu(pre_acts)
    assert_close(d.encode(x), f_ref)
    assert_close(d.decode(f_ref), f_ref @ T["W_dec"] + T["b_dec"])
    assert_close(load_dictionary(tmp_path / "params.npz").encode(x), f_ref)


# ------------------------------------------------------------------------------------------------
# The interface itself


def all_dictionaries() -> list[Dictionary]:
    W_enc, b_enc, W_dec, b_dec = (
        rand(D, F, seed=1),
        rand(F, seed=2),
        rand(F, D, seed=3),
        rand(D, seed=4),
    )
    return [
        SAE(W_enc, b_enc, W_dec, b_dec, ReLU()),
        SAE(W_enc, b_enc, W_dec, b_dec, ReLU(), apply_b_dec_to_input=False),
        SAE(W_enc, b_enc, W_dec, b_dec, TopK(3)),
        SAE(W_enc, b_enc, W_dec, b_dec, BatchTopK(3, 0.3)),
        SAE(W_enc, b_enc, W_dec, b_dec, JumpReLU(rand(F, seed=5).abs())),
        SAE(
            W_enc, b_enc, W_dec, b_dec, JumpReLU(rand(F, seed=5).abs()), apply_b_dec_to_input=False
        ),
        GatedSAE(W_enc, rand(F, seed=6), rand(F, seed=7, scale=0.5), rand(F, seed=8), W_dec, b_dec),
        GatedSAE(
            W_enc,
            rand(F, seed=6),
            rand(F, seed=7),
            rand(F, seed=8),
            W_dec,
            b_dec,
            apply_b_dec_to_input=False,
        ),  # fmt: skip
        Identity(D),
    ]


@pytest.mark.parametrize("d", all_dictionaries(), ids=lambda d: repr(d).replace("\n", ""))
def test_forward_split_error(d, x):
    f = d.encode(x)
    assert f.shape == (3, 4, d.width)
    assert_close(d(x), d.decode(f))
    features, error = d.split(x)
    assert_close(features, f)
    assert_close(error, d.error(x))
    assert_close(d.decode(features) + error, x)
    assert not any(p.requires_grad for p in d.parameters())


def test_gradients_reach_the_input(x):
    d = all_dictionaries()[0]
    x = x.clone().requires_grad_(True)
    d.encode(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_identity(x):
    d = Identity(D)
    assert (d.d_model, d.width) == (D, D)
    assert d.encode(x) is x and d.decode(x) is x
    assert torch.equal(d.error(x), torch.zeros_like(x))


def test_topk_keeps_exactly_k(x):
    # A large encoder bias makes every pre-activation positive, so exactly k survive per token.
    d = SAE(rand(D, F, seed=1), torch.full((F,), 50.0), rand(F, D), rand(D), TopK(4))
    assert torch.equal((d.encode(x) != 0).sum(-1), torch.full((3, 4), 4))
    with pytest.raises(ValueError, match="exceeds"):
        SAE(rand(D, F), rand(F), rand(F, D), rand(D), TopK(F + 1))


def test_jumprelu_threshold_semantics():
    # pre = x (identity encoder, zero biases); threshold per feature.
    d = SAE(torch.eye(3), torch.zeros(3), torch.eye(3), torch.zeros(3),
            JumpReLU(torch.tensor([1.0, 1.0, -1.0])))  # fmt: skip
    f = d.encode(torch.tensor([[1.0, 1.5, -0.5]]))
    # at the threshold: off (strict >); above: the full value, not value - threshold;
    # above a negative threshold but negative: ReLU still gives 0.
    assert torch.equal(f, torch.tensor([[0.0, 1.5, 0.0]]))


def test_gated_formula_by_hand():
    # d=1, width=2: pi = x - b_dec = 2; gate = pi + b_gate > 0; mag = relu(exp(r)*pi + b_mag).
    d = GatedSAE(torch.ones(1, 2), torch.tensor([0.0, -3.0]), torch.tensor([math.log(2.0), 0.0]),
                 torch.tensor([1.0, 1.0]), torch.ones(2, 1), torch.tensor([1.0]))  # fmt: skip
    f = d.encode(torch.tensor([[3.0]]))
    assert_close(f, torch.tensor([[2.0 * 2.0 + 1.0, 0.0]]))  # feature 1 gated off (2 - 3 < 0)


def test_to_moves_thresholds_and_checks_dtype(x):
    d = SAE(rand(D, F), rand(F), rand(F, D), rand(D), JumpReLU(rand(F).abs())).to(torch.float64)
    assert d.activation.threshold.dtype == torch.float64
    assert d.encode(x.double()).dtype == torch.float64
    with pytest.raises(TypeError, match="float64"):
        d.encode(x)
    with pytest.raises(ValueError, match="must end in 6"):
        d.encode(x[..., :5].double())


# ------------------------------------------------------------------------------------------------
# Saving in dictionary_learning's layout

DL_KEYS = {
    "AutoEncoder": {"bias": [D], "encoder.weight": [F, D], "encoder.bias": [F],
                    "decoder.weight": [D, F]},
    "AutoEncoderTopK": {"encoder.weight": [F, D], "encoder.bias": [F], "decoder.weight": [D, F],
                        "b_dec": [D], "k": [], "threshold": []},
    "BatchTopKSAE": {"encoder.weight": [F, D], "encoder.bias": [F], "decoder.weight": [D, F],
                     "b_dec": [D], "k": [], "threshold": []},
    "JumpReluAutoEncoder": {"W_enc": [D, F], "b_enc": [F], "W_dec": [F, D], "b_dec": [D],
                            "threshold": [F]},
    "GatedAutoEncoder": {"decoder_bias": [D], "encoder.weight": [F, D], "r_mag": [F],
                         "gate_bias": [F], "mag_bias": [F], "decoder.weight": [D, F]},
}  # fmt: skip
EXPECTED_CLASS = ["AutoEncoder", "AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE",
                  "JumpReluAutoEncoder", "JumpReluAutoEncoder", "GatedAutoEncoder",
                  "GatedAutoEncoder"]  # fmt: skip


@pytest.mark.parametrize("i", range(len(EXPECTED_CLASS)))
def test_save_round_trip_and_third_party_reader(tmp_path, x, i):
    d = all_dictionaries()[i]
    save_dictionary(d, tmp_path / "saved")
    # What a reader that knows only torch.load(weights_only=True) and json sees:
    state = torch.load(tmp_path / "saved" / "ae.pt", weights_only=True)
    trainer = json.loads((tmp_path / "saved" / "config.json").read_text())["trainer"]
    dict_class = EXPECTED_CLASS[i]
    assert trainer["dict_class"] == dict_class
    assert (trainer["activation_dim"], trainer["dict_size"]) == (D, F)
    assert {k: list(v.shape) for k, v in state.items()} == DL_KEYS[dict_class]
    if "k" in state:
        assert trainer["k"] == int(state["k"]) == d.activation.k
    if dict_class == "AutoEncoder":  # their formula on their keys gives our features
        f = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
        assert_close(f, d.encode(x), atol=1e-5, rtol=1e-5)
    if dict_class == "GatedAutoEncoder":
        assert_close(gated_reference(state, x), d.encode(x), atol=1e-5, rtol=1e-5)
    back = load_dictionary(tmp_path / "saved")
    assert type(back) is type(d)
    assert_close(back.encode(x), d.encode(x), atol=1e-5, rtol=1e-5)
    assert_close(back(x), d(x), atol=1e-5, rtol=1e-5)


def test_identity_cannot_be_saved(tmp_path):
    with pytest.raises(TypeError, match="Identity"):
        save_dictionary(Identity(D), tmp_path)


# ------------------------------------------------------------------------------------------------
# Safety and error messages


@dataclass
class Payload:
    """Unpickling this creates the file at ``path``: stands in for any code a pickle can run."""

    path: str

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_payload_is_live(tmp_path):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(str(live)))).close()
    assert live.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_malicious_pickle_refused(tmp_path, how):
    sentinel = tmp_path / "sentinel"
    target = tmp_path / "evil"
    target.mkdir()
    state = {"bias": Payload(str(sentinel)), "encoder.weight": torch.zeros(F, D)}
    if how == "torch.save":
        torch.save(state, target / "ae.pt")
    else:
        (target / "ae.pt").write_bytes(pickle.dumps(state))
    (target / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder"}}))
    with pytest.raises(DictionaryFormatError, match="not plain tensors") as err:
        load_dictionary(target)
    assert "will not be loaded" in str(err.value) and "ae.pt" in str(err.value)
    assert not sentinel.exists()


def test_not_a_torch_file(tmp_path):
    (tmp_path / "ae.pt").write_bytes(b"junkjunk")
    with pytest.raises(DictionaryFormatError, match=r"ae\.pt"):
        load_dictionary(tmp_path)


def test_npz_with_objects_refused(tmp_path):
    np.savez(tmp_path / "params.npz", W_enc=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DictionaryFormatError, match="refused"):
        load_dictionary(tmp_path)


def test_missing_and_unknown(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dictionary(tmp_path / "nowhere")
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(DictionaryFormatError, match="ae.pt"):
        load_dictionary(tmp_path)
    with pytest.raises(DictionaryFormatError, match="unknown dictionary file type"):
        load_dictionary(tmp_path / "weights.bin")


def test_inconsistent_shapes_name_file_and_expectation(tmp_path):
    s = dl_autoencoder_state()
    s["decoder.weight"] = rand(F, D)  # transposed by mistake
    write_dl(tmp_path, s, {"dict_class": "AutoEncoder"})
    with pytest.raises(DictionaryFormatError, match=r"ae\.pt.*'decoder\.weight'.*\[6, 10\]"):
        load_dictionary(tmp_path)


def test_config_disagreeing_with_weights(tmp_path):
    trainer = {"dict_class": "AutoEncoder", "activation_dim": D + 1, "dict_size": F}
    write_dl(tmp_path, dl_autoencoder_state(), trainer)
    with pytest.raises(DictionaryFormatError, match="activation_dim"):
        load_dictionary(tmp_path)


def test_dictionary_learning_errors(tmp_path):
    write_dl(tmp_path / "a", dl_autoencoder_state(), {"dict_class": "Mystery"})
    with pytest.raises(DictionaryFormatError, match="'Mystery' is not supported"):
        load_dictionary(tmp_path / "a")
    s = {"k": torch.tensor(2), "threshold": torch.tensor(-1.0), "encoder.weight": rand(F, D),
         "encoder.bias": rand(F), "decoder.weight": rand(D, F), "b_dec": rand(D)}  # fmt: skip
    write_dl(tmp_path / "b", s, {"dict_class": "AutoEncoderTopK", "k": 5})
    with pytest.raises(DictionaryFormatError, match="k=2"):
        load_dictionary(tmp_path / "b")
    write_dl(tmp_path / "c", s, None)  # top-k or batch top-k? only config.json can tell
    with pytest.raises(DictionaryFormatError, match="config.json"):
        load_dictionary(tmp_path / "c")


def test_other_format_errors(tmp_path):
    save_file(sae_lens_tensors(), str(tmp_path / "sae_weights.safetensors"))
    with pytest.raises(DictionaryFormatError, match="cfg.json"):
        load_dictionary(tmp_path)
    cfg = {"architecture": "jumprelu_transcoder", "d_in": D, "d_sae": F}
    write_cfg_safetensors(tmp_path / "tc", "sae_weights.safetensors", cfg, sae_lens_tensors())
    with pytest.raises(DictionaryFormatError, match="not supported"):
        load_dictionary(tmp_path / "tc")
    cfg = {"k": 2, "num_latents": F, "d_in": D, "transcode": True}
    t = {
        "encoder.weight": rand(F, D),
        "encoder.bias": rand(F),
        "W_dec": rand(F, D),
        "b_dec": rand(D),
    }
    write_cfg_safetensors(tmp_path / "sp", "sae.safetensors", cfg, t)
    with pytest.raises(DictionaryFormatError, match="transcoder"):
        load_dictionary(tmp_path / "sp")


def test_load_dictionary_device_and_dtype(tmp_path, x):
    write_dl(tmp_path, dl_autoencoder_state(), {"dict_class": "AutoEncoder"})
    d = load_dictionary(tmp_path, device="cpu", dtype=torch.float64)
    assert d.W_enc.dtype == torch.float64 and d.encode(x.double()).dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# load_dictionaries


@dataclass(frozen=True)
class Sub:
    name: str
    kind: str
    layer: int | None
    width: int


def fake_model(dtype: torch.dtype = torch.float64) -> SimpleNamespace:
    subs = [Sub("embed", "embed", None, D)]
    for i in range(2):
        subs += [
            Sub(f"attn_{i}", "attn", i, D),
            Sub(f"mlp_{i}", "mlp", i, D),
            Sub(f"resid_{i}", "resid", i, D),
        ]
    by_name = {s.name: s for s in subs}
    cpu = torch.device("cpu")
    return SimpleNamespace(
        submodules=subs, submodule=by_name.__getitem__, device=cpu, device_of=lambda name: cpu,
        dtype=dtype,
    )  # fmt: skip


def sfc_tree(root: Path, names: list[str]) -> Path:
    for name in names:
        write_dl(root / name / "10_32768", dl_autoencoder_state(), {"dict_class": "AutoEncoder"})
    return root


def test_sfc_directory(tmp_path):
    root = sfc_tree(tmp_path, ["embed", "attn_out_layer0", "mlp_out_layer0", "resid_out_layer1"])
    ds = load_dictionaries(fake_model(), root)
    assert list(ds) == ["embed", "attn_0", "mlp_0", "resid_1"]  # the ones present, model order
    assert all(d.W_enc.dtype == torch.float64 for d in ds.values())  # moved to the model's dtype
    assert list(load_dictionaries(fake_model(), str(root), submodules=["mlp_0"])) == ["mlp_0"]
    with pytest.raises(FileNotFoundError, match="resid_0"):
        load_dictionaries(fake_model(), root, submodules=["mlp_0", "resid_0"])
    with pytest.raises(KeyError, match="valid names"):
        load_dictionaries(fake_model(), root, submodules=["mlp_9"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dictionaries(fake_model(), tmp_path / "nope")


def test_a_misspelt_folder_is_named_not_dropped_silently(tmp_path):
    root = sfc_tree(tmp_path, ["embed", "attn_out_layr0", "mlp_out_layer0"])
    with pytest.warns(UserWarning, match=r"attn_out_layr0 names no submodule.*attn_out_layer0/"):
        ds = load_dictionaries(fake_model(), root)
    assert list(ds) == ["embed", "mlp_0"]


def test_nan_and_integer_weights_name_the_file(tmp_path):
    state = dl_autoencoder_state()
    state["encoder.weight"][3, 2] = float("nan")
    path = write_dl(tmp_path / "nan", state, {"dict_class": "AutoEncoder"})
    with pytest.raises(DictionaryFormatError, match=r"nan/ae.pt: W_enc holds 1 NaN"):
        load_dictionary(path)
    state = {k: (v * 10).to(torch.int64) for k, v in dl_autoencoder_state().items()}
    path = write_dl(tmp_path / "int", state, {"dict_class": "AutoEncoder"})
    with pytest.raises(DictionaryFormatError, match=r"int/ae.pt: .* not floating point"):
        load_dictionary(path)


def test_neurons():
    ds = load_dictionaries(fake_model(), "neurons")
    assert list(ds) == [s.name for s in fake_model().submodules]
    assert all(isinstance(d, Identity) and d.width == D for d in ds.values())


def test_mapping(tmp_path):
    sae = all_dictionaries()[0]
    path = write_dl(tmp_path / "m", dl_autoencoder_state(), {"dict_class": "AutoEncoder"})
    ds = load_dictionaries(fake_model(), {"resid_0": sae, "mlp_1": path, "attn_0": "neurons"})
    assert list(ds) == ["attn_0", "resid_0", "mlp_1"]
    assert ds["resid_0"] is sae and sae.W_enc.dtype == torch.float64
    assert isinstance(ds["attn_0"], Identity)
    with pytest.raises(KeyError, match=r"resid_7.*valid names.*embed"):
        load_dictionaries(fake_model(), {"resid_7": path})
    with pytest.raises(FileNotFoundError, match="mlp_0"):
        load_dictionaries(fake_model(), {"resid_0": path}, submodules=["resid_0", "mlp_0"])


def test_width_mismatch_names_both_numbers(tmp_path):
    wide = SAE(rand(D + 2, F), rand(F), rand(F, D + 2), rand(D + 2), ReLU())
    with pytest.raises(ValueError, match=r"resid_0.*d_model 8.*width 6"):
        load_dictionaries(fake_model(), {"resid_0": wide})


def test_zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(dl, "ZOO_DICTIONARIES", tmp_path / "not_built")
    with pytest.raises(FileNotFoundError, match="circuits zoo build"):
        load_dictionaries(fake_model(), "zoo")
    monkeypatch.setattr(dl, "ZOO_DICTIONARIES", sfc_tree(tmp_path / "zoo", ["resid_out_layer0"]))
    assert list(load_dictionaries(fake_model(), "zoo")) == ["resid_0"]

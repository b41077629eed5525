"""Dictionary files: reading every public layout, telling formats apart, and saving.

- ``load_dictionary``: one dictionary from files in the dictionary_learning, sae-lens, sparsify or
  GemmaScope layout. Every format is converted at this boundary to one internal layout:
  ``W_enc [d_model, width]``, ``W_dec [width, d_model]``.
- ``save_dictionary``: writes dictionary_learning's layout (``ae.pt`` + ``config.json``).

Files are read without executing code: ``torch.load(..., weights_only=True)``, safetensors, and
``numpy.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from circuits.dictionaries.base import (
    SAE,
    BatchTopK,
    Dictionary,
    GatedSAE,
    JumpReLU,
    ReLU,
    TopK,
)
from circuits.files import replacing, write_text

__all__ = ["DictionaryFormatError", "load_dictionary", "save_dictionary"]

PathLike = str | os.PathLike


class DictionaryFormatError(ValueError):
    """A dictionary file is unsafe, of an unknown format, or inconsistent with itself."""


# ------------------------------------------------------------------------------------------------
# Reading files safely


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DictionaryFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DictionaryFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_torch(path: Path) -> dict[str, Tensor]:
    """A state dict from a ``.pt`` file, refusing anything that would run code on load."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        detail = ""
        if "WeightsUnpickler error:" in message:  # torch's own reason, without its advice
            detail = message.split("WeightsUnpickler error:")[-1]
            detail = re.split(r"Please use|Check the documentation", detail)[0].strip()
            detail = f" [{detail[:200]}]"
        raise DictionaryFormatError(
            f"{path}: refused: the file contains code or Python objects that are not plain tensors "
            f"(or is not a torch file), so it will not be loaded. Only a state dict of tensors "
            f"is read from .pt files.{detail}"
        ) from None
    except Exception as e:  # a truncated or foreign file fails in many ways inside torch.load
        raise DictionaryFormatError(
            f"{path}: could not be read as a torch file ({type(e).__name__}: {e})"
        ) from None
    if isinstance(data, dict) and {"ae", "optimizer"} <= set(data):
        raise DictionaryFormatError(
            f"{path}: this is a training checkpoint (keys {sorted(data)}), not a dictionary's "
            f"state dict; use the ae.pt written at the end of training"
        )
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise DictionaryFormatError(f"{path}: expected a state dict (a dict of tensors)")
    return data


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise DictionaryFormatError(f"{path}: could not be read as safetensors ({e})") from None


def _read_npz(path: Path) -> dict[str, Tensor]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(data[key].copy()) for key in data.files}
    except ValueError as e:  # object arrays need pickle, which is refused
        raise DictionaryFormatError(
            f"{path}: refused: holds arrays that need pickled Python objects ({e}); only plain "
            f"numeric arrays are read"
        ) from None
    except (OSError, EOFError) as e:
        raise DictionaryFormatError(f"{path}: could not be read as a .npz file ({e})") from None


@dataclass
class _Tensors:
    """Tensors of one file, taken out by name with their shapes checked against the file."""

    path: Path
    tensors: dict[str, Tensor]

    def take(self, key: str, shape: Sequence[int], axes: str) -> Tensor:
        """Remove and return ``key``; ``axes`` names the expected axes, e.g. ``"[d_sae, d_in]"``."""
        if key not in self.tensors:
            raise DictionaryFormatError(
                f"{self.path}: missing tensor {key!r} (expected {axes} = {list(shape)}); "
                f"found {sorted(self.tensors)}"
            )
        t = self.tensors.pop(key)
        if tuple(t.shape) != tuple(shape):
            raise DictionaryFormatError(
                f"{self.path}: tensor {key!r} has shape {list(t.shape)}, "
                f"expected {axes} = {list(shape)}"
            )
        return t

    def done(self, what: str) -> None:
        """Refuse tensors nobody took: they mean an architecture this loader does not know."""
        if self.tensors:
            raise DictionaryFormatError(
                f"{self.path}: unexpected tensors {sorted(self.tensors)} for {what}; "
                f"this variant is not supported"
            )


def _shape_of(tensors: dict[str, Tensor], key: str, path: Path, ndim: int = 2) -> tuple[int, ...]:
    if key not in tensors:
        raise DictionaryFormatError(f"{path}: missing tensor {key!r}; found {sorted(tensors)}")
    shape = tuple(tensors[key].shape)
    if len(shape) != ndim:
        raise DictionaryFormatError(
            f"{path}: tensor {key!r} should have {ndim} axes, has shape {list(shape)}"
        )
    return shape


def _config_int(cfg: Mapping[str, Any], key: str, path: Path) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DictionaryFormatError(f"{path}: expected an integer {key!r}, got {value!r}")
    return value


def _check_config_dims(
    path: Path, cfg: Mapping[str, Any], keys: tuple[str, str], d: int, width: int
):
    for key, actual in zip(keys, (d, width), strict=True):
        if cfg.get(key) is not None and cfg[key] != actual:
            raise DictionaryFormatError(
                f"{path}: {key!r} is {cfg[key]} but the weights have {actual}"
            )


# ------------------------------------------------------------------------------------------------
# dictionary_learning: ae.pt (state dict) + config.json {"trainer": {"dict_class": ...}}
# Their nn.Linear weights are [out, in]: encoder.weight [width, d_model], decoder.weight
# [d_model, width]; transposed here into W_enc [d_model, width], W_dec [width, d_model].


def _dl_linear(t: _Tensors) -> tuple[int, int]:
    width, d = _shape_of(t.tensors, "encoder.weight", t.path)
    return d, width


def _dl_autoencoder(t: _Tensors, cfg: Mapping[str, Any]) -> Dictionary:
    d, F = _dl_linear(t)
    W_enc = t.take("encoder.weight", (F, d), "[dict_size, activation_dim]").T
    b_enc = t.take("encoder.bias", (F,), "[dict_size]")
    W_dec = t.take("decoder.weight", (d, F), "[activation_dim, dict_size]").T
    b_dec = t.take("bias", (d,), "[activation_dim]")
    t.done("AutoEncoder")
    return SAE(W_enc, b_enc, W_dec, b_dec, ReLU(), apply_b_dec_to_input=True)


def _dl_autoencoder_new(t: _Tensors, cfg: Mapping[str, Any]) -> Dictionary:
    # Both linears carry a bias and nothing is subtracted before encoding.
    d, F = _dl_linear(t)
    W_enc = t.take("encoder.weight", (F, d), "[dict_size, activation_dim]").T
    b_enc = t.take("encoder.bias", (F,), "[dict_size]")
    W_dec = t.take("decoder.weight", (d, F), "[activation_dim, dict_size]").T
    b_dec = t.take("decoder.bias", (d,), "[activation_dim]")
    t.done("AutoEncoderNew")
    return SAE(W_enc, b_enc, W_dec, b_dec, ReLU(), apply_b_dec_to_input=False)


def _dl_k(t: _Tensors, cfg: Mapping[str, Any]) -> int:
    stored = int(t.take("k", (), "[] (scalar)").item())
    if cfg.get("k") is not None and cfg["k"] != stored:
        raise DictionaryFormatError(f"{t.path}: k={stored} but config.json says k={cfg['k']}")
    return stored


def _dl_topk(t: _Tensors, cfg: Mapping[str, Any], batch: bool) -> Dictionary:
    d, F = _dl_linear(t)
    W_enc = t.take("encoder.weight", (F, d), "[dict_size, activation_dim]").T
    b_enc = t.take("encoder.bias", (F,), "[dict_size]")
    W_dec = t.take("decoder.weight", (d, F), "[activation_dim, dict_size]").T
    b_dec = t.take("b_dec", (d,), "[activation_dim]")
    k = _dl_k(t, cfg)
    threshold = t.take("threshold", (), "[] (scalar)")
    t.done("BatchTopKSAE" if batch else "AutoEncoderTopK")
    # AutoEncoderTopK.encode defaults to per-token top-k; BatchTopKSAE.encode to the threshold.
    act = BatchTopK(k, threshold) if batch else TopK(k)
    return SAE(W_enc, b_enc, W_dec, b_dec, act, apply_b_dec_to_input=True)


def _dl_matryoshka(t: _Tensors, cfg: Mapping[str, Any]) -> Dictionary:
    # At inference every group is active, so it encodes exactly like BatchTopKSAE.
    d, F = _shape_of(t.tensors, "W_enc", t.path)
    W_enc = t.take("W_enc", (d, F), "[activation_dim, dict_size]")
    b_enc = t.take("b_enc", (F,), "[dict_size]")
    W_dec = t.take("W_dec", (F, d), "[dict_size, activation_dim]")
    b_dec = t.take("b_dec", (d,), "[activation_dim]")
    k = _dl_k(t, cfg)
    threshold = t.take("threshold", (), "[] (scalar)")
    t.tensors.pop("group_sizes", None)
    t.done("MatryoshkaBatchTopKSAE")
    return SAE(W_enc, b_enc, W_dec, b_dec, BatchTopK(k, threshold), apply_b_dec_to_input=True)


def _dl_jumprelu(t: _Tensors, cfg: Mapping[str, Any]) -> Dictionary:
    # JumpReluAutoEncoder keeps apply_b_dec_to_input outside its state dict, False by default.
    d, F = _shape_of(t.tensors, "W_enc", t.path)
    W_enc = t.take("W_enc", (d, F), "[activation_dim, dict_size]")
    b_enc = t.take("b_enc", (F,), "[dict_size]")
    W_dec = t.take("W_dec", (F, d), "[dict_size, activation_dim]")
    b_dec = t.take("b_dec", (d,), "[activation_dim]")
    threshold = t.take("threshold", (F,), "[dict_size]")
    t.done("JumpReluAutoEncoder")
    return SAE(W_enc, b_enc, W_dec, b_dec, JumpReLU(threshold), apply_b_dec_to_input=False)


def _dl_gated(t: _Tensors, cfg: Mapping[str, Any]) -> Dictionary:
    d, F = _dl_linear(t)
    W_enc = t.take("encoder.weight", (F, d), "[dict_size, activation_dim]").T
    b_gate = t.take("gate_bias", (F,), "[dict_size]")
    r_mag = t.take("r_mag", (F,), "[dict_size]")
    b_mag = t.take("mag_bias", (F,), "[dict_size]")
    W_dec = t.take("decoder.weight", (d, F), "[activation_dim, dict_size]").T
    b_dec = t.take("decoder_bias", (d,), "[activation_dim]")
    t.done("GatedAutoEncoder")
    return GatedSAE(W_enc, b_gate, r_mag, b_mag, W_dec, b_dec, apply_b_dec_to_input=True)


_DL_CLASSES: dict[str, Callable[[_Tensors, Mapping[str, Any]], Dictionary]] = {
    "AutoEncoder": _dl_autoencoder,
    "AutoEncoderNew": _dl_autoencoder_new,
    "AutoEncoderTopK": lambda t, cfg: _dl_topk(t, cfg, batch=False),
    "BatchTopKSAE": lambda t, cfg: _dl_topk(t, cfg, batch=True),
    "MatryoshkaBatchTopKSAE": _dl_matryoshka,
    "JumpReluAutoEncoder": _dl_jumprelu,
    "GatedAutoEncoder": _dl_gated,
}


def _dl_guess_class(tensors: Mapping[str, Tensor]) -> str | None:
    """The class of a state dict without config.json, where its keys alone tell."""
    keys = set(tensors)
    if keys == {"bias", "encoder.weight", "encoder.bias", "decoder.weight"}:
        return "AutoEncoder"
    if keys == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}:
        return "AutoEncoderNew"
    if "r_mag" in keys and "gate_bias" in keys:
        return "GatedAutoEncoder"
    if keys == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}:
        return "JumpReluAutoEncoder"
    return None


def _load_dictionary_learning(weights: Path, config: Path | None) -> Dictionary:
    tensors = _read_torch(weights)
    cfg: dict[str, Any] = {}
    if config is not None:
        raw = _read_json(config)
        cfg = raw.get("trainer", raw)
        if not isinstance(cfg, dict):
            raise DictionaryFormatError(f"{config}: 'trainer' should be an object")
    dict_class = cfg.get("dict_class") or _dl_guess_class(tensors)
    if dict_class is None:
        raise DictionaryFormatError(
            f"{weights}: cannot tell the dictionary class from its tensors {sorted(tensors)}; "
            f"put a config.json beside it with trainer.dict_class (one of {sorted(_DL_CLASSES)})"
        )
    if dict_class not in _DL_CLASSES:
        raise DictionaryFormatError(
            f"{config or weights}: dict_class {dict_class!r} is not supported; "
            f"supported: {sorted(_DL_CLASSES)}"
        )
    d = _DL_CLASSES[dict_class](_Tensors(weights, dict(tensors)), cfg)
    _check_config_dims(config or weights, cfg, ("activation_dim", "dict_size"), d.d_model, d.width)
    return d


# ------------------------------------------------------------------------------------------------
# sae-lens: cfg.json + sae_weights.safetensors, weights already [d_in, d_sae] / [d_sae, d_in].


def _load_sae_lens(weights: Path, config: Path | None) -> Dictionary:
    if config is None:
        raise DictionaryFormatError(f"{weights}: sae-lens weights need cfg.json beside them")
    cfg = _read_json(config)
    arch = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "standard" and activation_fn == "topk":  # configs written before sae-lens 6
        arch = "topk"
    if arch not in ("standard", "topk", "jumprelu", "gated"):
        raise DictionaryFormatError(
            f"{config}: sae-lens architecture {arch!r} is not supported "
            f"(supported: standard, topk, jumprelu, gated)"
        )
    norm = cfg.get("normalize_activations") or "none"
    if norm in ("constant_norm_rescale", "layer_norm"):
        raise DictionaryFormatError(
            f"{config}: normalize_activations={norm!r} rescales every input at run time; "
            f"not supported"
        )
    t = _Tensors(weights, _read_safetensors(weights))
    d, F = _shape_of(t.tensors, "W_enc", weights)
    _check_config_dims(config, cfg, ("d_in", "d_sae"), d, F)
    W_enc = t.take("W_enc", (d, F), "[d_in, d_sae]")
    W_dec = t.take("W_dec", (F, d), "[d_sae, d_in]")
    b_dec = t.take("b_dec", (d,), "[d_in]")
    # Older files scale features by a learned factor before decoding; fold it into W_dec.
    for key in ("finetuning_scaling_factor", "scaling_factor"):
        if key in t.tensors:
            W_dec = W_dec * t.take(key, (F,), "[d_sae]")[:, None]
    apply = bool(cfg.get("apply_b_dec_to_input", True))
    if arch == "gated":
        b_gate = t.take("b_gate", (F,), "[d_sae]")
        r_mag = t.take("r_mag", (F,), "[d_sae]")
        b_mag = t.take("b_mag", (F,), "[d_sae]")
        t.done("a gated sae-lens SAE")
        return GatedSAE(W_enc, b_gate, r_mag, b_mag, W_dec, b_dec, apply_b_dec_to_input=apply)
    b_enc = t.take("b_enc", (F,), "[d_sae]")
    if arch == "jumprelu":
        act: nn.Module = JumpReLU(t.take("threshold", (F,), "[d_sae]"))
    elif arch == "topk":
        if not isinstance(k, int) or isinstance(k, bool):
            raise DictionaryFormatError(f"{config}: a topk SAE needs an integer 'k', got {k!r}")
        act = TopK(k)
        if cfg.get("rescale_acts_by_decoder_norm"):
            # sae-lens ranks pre * |W_dec row| and divides by it again before decoding; folding
            # the norms into the weights gives the same features and reconstruction.
            norms = W_dec.norm(dim=-1)  # [d_sae]
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    else:
        act = ReLU()
    t.done(f"a {arch} sae-lens SAE")
    return SAE(W_enc, b_enc, W_dec, b_dec, act, apply_b_dec_to_input=apply)


# ------------------------------------------------------------------------------------------------
# sparsify: cfg.json + sae.safetensors; encoder is an nn.Linear ([num_latents, d_in]),
# W_dec is [num_latents, d_in]; encode = TopK(ReLU((x - b_dec) @ encoder.weight.T + encoder.bias)).


def _load_sparsify(weights: Path, config: Path | None) -> Dictionary:
    if config is None:
        raise DictionaryFormatError(f"{weights}: sparsify weights need cfg.json beside them")
    cfg = _read_json(config)
    if cfg.get("transcode"):
        raise DictionaryFormatError(f"{config}: a transcoder (transcode=true) is not a dictionary")
    if cfg.get("activation", "topk") != "topk":
        raise DictionaryFormatError(
            f"{config}: activation {cfg['activation']!r} is not supported (only 'topk')"
        )
    k = _config_int(cfg, "k", config)
    t = _Tensors(weights, _read_safetensors(weights))
    if "W_skip" in t.tensors:
        raise DictionaryFormatError(
            f"{weights}: sparse coders with a skip connection are not supported"
        )
    F, d = _shape_of(t.tensors, "encoder.weight", weights)
    latents = cfg.get("num_latents") or d * cfg.get("expansion_factor", 0) or F
    if cfg.get("d_in", d) != d or latents != F:
        raise DictionaryFormatError(
            f"{config}: says d_in={cfg.get('d_in')}, {latents} latents; the weights have d_in={d}, "
            f"{F} latents"
        )
    W_enc = t.take("encoder.weight", (F, d), "[num_latents, d_in]").T
    b_enc = t.take("encoder.bias", (F,), "[num_latents]")
    W_dec = t.take("W_dec", (F, d), "[num_latents, d_in]")
    b_dec = t.take("b_dec", (d,), "[d_in]")
    t.done("a sparsify SAE")
    return SAE(W_enc, b_enc, W_dec, b_dec, TopK(k), apply_b_dec_to_input=True)


# ------------------------------------------------------------------------------------------------
# GemmaScope: params.npz with W_enc [d, F], b_enc, W_dec [F, d], b_dec, threshold; JumpReLU on
# the raw input (no b_dec subtraction).


def _load_gemma_scope(weights: Path, config: Path | None) -> Dictionary:
    raw = _read_npz(weights)
    tensors = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in raw.items()}
    t = _Tensors(weights, tensors)
    d, F = _shape_of(t.tensors, "W_enc", weights)
    W_enc = t.take("W_enc", (d, F), "[d_model, width]")
    b_enc = t.take("b_enc", (F,), "[width]")
    W_dec = t.take("W_dec", (F, d), "[width, d_model]")
    b_dec = t.take("b_dec", (d,), "[d_model]")
    threshold = t.take("threshold", (F,), "[width]")
    t.done("a GemmaScope JumpReLU SAE")
    return SAE(W_enc, b_enc, W_dec, b_dec, JumpReLU(threshold), apply_b_dec_to_input=False)


# ------------------------------------------------------------------------------------------------
# Format registry and load_dictionary


@dataclass(frozen=True)
class _Format:
    name: str
    weights: str  # file name of the weights inside a dictionary directory
    config: str | None  # file name of the config beside it
    load: Callable[[Path, Path | None], Dictionary]


_FORMATS = (
    _Format("dictionary_learning", "ae.pt", "config.json", _load_dictionary_learning),
    _Format("sae-lens", "sae_weights.safetensors", "cfg.json", _load_sae_lens),
    _Format("sparsify", "sae.safetensors", "cfg.json", _load_sparsify),
    _Format("GemmaScope", "params.npz", None, _load_gemma_scope),
)

_EXPECTED = "; ".join(
    f"{f.name}: {f.weights}" + (f" + {f.config}" if f.config else "") for f in _FORMATS
)


def _format_of_file(path: Path) -> _Format:
    for fmt in _FORMATS:
        if path.name == fmt.weights:
            return fmt
    if path.suffix in (".pt", ".pth"):
        return _FORMATS[0]
    if path.suffix == ".npz":
        return _FORMATS[3]
    if path.suffix == ".safetensors":
        config = path.parent / "cfg.json"
        if not config.is_file():
            raise DictionaryFormatError(
                f"{path}: a .safetensors dictionary needs cfg.json beside it"
            )
        keys = _safetensors_keys(path)
        return _FORMATS[2] if "encoder.weight" in keys else _FORMATS[1]
    raise DictionaryFormatError(f"{path}: unknown dictionary file type; expected {_EXPECTED}")


def _safetensors_keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def _find_in_directory(path: Path) -> tuple[_Format, Path]:
    present = [fmt for fmt in _FORMATS if (path / fmt.weights).is_file()]
    if len(present) > 1:
        raise DictionaryFormatError(
            f"{path}: holds files of several formats ({', '.join(f.weights for f in present)}); "
            f"point at one file"
        )
    if present:
        return present[0], path / present[0].weights
    # One level down, as in dictionary_learning's release: embed/10_32768/ae.pt.
    children = [c for c in sorted(path.iterdir()) if c.is_dir()] if path.is_dir() else []
    found = [c for c in children if any((c / f.weights).is_file() for f in _FORMATS)]
    if len(found) == 1:
        return _find_in_directory(found[0])
    if len(found) > 1:
        raise DictionaryFormatError(
            f"{path}: holds several dictionaries ({', '.join(c.name for c in found)}); pick one"
        )
    raise DictionaryFormatError(f"{path}: no dictionary found; expected {_EXPECTED}")


def load_dictionary(
    path: PathLike, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Dictionary:
    """Load one dictionary, telling the format from the files present.

    Args:
        path: a dictionary directory (or one holding a single dictionary directory), or its
            weights file. Recognised: dictionary_learning ``ae.pt`` (+ ``config.json``), sae-lens
            ``cfg.json`` + ``sae_weights.safetensors``, sparsify ``cfg.json`` + ``sae.safetensors``,
            GemmaScope ``params.npz``.
        device, dtype: where to put it; by default CPU and the dtype stored in the file.

    Raises:
        FileNotFoundError: nothing at ``path``.
        DictionaryFormatError: unknown format, a file that would run code when loaded, tensors
            whose names or shapes do not fit the format, or weights that are not floating point
            or not finite (the message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dictionary at {path}")
    if path.is_dir():
        fmt, weights = _find_in_directory(path)
    else:
        fmt, weights = _format_of_file(path), path
    config = weights.parent / fmt.config if fmt.config else None
    if config is not None and not config.is_file():
        config = None
    try:
        dictionary = fmt.load(weights, config)
    except TypeError as error:  # torch refuses to build a module of integer weights
        if "floating point" not in str(error):
            raise
        raise DictionaryFormatError(f"{weights}: the weights are not floating point") from None
    for name, tensor in dictionary.state_dict().items():
        if not tensor.is_floating_point():
            raise DictionaryFormatError(f"{weights}: {name} is {tensor.dtype}, not floating point")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise DictionaryFormatError(f"{weights}: {name} holds {bad} NaN or infinite values")
    return dictionary.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Saving in dictionary_learning's layout, so that its own loader reads what we write.


def _fold_b_dec(d: SAE | GatedSAE, subtract: bool) -> tuple[Tensor, Tensor | None]:
    """Encoder bias(es) for the other convention of subtracting ``b_dec`` before encoding.

    ``(x - b) @ W + c == x @ W + (c - b @ W)``, so switching conventions moves ``b @ W`` into the
    encoder bias; for a gated SAE the magnitude path carries it scaled by ``exp(r_mag)``.
    """
    shift = d.b_dec @ d.W_enc  # [width]
    if d.apply_b_dec_to_input == subtract:
        shift = torch.zeros_like(shift)
    elif not subtract:
        shift = -shift
    if isinstance(d, GatedSAE):
        return d.b_gate + shift, d.b_mag + d.r_mag.exp() * shift
    return d.b_enc + shift, None


def _dl_state(d: Dictionary) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    if isinstance(d, GatedSAE):
        b_gate, b_mag = _fold_b_dec(d, subtract=True)
        state = {
            "decoder_bias": d.b_dec,
            "encoder.weight": d.W_enc.T,
            "r_mag": d.r_mag,
            "gate_bias": b_gate,
            "mag_bias": b_mag,
            "decoder.weight": d.W_dec.T,
        }
        return "GatedAutoEncoder", state, {}
    if not isinstance(d, SAE):
        raise TypeError(f"save_dictionary cannot write a {type(d).__name__}; only SAE and GatedSAE")
    act = d.activation
    if isinstance(act, JumpReLU):
        b_enc, _ = _fold_b_dec(d, subtract=False)
        state = {
            "W_enc": d.W_enc,
            "b_enc": b_enc,
            "W_dec": d.W_dec,
            "b_dec": d.b_dec,
            "threshold": act.threshold,
        }
        return "JumpReluAutoEncoder", state, {}
    b_enc, _ = _fold_b_dec(d, subtract=True)
    linear = {"encoder.weight": d.W_enc.T, "encoder.bias": b_enc, "decoder.weight": d.W_dec.T}
    if isinstance(act, ReLU):
        return "AutoEncoder", {"bias": d.b_dec, **linear}, {}
    if isinstance(act, TopK | BatchTopK):
        threshold = act.threshold if isinstance(act, BatchTopK) else torch.tensor(-1.0)
        state = {
            **linear,
            "b_dec": d.b_dec,
            "k": torch.tensor(act.k, dtype=torch.int32),
            "threshold": threshold.to(torch.float32),
        }
        return (
            ("BatchTopKSAE" if isinstance(act, BatchTopK) else "AutoEncoderTopK"),
            state,
            {"k": act.k},
        )
    raise TypeError(f"save_dictionary cannot write an SAE with activation {type(act).__name__}")


def save_dictionary(dictionary: Dictionary, path: PathLike) -> Path:
    """Write ``dictionary`` into directory ``path`` in dictionary_learning's layout.

    ``ae.pt`` is a plain state dict with dictionary_learning's key names and shapes for the
    matching class (AutoEncoder, AutoEncoderTopK, BatchTopKSAE, JumpReluAutoEncoder,
    GatedAutoEncoder); ``config.json`` holds ``trainer.dict_class``, ``activation_dim``,
    ``dict_size`` and ``k`` where the class has one. Where that class fixes whether ``b_dec`` is
    subtracted before encoding and ours differs, the encoder bias is adjusted to give the same
    features. Existing files are overwritten. Returns the directory.
    """
    dict_class, state, extra = _dl_state(dictionary)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with replacing(out / "ae.pt") as tmp:
        torch.save(state, tmp)
    trainer = {
        "dict_class": dict_class,
        "activation_dim": dictionary.d_model,
        "dict_size": dictionary.width,
        **extra,
    }
    write_text(out / "config.json", json.dumps({"trainer": trainer}, indent=2))
    return out

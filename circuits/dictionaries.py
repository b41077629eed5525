"""Dictionaries: split an activation into sparse features and an error term.

A dictionary maps an activation ``x`` of shape ``[batch, pos, d_model]`` to features
``f = encode(x)`` of shape ``[batch, pos, width]`` and back, ``x_hat = decode(f)``. Everything
downstream sees only that interface, plus ``split(x) -> (f, x - decode(f))``.

Map of this module:

- Activation components (the nonlinearity an SAE holds): ``ReLU``, ``TopK``, ``BatchTopK``,
  ``JumpReLU``.
- Dictionaries: ``SAE`` (linear encoder, activation component, linear decoder), ``GatedSAE``
  (separate gate and magnitude paths), ``Identity`` (neurons).
- ``load_dictionary``: one dictionary from files in the dictionary_learning, sae-lens, sparsify or
  GemmaScope layout. Every format is converted at this boundary to one internal layout:
  ``W_enc [d_model, width]``, ``W_dec [width, d_model]``.
- ``save_dictionary``: writes dictionary_learning's layout (``ae.pt`` + ``config.json``).
- ``load_dictionaries``: one dictionary per submodule of a model (``embed``, ``attn_i``, ``mlp_i``,
  ``resid_i``) from a directory, a mapping, ``"neurons"`` or ``"zoo"``.

Files are read without executing code: ``torch.load(..., weights_only=True)``, safetensors, and
``numpy.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "ReLU",
    "TopK",
    "BatchTopK",
    "JumpReLU",
    "Dictionary",
    "Split",
    "SAE",
    "GatedSAE",
    "Identity",
    "DictionaryFormatError",
    "load_dictionary",
    "save_dictionary",
    "load_dictionaries",
    "sfc_directory_name",
    "ZOO_DICTIONARIES",
]

PathLike = str | os.PathLike

ZOO_DICTIONARIES = Path(__file__).parent / "zoo" / "data" / "dictionaries"
"""Where ``circuits zoo build`` puts the shipped model's dictionaries (SFC layout)."""


class DictionaryFormatError(ValueError):
    """A dictionary file is unsafe, of an unknown format, or inconsistent with itself."""


# ------------------------------------------------------------------------------------------------
# Activation components: pre-activations [..., width] -> features [..., width]


class ReLU(nn.Module):
    """f = max(pre, 0)."""

    def forward(self, pre: Tensor) -> Tensor:
        return pre.relu()


class TopK(nn.Module):
    """Keep the k largest pre-activations of each row, then ReLU; all others are 0.

    Selecting before or after the ReLU gives the same features, so this matches both
    dictionary_learning (ReLU, then top-k) and sae-lens / sparsify.
    """

    def __init__(self, k: int):
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"TopK needs a positive integer k, got {k!r}")
        self.k = k

    def forward(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.k, dim=-1, sorted=False)  # [..., k]
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def extra_repr(self) -> str:
        return f"k={self.k}"


class BatchTopK(nn.Module):
    """BatchTopK at inference: f = r * (r > threshold) with r = ReLU(pre), one scalar threshold.

    BatchTopK SAEs choose the top ``k * batch`` activations over a whole batch while training and
    learn ``threshold`` as a running minimum of the kept values; at inference each token is encoded
    on its own with that threshold (dictionary_learning ``BatchTopKSAE.encode`` default). A
    threshold below 0 (never learned) keeps every positive activation, as there. ``k`` is kept
    for the record and for saving.
    """

    threshold: Tensor  # [] scalar

    def __init__(self, k: int, threshold: float | Tensor):
        super().__init__()
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"BatchTopK needs a positive integer k, got {k!r}")
        self.k = k
        self.register_buffer("threshold", torch.as_tensor(threshold, dtype=torch.float32).clone())
        if self.threshold.ndim != 0:
            raise ValueError(
                f"BatchTopK threshold must be a scalar, got shape {self.threshold.shape}"
            )

    def forward(self, pre: Tensor) -> Tensor:
        acts = pre.relu()
        return acts * (acts > self.threshold)

    def extra_repr(self) -> str:
        return f"k={self.k}, threshold={self.threshold.item():.4g}"


class JumpReLU(nn.Module):
    """f = ReLU(pre) * (pre > threshold), one threshold per feature (sae-lens, GemmaScope)."""

    threshold: Tensor  # [width]

    def __init__(self, threshold: Tensor):
        super().__init__()
        if threshold.ndim != 1:
            raise ValueError(
                f"JumpReLU threshold must be [width], got shape {list(threshold.shape)}"
            )
        self.register_buffer("threshold", threshold.detach().clone())

    def forward(self, pre: Tensor) -> Tensor:
        return pre.relu() * (pre > self.threshold)

    def extra_repr(self) -> str:
        return f"width={self.threshold.shape[0]}"


# ------------------------------------------------------------------------------------------------
# Dictionaries


class Split(NamedTuple):
    """An activation split into features and what the dictionary misses."""

    features: Tensor  # [batch, pos, width]
    error: Tensor  # [batch, pos, d_model]


class Dictionary(nn.Module, ABC):
    """``encode: [batch, pos, d_model] -> [batch, pos, width]`` and ``decode`` back.

    Any number of leading axes works; only the last one is transformed. Move a dictionary with the
    usual ``.to(device, dtype)``. Weights do not require gradients (call ``requires_grad_()`` to
    train one); gradients still flow through ``encode`` and ``decode`` to their inputs.
    """

    @property
    @abstractmethod
    def d_model(self) -> int:
        """Width of the activation the dictionary reads."""

    @property
    @abstractmethod
    def width(self) -> int:
        """Number of features."""

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Features ``[batch, pos, width]`` of activations ``x [batch, pos, d_model]``."""

    @abstractmethod
    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction ``[batch, pos, d_model]`` of features ``f [batch, pos, width]``."""

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(x))``, ``[batch, pos, d_model]``."""
        return self.decode(self.encode(x))

    def error(self, x: Tensor) -> Tensor:
        """What the dictionary misses: ``x - decode(encode(x))``, ``[batch, pos, d_model]``."""
        return x - self.decode(self.encode(x))

    def split(self, x: Tensor) -> Split:
        """Features and error of ``x``; ``decode(features) + error == x``."""
        f = self.encode(x)
        return Split(f, x - self.decode(f))

    def _check_input(self, x: Tensor, size: int, dtype: torch.dtype, what: str) -> None:
        if x.shape[-1] != size:
            raise ValueError(
                f"{type(self).__name__}: {what} must end in {size}, got {list(x.shape)}"
            )
        if x.dtype != dtype:
            raise TypeError(
                f"{type(self).__name__} holds {dtype} weights but got {what} of {x.dtype}; "
                f"move it with .to({x.dtype})"
            )


def _frozen(t: Tensor, like: Tensor) -> nn.Parameter:
    """A copy of ``t`` in ``like``'s dtype and device, as a parameter that needs no gradient."""
    return nn.Parameter(t.detach().to(like).clone(), requires_grad=False)


class SAE(Dictionary):
    """Sparse autoencoder: linear encoder, an activation component, linear decoder.

    ``f = activation((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)``
    ``x_hat = f @ W_dec + b_dec``

    Args:
        W_enc: ``[d_model, width]``.
        b_enc: ``[width]``.
        W_dec: ``[width, d_model]``; row i is feature i's direction.
        b_dec: ``[d_model]``.
        activation: ``ReLU()``, ``TopK(k)``, ``BatchTopK(k, threshold)`` or ``JumpReLU(threshold)``.
        apply_b_dec_to_input: subtract ``b_dec`` from ``x`` before encoding (dictionary_learning
            and sparsify do; GemmaScope does not; sae-lens says so in its config).
    """

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        activation: nn.Module,
        *,
        apply_b_dec_to_input: bool = True,
    ):
        super().__init__()
        _check_sae_shapes(W_enc, b_enc, W_dec, b_dec, activation)
        self.W_enc = _frozen(W_enc, W_enc)  # [d_model, width]
        self.b_enc = _frozen(b_enc, W_enc)  # [width]
        self.W_dec = _frozen(W_dec, W_enc)  # [width, d_model]
        self.b_dec = _frozen(b_dec, W_enc)  # [d_model]
        self.activation = activation.to(W_enc)  # thresholds follow the weights' dtype
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[0]

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]

    def pre_activation(self, x: Tensor) -> Tensor:
        """``(x - b_dec) @ W_enc + b_enc`` (or without ``- b_dec``), ``[batch, pos, width]``."""
        self._check_input(x, self.d_model, self.W_enc.dtype, "activations")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        return self.activation(self.pre_activation(x))

    def decode(self, f: Tensor) -> Tensor:
        self._check_input(f, self.width, self.W_dec.dtype, "features")
        return f @ self.W_dec + self.b_dec

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, width={self.width}, b_dec_in={self.apply_b_dec_to_input}"


class GatedSAE(Dictionary):
    """Gated SAE (Rajamanoharan et al. 2024): a gate decides which features fire, a magnitude
    path sharing the gate's encoder (rescaled per feature by ``exp(r_mag)``) decides how much.

    ``pi = (x - b_dec * apply_b_dec_to_input) @ W_enc``;
    ``f = 1[pi + b_gate > 0] * ReLU(exp(r_mag) * pi + b_mag)``; ``x_hat = f @ W_dec + b_dec``.

    Args:
        W_enc: ``[d_model, width]``.
        b_gate, r_mag, b_mag: ``[width]``.
        W_dec: ``[width, d_model]``.
        b_dec: ``[d_model]``.
    """

    def __init__(
        self,
        W_enc: Tensor,
        b_gate: Tensor,
        r_mag: Tensor,
        b_mag: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        *,
        apply_b_dec_to_input: bool = True,
    ):
        super().__init__()
        _check_sae_shapes(W_enc, b_gate, W_dec, b_dec, ReLU())
        for name, t in (("r_mag", r_mag), ("b_mag", b_mag)):
            if tuple(t.shape) != (W_enc.shape[1],):
                raise ValueError(
                    f"GatedSAE: {name} must be [{W_enc.shape[1]}], got {list(t.shape)}"
                )
        self.W_enc = _frozen(W_enc, W_enc)  # [d_model, width]
        self.b_gate = _frozen(b_gate, W_enc)  # [width]
        self.r_mag = _frozen(r_mag, W_enc)  # [width]
        self.b_mag = _frozen(b_mag, W_enc)  # [width]
        self.W_dec = _frozen(W_dec, W_enc)  # [width, d_model]
        self.b_dec = _frozen(b_dec, W_enc)  # [d_model]
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)

    @property
    def d_model(self) -> int:
        return self.W_enc.shape[0]

    @property
    def width(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x: Tensor) -> Tensor:
        self._check_input(x, self.d_model, self.W_enc.dtype, "activations")
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        pi = x @ self.W_enc  # [batch, pos, width]
        gate = pi + self.b_gate > 0
        magnitude = (self.r_mag.exp() * pi + self.b_mag).relu()
        return gate * magnitude

    def decode(self, f: Tensor) -> Tensor:
        self._check_input(f, self.width, self.W_dec.dtype, "features")
        return f @ self.W_dec + self.b_dec

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, width={self.width}, b_dec_in={self.apply_b_dec_to_input}"


class Identity(Dictionary):
    """Neurons: ``encode(x) = x``, ``decode(f) = f``, ``width == d_model``; the error is 0."""

    def __init__(self, d_model: int):
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"Identity needs a positive integer d_model, got {d_model!r}")
        self._d_model = d_model

    @property
    def d_model(self) -> int:
        return self._d_model

    @property
    def width(self) -> int:
        return self._d_model

    def encode(self, x: Tensor) -> Tensor:
        return x

    def decode(self, f: Tensor) -> Tensor:
        return f

    def extra_repr(self) -> str:
        return f"d_model={self._d_model}"


def _check_sae_shapes(W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, act: nn.Module):
    if W_enc.ndim != 2:
        raise ValueError(f"W_enc must be [d_model, width], got {list(W_enc.shape)}")
    d, width = W_enc.shape
    want = {"b_enc": (b_enc, (width,)), "W_dec": (W_dec, (width, d)), "b_dec": (b_dec, (d,))}
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{name} must be {list(shape)} to match W_enc {[d, width]}, got {list(t.shape)}"
            )
    if isinstance(act, TopK) and act.k > width:
        raise ValueError(f"TopK k={act.k} exceeds the dictionary width {width}")
    if isinstance(act, JumpReLU) and act.threshold.shape[0] != width:
        raise ValueError(
            f"JumpReLU threshold has {act.threshold.shape[0]} entries, width is {width}"
        )


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
        DictionaryFormatError: unknown format, a file that would run code when loaded, or tensors
            whose names or shapes do not fit the format (the message names the file).
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
    return fmt.load(weights, config).to(device=device, dtype=dtype)


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
    torch.save(state, out / "ae.pt")
    trainer = {
        "dict_class": dict_class,
        "activation_dim": dictionary.d_model,
        "dict_size": dictionary.width,
        **extra,
    }
    with open(out / "config.json", "w") as f:
        json.dump({"trainer": trainer}, f, indent=2)
    return out


# ------------------------------------------------------------------------------------------------
# One dictionary per submodule of a model


def sfc_directory_name(kind: str, layer: int | None) -> str:
    """Directory name of a submodule in Sparse Feature Circuits' layout, e.g. ``mlp_out_layer3``."""
    if kind == "embed":
        return "embed"
    return f"{kind}_out_layer{layer}"


def load_dictionaries(
    model: Any,
    spec: PathLike | Mapping[str, PathLike | Dictionary],
    *,
    submodules: Sequence[str] | None = None,
) -> dict[str, Dictionary]:
    """Dictionaries for a model's submodules, moved to the model's device and dtype.

    Args:
        model: the toolkit's model wrapper; only ``model.submodules`` (records with ``name``,
            ``kind``, ``layer``, ``width``), ``model.device`` and ``model.dtype`` are used.
        spec: one of
            - ``"neurons"``: an ``Identity`` of the submodule's width for each submodule;
            - ``"zoo"``: the dictionaries shipped with the zoo (built by ``circuits zoo build``);
            - a directory in Sparse Feature Circuits' layout (``embed/``, ``attn_out_layer{i}/``,
              ``mlp_out_layer{i}/``, ``resid_out_layer{i}/``; our names ``attn_{i}/`` etc. also
              work), each holding a dictionary in any format ``load_dictionary`` reads;
            - a mapping ``{submodule name: path, Dictionary or "neurons"}``. Dictionary objects
              are moved in place.
        submodules: names to load. ``None`` loads every submodule the spec covers and skips the
            ones a directory lacks; names given here must all be found.

    Returns:
        ``{submodule name: Dictionary}`` in the model's submodule order.

    Raises:
        KeyError: a submodule name the model does not have (the message lists the valid ones).
        FileNotFoundError: a missing directory, a requested submodule without a dictionary, or the
            zoo not built.
        ValueError: a dictionary's ``d_model`` differs from its submodule's width.
    """
    records = {s.name: s for s in model.submodules}

    def check_names(names: Sequence[str], where: str) -> None:
        unknown = [n for n in names if n not in records]
        if unknown:
            raise KeyError(
                f"unknown submodule(s) {unknown} in {where}; valid names: {list(records)}"
            )

    if submodules is not None:
        if isinstance(submodules, str):
            submodules = [submodules]
        check_names(submodules, "submodules")
    wanted = list(records) if submodules is None else [n for n in records if n in set(submodules)]

    if isinstance(spec, str) and spec == "neurons":
        found: dict[str, PathLike | Dictionary] = {n: "neurons" for n in wanted}
    elif isinstance(spec, Mapping):
        check_names(list(spec), "the dictionary mapping")
        found = {n: spec[n] for n in wanted if n in spec}
    else:
        if isinstance(spec, str) and spec == "zoo":
            root = ZOO_DICTIONARIES
            if not root.is_dir():
                raise FileNotFoundError(
                    f"the zoo is not built: {root} does not exist; "
                    f"build it with `circuits zoo build`"
                )
        else:
            root = Path(spec)
            if not root.is_dir():
                raise FileNotFoundError(
                    f"dictionary directory {root} does not exist "
                    f'(or pass "neurons", "zoo" or a mapping)'
                )
        found = {}
        for name in wanted:
            rec = records[name]
            for candidate in (root / sfc_directory_name(rec.kind, rec.layer), root / name):
                if candidate.is_dir():
                    found[name] = candidate
                    break
        if not found:
            expected = [sfc_directory_name(records[n].kind, records[n].layer) for n in wanted]
            raise FileNotFoundError(
                f"{root}: none of the expected dictionary directories {expected}"
            )

    missing = [n for n in wanted if n not in found]
    if submodules is not None and missing:
        where = "the mapping" if isinstance(spec, Mapping) else str(spec)
        raise FileNotFoundError(f"no dictionary for requested submodule(s) {missing} in {where}")

    out: dict[str, Dictionary] = {}
    for name, source in found.items():
        width = records[name].width
        if isinstance(source, Dictionary):
            d = source
        elif isinstance(source, str) and source == "neurons":
            d = Identity(width)
        else:
            d = load_dictionary(source)
        if d.d_model != width:
            origin = type(d).__name__ if isinstance(source, Dictionary) else str(source)
            raise ValueError(
                f"dictionary for {name} ({origin}) has d_model {d.d_model}, "
                f"but submodule {name} has width {width}"
            )
        out[name] = d.to(device=model.device, dtype=model.dtype)
    return out

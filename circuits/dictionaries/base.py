"""Dictionary interface and its implementations.

Activation components (the nonlinearity an SAE holds): ``ReLU``, ``TopK``, ``BatchTopK``,
``JumpReLU``. Dictionaries: ``Dictionary`` (the interface), ``SAE`` (linear encoder, activation
component, linear decoder), ``GatedSAE`` (separate gate and magnitude paths), ``Identity``
(neurons); ``Split`` is what ``Dictionary.split`` returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

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
]


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

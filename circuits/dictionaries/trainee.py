"""One SAE under training (`circuits.dictionaries.training`): its parameters, forward pass,
losses (reconstruction, sparsity, AuxK for dead latents) and conversion to an ``SAE``.

Activations arrive normalised, ``x / scale`` with ``E‖x / scale‖² = d_model``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from circuits.dictionaries.base import SAE, BatchTopK, JumpReLU, ReLU, TopK

Activation = Literal["topk", "batchtopk", "relu", "jumprelu"]

_JUMP_INIT = 0.1  # JumpReLU: initial threshold, in normalised units
_JUMP_BANDWIDTH = 0.05  # JumpReLU: width of the straight-through kernel, in normalised units


class _Jump(torch.autograd.Function):
    """JumpReLU ``f = pre · 1[pre > θ]`` and its step ``1[pre > θ]`` (for L0), with the
    straight-through estimator: ``pre`` gets f's gradient where it fires, ``θ`` gets a
    rectangle-kernel pseudo-derivative, ``-θ/ε`` for f and ``-1/ε`` for the step."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(pre, threshold)
        on = (pre > threshold).to(pre)  # [tokens, width]
        return pre * on, on

    @staticmethod
    def backward(ctx, grad_f: Tensor, grad_step: Tensor) -> tuple[Tensor, Tensor]:
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < _JUMP_BANDWIDTH / 2).to(pre) / _JUMP_BANDWIDTH
        grad_threshold = -(near * (threshold * grad_f + grad_step)).sum(0)  # [width]
        return grad_f * (pre > threshold), grad_threshold


def _geometric_median(x: Tensor, iterations: int = 30) -> Tensor:
    """Weiszfeld's iteration on ``x [tokens, d_model]``, started at the mean; ``[d_model]``."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1 / (x - median).norm(dim=-1).clamp_min(1e-8)  # [tokens]
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


class _Trainee(nn.Module):
    """Parameters, dead-latent counts, BatchTopK threshold and Adam state of one SAE."""

    def __init__(
        self, d_model: int, width: int, *, activation: Activation, k: int, lr: float,
        sparsity: float, auxk_alpha: float, k_aux: int, dead_after: int,
        generator: torch.Generator,
    ):  # fmt: skip
        super().__init__()
        self.activation, self.k, self.lr, self.sparsity = activation, k, lr, sparsity
        self.auxk_alpha, self.k_aux, self.dead_after = auxk_alpha, min(k_aux, width), dead_after
        W_dec = torch.randn(width, d_model, generator=generator)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)  # [width, d_model], unit-norm rows
        self.W_enc = nn.Parameter(W_dec.T.clone())  # [d_model, width]
        self.b_enc = nn.Parameter(torch.zeros(width))  # [width]
        self.b_dec = nn.Parameter(torch.zeros(d_model))  # [d_model]
        if activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((width,), math.log(_JUMP_INIT)))
        self.register_buffer("scale", torch.tensor(1.0))  # []: raw = scale * normalised
        self.register_buffer("threshold", torch.tensor(-1.0))  # []: BatchTopK, -1 until learned
        self.register_buffer("threshold_updates", torch.tensor(0))  # []
        self.register_buffer("since_fired", torch.zeros(width, dtype=torch.long))  # [width]
        self.optimizer = torch.optim.Adam(self.parameters(), lr=lr, betas=(0.9, 0.999))

    @torch.no_grad()
    def initialise(self, raw: Tensor) -> None:
        """Fix ``scale`` from ``raw [tokens, d_model]``; put b_dec at its geometric median."""
        raw = raw.float()
        self.scale.fill_(raw.pow(2).sum(-1).mean().div(raw.shape[-1]).sqrt().clamp_min(1e-12))
        self.b_dec.copy_(_geometric_median(raw[:4096] / self.scale))

    def step(self, x: Tensor, lr_factor: float, *, learn_threshold: bool) -> dict[str, Tensor]:
        """One Adam step on normalised ``x [tokens, d_model]``; returns scalar statistics.

        1. pre = (x - b_dec) W_enc + b_enc; f = TopK (k per token), BatchTopK (the k·tokens
           largest of ReLU(pre) over the batch), ReLU, or JumpReLU of pre;
           e = x - (f W_dec + b_dec).
        2. loss = ‖e‖² + one of: (TopK, BatchTopK) α‖e - ê‖², ê decoding (without b_dec) the
           k_aux largest ReLU'd pre-activations among dead latents (no firing in the last
           ``dead_after`` tokens); (ReLU) λ Σ f; (JumpReLU) λ L0.
        3. Remove from each decoder row's gradient its part along the row, step, renormalise
           the rows.
        4. BatchTopK with ``learn_threshold``: fold the smallest positive feature into θ, a
           running mean over the first 1000 updates, an exponential average (β = 0.999) after.
        """
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc  # [tokens, width]
        if self.activation == "topk":
            f = TopK(self.k)(pre)
        elif self.activation == "batchtopk":
            acts = pre.relu().flatten()
            values, indices = acts.topk(self.k * pre.shape[0], sorted=False)
            f = torch.zeros_like(acts).scatter(0, indices, values).view_as(pre)
        elif self.activation == "relu":
            f = pre.relu()
        else:
            f, on = _Jump.apply(pre, self.log_threshold.exp())
        e = x - (f @ self.W_dec + self.b_dec)  # [tokens, d_model]
        mse = e.pow(2).sum(-1).mean()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[(f > 0).any(0)] = 0
            if learn_threshold and self.activation == "batchtopk":
                positive = f[f > 0]
                smallest = positive.min() if positive.numel() else torch.zeros_like(self.threshold)
                n = self.threshold_updates.item()
                beta = min(0.999, n / (n + 1))
                self.threshold.copy_(beta * self.threshold.clamp_min(0) + (1 - beta) * smallest)
                self.threshold_updates += 1
        dead = self.since_fired >= self.dead_after  # [width]
        penalty = torch.zeros_like(mse)
        if self.activation in ("topk", "batchtopk") and self.auxk_alpha > 0 and dead.any():
            values, indices = pre.masked_fill(~dead, -torch.inf).topk(self.k_aux, sorted=False)
            aux = torch.zeros_like(pre).scatter(-1, indices, values.relu())  # [tokens, width]
            penalty = self.auxk_alpha * (e.detach() - aux @ self.W_dec).pow(2).sum(-1).mean()
        elif self.activation == "relu":
            penalty = self.sparsity * f.sum(-1).mean()
        elif self.activation == "jumprelu":
            penalty = self.sparsity * on.sum(-1).mean()
        loss = mse + penalty
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            grad = self.W_dec.grad  # [width, d_model]
            grad -= (grad * self.W_dec).sum(-1, keepdim=True) * self.W_dec
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr * lr_factor
            self.optimizer.step()
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)
        return {
            "loss": loss.detach(),
            "fvu": mse.detach() / (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12),
            "l0": (f > 0).sum(-1).float().mean(),
            "dead_fraction": dead.float().mean(),
        }

    @torch.no_grad()
    def export(self) -> SAE:
        """The SAE on raw activations: ``(x - s b_dec) W_enc + s b_enc = s · pre(x / s)``, so
        scaling biases and thresholds by ``s`` scales features by ``s`` and reconstructions
        ``f W_dec + s b_dec`` back to raw units."""
        s = self.scale
        if self.activation == "topk":
            act: nn.Module = TopK(self.k)
        elif self.activation == "batchtopk":
            learned = self.threshold >= 0  # never learned: -1 keeps every positive feature
            act = BatchTopK(self.k, torch.where(learned, self.threshold * s, -1.0).cpu())
        elif self.activation == "relu":
            act = ReLU()
        else:
            act = JumpReLU((self.log_threshold.exp() * s).cpu())
        weights = (self.W_enc, self.b_enc * s, self.W_dec, self.b_dec * s)
        return SAE(*(w.detach().cpu().contiguous() for w in weights), act)


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over 5% of the steps (at most 1000), linear decay over the last 20%."""
    warmup = max(1, min(1000, steps // 20))
    return min(1.0, (step + 1) / warmup) * min(1.0, (steps - step) / max(1.0, 0.2 * steps))

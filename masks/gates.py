"""Gates over nodes: learnable logits ``θ [n]`` that give a gate ``g ∈ [0, 1]`` per node.

Two parametrisations, each a small ``nn.Module`` over one flat vector of logits (which node each
entry stands for is the caller's business; see `masks.train`):

- `HardConcreteGates` (Louizos, Welling & Kingma, "Learning sparse neural networks through L0
  regularization", ICLR 2018; used by subnetwork probing and Edge Pruning). While training,
  ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + θ) / β)``, ``g = clamp(s (ζ - γ) + γ, 0, 1)``
  with stretch ``(γ, ζ) = (-0.1, 1.1)`` and temperature ``β = 2/3``; at evaluation the noise is
  dropped, ``g = clamp(sigmoid(θ) (ζ - γ) + γ, 0, 1)``. Expected L0:
  ``Σ sigmoid(θ - β log(-γ / ζ))``.
- `SigmoidGates` (continuous sparsification, Savarese et al., NeurIPS 2020; masks over SAE
  latents): ``g = sigmoid(θ T)`` with a temperature ``T`` the trainer anneals upward, so gates
  harden towards 0/1. Its size penalty is ``Σ g``.

Both binarise at ``θ > 0`` (for hard-concrete that is exactly "deterministic gate > 1/2").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GAMMA", "ZETA", "BETA", "Gates", "HardConcreteGates", "SigmoidGates"]

GAMMA = -0.1
"""Hard-concrete stretch: lower end."""
ZETA = 1.1
"""Hard-concrete stretch: upper end."""
BETA = 2 / 3
"""Hard-concrete temperature."""


class Gates(nn.Module):
    """Logits ``θ [n]``, one per node; subclasses turn them into gates.

    Args:
        n: Number of nodes.
        init: Centre of the initial logits, drawn uniformly in ``[init - 1, init + 1]`` (seeded)
            so that nodes the loss treats alike do not move in lockstep; positive: every node
            starts kept.
        seed: Seed of the gate's own noise generator (no global RNG is touched).
    """

    def __init__(self, n: int, *, init: float = 3.0, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"gates need a positive number of nodes, got {n!r}")
        self.generator = torch.Generator().manual_seed(int(seed))
        spread = torch.rand(n, generator=self.generator) * 2 - 1  # U(-1, 1): breaks ties
        self.logits = nn.Parameter(float(init) + spread)  # [n]

    def gates(self, training: bool) -> Tensor:
        """Gates ``[n]`` in ``[0, 1]``: sampled (when the parametrisation samples) or not."""
        raise NotImplementedError

    def expected_size(self) -> Tensor:
        """The differentiable size penalty ``[]``: the expected number of kept nodes."""
        raise NotImplementedError

    def binary(self) -> Tensor:
        """The final kept set, ``bool [n]``: ``θ > 0``."""
        return self.logits.detach() > 0


class HardConcreteGates(Gates):
    """Hard-concrete gates (see the module docstring)."""

    def gates(self, training: bool) -> Tensor:
        theta = self.logits
        if training:
            u = torch.rand(theta.shape, generator=self.generator).to(theta)
            u = u.clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (-u).log1p() + theta) / BETA)
        else:
            s = torch.sigmoid(theta)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def expected_size(self) -> Tensor:
        return torch.sigmoid(self.logits - BETA * math.log(-GAMMA / ZETA)).sum()


class SigmoidGates(Gates):
    """Sigmoid gates with a temperature: ``g = sigmoid(θ T)`` (see the module docstring).

    Attributes:
        temperature: ``T``, set by the trainer (`anneal`).
    """

    def __init__(self, n: int, *, init: float = 3.0, seed: int = 0) -> None:
        super().__init__(n, init=init, seed=seed)
        self.temperature = 1.0

    def anneal(self, step: int, steps: int, *, start: int = 0, final: float = 200.0) -> float:
        """Set ``T = final ** ((step - start) / (steps - 1 - start))``, 1 up to step ``start``
        and ``final`` at the last step, geometric in between. Returns ``T``."""
        span = max(steps - 1 - start, 1)
        self.temperature = float(final ** (min(max(step - start, 0), span) / span))
        return self.temperature

    def gates(self, training: bool) -> Tensor:
        return torch.sigmoid(self.logits * self.temperature)

    def expected_size(self) -> Tensor:
        return self.gates(True).sum()

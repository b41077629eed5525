"""Train a standard ReLU sparse autoencoder on a matrix of activations.

Steps:
1. scale the activations by one number ``s`` so that E‖x/s‖² = d_model (raw scales in the zoo run
   from about 0.5 at the embedding to about 90 in the last residual stream, so one set of
   hyper-parameters fits every submodule only after this);
2. minimise ‖x − x̂‖² + λ·Σᵢ fᵢ‖dᵢ‖ (reconstruction plus L1 weighted by decoder norms) with Adam,
   encoder initialised to the decoder's transpose, linear warm-up and decay to zero;
3. every ``resample_every`` steps, re-initialise features that have not fired since the last
   check towards inputs that are reconstructed worst;
4. fold ``s`` and the decoder norms into the weights, so the result reads raw activations and has
   unit-norm decoder rows: encode(x) = ReLU((x − b_dec) W_enc + b_enc), decode(f) = f W_dec + b_dec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class SAEConfig:
    """Hyper-parameters of one SAE run."""

    width: int = 2048
    l1: float = 1.0
    lr: float = 3e-3
    steps: int = 2000
    batch_size: int = 2048
    warmup_steps: int = 100
    resample_every: int = 500


@dataclass(frozen=True)
class SAEWeights:
    """Weights of a trained ReLU SAE in raw activation scale.

    Shapes: ``W_enc [d_model, width]``, ``b_enc [width]``, ``W_dec [width, d_model]`` with unit-norm
    rows, ``b_dec [d_model]``.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor


def train_sae(
    acts: torch.Tensor, cfg: SAEConfig, *, seed: int, desc: str = "train SAE"
) -> SAEWeights:
    """Train on ``acts [n_tokens, d_model]`` and return raw-scale weights."""
    generator = torch.Generator().manual_seed(seed)
    n, d = acts.shape
    scale = acts.float().pow(2).sum(-1).mean().div(d).sqrt().item()
    W_dec = torch.randn(cfg.width, d, generator=generator)
    W_dec = torch.nn.Parameter(W_dec / W_dec.norm(dim=-1, keepdim=True) * 0.1)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(cfg.width))
    b_dec = torch.nn.Parameter(acts[:4096].float().mean(0) / scale)
    params = [W_enc, b_enc, W_dec, b_dec]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))
    fired = torch.zeros(cfg.width, dtype=torch.bool)
    bar = tqdm(range(cfg.steps), desc=desc, leave=False)
    for step in bar:
        x = acts[torch.randint(n, (cfg.batch_size,), generator=generator)].float() / scale
        f = torch.relu((x - b_dec) @ W_enc + b_enc)  # [batch, width]
        x_hat = f @ W_dec + b_dec
        mse = (x - x_hat).pow(2).sum(-1).mean()
        sparsity = (f * W_dec.norm(dim=-1)).sum(-1).mean()
        loss = mse + cfg.l1 * sparsity
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) * (1 - step / cfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        fired |= (f > 0).any(0)
        if (step + 1) % cfg.resample_every == 0 and step + 1 < cfg.steps * 0.8:
            _resample_dead(~fired, x, x_hat.detach(), W_enc, b_enc, W_dec, optimizer)
            fired.zero_()
        if step % 50 == 0:
            fvu = mse.item() / (x - x.mean(0)).pow(2).sum(-1).mean().item()
            bar.set_postfix(fvu=f"{fvu:.3f}", l0=f"{(f > 0).float().sum(-1).mean():.1f}")
    with torch.no_grad():
        norms = W_dec.norm(dim=-1)  # [width]
        return SAEWeights(
            W_enc=(W_enc * norms).contiguous(),
            b_enc=(b_enc * norms * scale).contiguous(),
            W_dec=(W_dec / norms[:, None]).contiguous(),
            b_dec=(b_dec * scale).contiguous(),
        )


@torch.no_grad()
def _resample_dead(dead, x, x_hat, W_enc, b_enc, W_dec, optimizer) -> None:
    """Point dead features at the worst-reconstructed inputs of the batch and reset their Adam
    moments, so they start learning again instead of staying silent for the rest of the run."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return
    loss_per_input = (x - x_hat).pow(2).sum(-1)  # [batch]
    picks = torch.multinomial(loss_per_input, n_dead, replacement=n_dead > len(x))
    directions = x[picks] - x[picks].mean(0)
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    alive_norm = W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else 1.0
    W_dec[dead] = directions * 0.1
    W_enc[:, dead] = directions.T * alive_norm * 0.2
    b_enc[dead] = 0.0
    for param, rows in ((W_dec, dead), (b_enc, dead)):
        for moment in optimizer.state[param].values():
            if torch.is_tensor(moment) and moment.dim() > 0:
                moment[rows] = 0.0
    for moment in optimizer.state[W_enc].values():
        if torch.is_tensor(moment) and moment.dim() > 0:
            moment[:, dead] = 0.0

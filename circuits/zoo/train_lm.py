"""Train the zoo's language model: a small GPT-NeoX with Pythia's layout and parallel residual.

Steps:
1. tokenise the generated corpus; every document becomes one ``<bos>``-led row of ``seq_len``
   tokens (padded with ``<pad>``, which the loss ignores);
2. AdamW with a warm-up and a cosine decay driven by *elapsed time*, so a run fits its time budget
   on any machine;
3. a checkpoint (weights, optimiser, step, elapsed time) every few minutes, from which an
   interrupted run resumes; the final model is written with ``save_pretrained``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast


@dataclass(frozen=True)
class LMConfig:
    """Size and training budget of the zoo model."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    seq_len: int = 128
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    minutes: float = 25.0
    checkpoint_minutes: float = 3.0


def model_config(cfg: LMConfig, tokenizer: PreTrainedTokenizerFast) -> GPTNeoXConfig:
    """A GPT-NeoX config with Pythia's choices (parallel residual, rotary on a quarter of dims)."""
    return GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_mlp,
        max_position_embeddings=cfg.seq_len,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tokenize_corpus(
    docs: list[str], tokenizer: PreTrainedTokenizerFast, seq_len: int
) -> torch.Tensor:
    """Tokenise documents into rows of ``<bos>`` + tokens, truncated or padded to ``seq_len``.

    Returns:
        ``[n_docs, seq_len]`` token ids.
    """
    batch = tokenizer(
        docs, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
    )
    return batch["input_ids"]


def train_lm(
    cfg: LMConfig,
    tokenizer: PreTrainedTokenizerFast,
    tokens: torch.Tensor,
    out_dir: Path,
    *,
    seed: int,
) -> GPTNeoXForCausalLM:
    """Train from scratch (or resume from ``out_dir/checkpoint.pt``) and save to ``out_dir``.

    Args:
        tokens: ``[n_docs, seq_len]`` training rows from ``tokenize_corpus``.
        out_dir: receives the checkpoint while training and the final ``save_pretrained`` files.
    """
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(model_config(cfg, tokenizer))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    step, elapsed_before = 0, 0.0
    checkpoint = out_dir / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
    generator = torch.Generator().manual_seed(seed + step)
    budget = cfg.minutes * 60
    pad = tokenizer.pad_token_id
    model.train()
    start = time.perf_counter()
    last_checkpoint = start
    bar = tqdm(total=round(budget), unit="s", desc="train zoo model", initial=round(elapsed_before))
    while (elapsed := elapsed_before + time.perf_counter() - start) < budget:
        rows = tokens[torch.randint(len(tokens), (cfg.batch_size,), generator=generator)]
        labels = rows.masked_fill(rows == pad, -100)
        loss = model(input_ids=rows, labels=labels).loss
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        lr *= 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(round(elapsed) - bar.n)
        bar.set_postfix(loss=f"{loss.item():.3f}", step=step, refresh=False)
        if time.perf_counter() - last_checkpoint > cfg.checkpoint_minutes * 60:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save({**state, "step": step, "elapsed": elapsed}, checkpoint)
            last_checkpoint = time.perf_counter()
    bar.close()
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    checkpoint.unlink(missing_ok=True)
    return model

"""Build the zoo from a seed: language → tokenizer → model → tasks → SAEs → model card.

Each stage writes its own folder under the output directory and is skipped when that folder is
already complete, so an interrupted build resumes where it stopped (``force=True`` rebuilds).
The quick preset builds a tiny world in seconds; the tests use it to prove the build path works.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from circuits.zoo import DATA_DIR, language
from circuits.zoo.tokenizer import build_tokenizer
from circuits.zoo.train_lm import LMConfig, tokenize_corpus, train_lm
from circuits.zoo.train_sae import SAEConfig, train_sae

SVA_TEMPLATES = {
    "sva-simple": "simple",
    "sva-within-rc": "within_rc",
    "sva-rc": "rc",
    "sva-nounpp": "nounpp",
}


@dataclass(frozen=True)
class ZooConfig:
    """Everything that decides what the zoo contains; the default is the shipped zoo."""

    seed: int = 0
    n_docs: int = 120_000
    lm: LMConfig = field(default_factory=LMConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    sae_tokens: int = 1_000_000
    task_pairs: dict[str, int] = field(
        default_factory=lambda: {"train": 1000, "test": 200, "generalisation": 200}
    )
    bios: dict[str, int] = field(default_factory=lambda: {"ambiguous": 4000, "balanced": 2000})
    eval_docs: int = 512


QUICK = ZooConfig(
    n_docs=400,
    lm=LMConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seq_len=64, minutes=0.1),
    sae=SAEConfig(width=64, steps=40, batch_size=256, warmup_steps=5, resample_every=20),
    sae_tokens=4096,
    task_pairs={"train": 16, "test": 16, "generalisation": 16},
    bios={"ambiguous": 32, "balanced": 32},
    eval_docs=16,
)


def build(config: ZooConfig = ZooConfig(), out_dir: Path = DATA_DIR, *, force: bool = False):
    """Build every stage that is missing under ``out_dir`` (every stage with ``force``), then
    measure the result; returns the card as a dict."""
    from circuits.zoo.card import measure
    from circuits.zoo.card_text import write_card

    out_dir = Path(out_dir)
    stages = {"model": _build_model, "tasks": _build_tasks, "dictionaries": _build_dictionaries}
    for name, stage in stages.items():
        done = out_dir / name / "COMPLETE"
        if done.exists():
            if not force:
                continue
            shutil.rmtree(out_dir / name)
        start = time.perf_counter()
        done.parent.mkdir(parents=True, exist_ok=True)  # may hold a checkpoint to resume from
        stage(config, out_dir)
        done.write_text(f"{time.perf_counter() - start:.1f}\n")
    (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    card = measure(out_dir, eval_docs=config.eval_docs, seed=config.seed)
    card["build_seconds"] = {
        name: float((out_dir / name / "COMPLETE").read_text()) for name in stages
    }
    write_card(card, out_dir)
    return card


def _build_model(config: ZooConfig, out_dir: Path) -> None:
    tokenizer = build_tokenizer(language.vocabulary())
    docs = language.corpus(config.n_docs, seed=config.seed, doc_len=config.lm.seq_len - 1)
    tokens = tokenize_corpus(docs, tokenizer, config.lm.seq_len)
    train_lm(config.lm, tokenizer, tokens, out_dir / "model", seed=config.seed)


def _build_tasks(config: ZooConfig, out_dir: Path) -> None:
    tasks = out_dir / "tasks"
    for offset, (split, n) in enumerate(config.task_pairs.items()):
        seed = config.seed + 1000 * (offset + 1)
        for name, template in SVA_TEMPLATES.items():
            rows = language.sva_pairs(template, n, split=split, seed=seed)
            _write_jsonl(tasks / name / f"{split}.jsonl", rows)
        rows = language.sva_hard_pairs(n, split=split, seed=seed)
        _write_jsonl(tasks / "sva-hard" / f"{split}.jsonl", rows)
        rows = language.ioi_pairs(n, split=split, seed=seed)
        _write_jsonl(tasks / "ioi" / f"{split}.jsonl", rows)
    for offset, (split, n) in enumerate(config.bios.items()):
        rows = language.bios(n, split=split, seed=config.seed + 7 + offset, cues="weak")
        _write_jsonl(tasks / "bios" / f"{split}.jsonl", rows)


def _build_dictionaries(config: ZooConfig, out_dir: Path) -> None:
    from circuits.dictionaries import SAE, ReLU, save_dictionary, sfc_directory_name
    from circuits.models import load_model

    model = load_model(out_dir / "model")
    n_docs = -(-config.sae_tokens // (config.lm.seq_len - 1))
    docs = language.corpus(n_docs, seed=config.seed + 1, doc_len=config.lm.seq_len - 1)
    acts = collect_activations(model, docs, batch_size=64)
    for i, sub in enumerate(tqdm(model.submodules, desc="train SAEs")):
        w = train_sae(acts.pop(sub.name), config.sae, seed=config.seed + i, desc=sub.name)
        sae = SAE(w.W_enc, w.b_enc, w.W_dec, w.b_dec, ReLU())
        save_dictionary(sae, out_dir / "dictionaries" / sfc_directory_name(sub.kind, sub.layer))


def collect_activations(model, docs: list[str], *, batch_size: int) -> dict[str, torch.Tensor]:
    """Activations of every submodule at every real (non-padding) token of ``docs``.

    BOS is kept: its activations are large and constant, and an SAE that never saw them breaks
    the model when spliced in at position 0, which every later position attends to.

    Returns:
        ``{submodule name: [n_tokens, width]}`` in float16 (half the memory; the SAE trainer
        computes in float32).
    """
    from circuits.zoo.card import run_saving

    chunks: dict[str, list[torch.Tensor]] = {s.name: [] for s in model.submodules}
    for start in tqdm(range(0, len(docs), batch_size), desc="collect activations", leave=False):
        batch = model.tokenize(docs[start : start + batch_size])
        saved = run_saving(model, batch)
        keep = batch.attention_mask.bool()
        for name, act in saved.items():
            chunks[name].append(act[keep].half())
    return {name: torch.cat(parts) for name, parts in chunks.items()}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

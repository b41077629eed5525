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

from circuits.zoo import DATA_DIR, language
from circuits.zoo.tokenizer import build_tokenizer
from circuits.zoo.train_lm import LMConfig, tokenize_corpus, train_lm

SVA_TEMPLATES = {
    "sva-simple": "simple",
    "sva-within-rc": "within_rc",
    "sva-rc": "rc",
    "sva-nounpp": "nounpp",
}


@dataclass(frozen=True)
class DictionaryConfig:
    """Options of `circuits.train_dictionaries` for the zoo's SAEs (one per submodule, all
    trained together from the same forwards over the zoo's corpus).

    ``widths`` overrides ``width`` per submodule: the embedding and the first MLP take only as
    many distinct values as the vocabulary (495 words), and the attention outputs and the last
    MLP span few directions on the zoo's language; wider dictionaries there leave many latents
    that never fire (1024 wide: 7–14% dead at the attention outputs, 9% at ``mlp_3``).
    """

    activation: str = "topk"
    width: int = 1024
    widths: dict[str, int] = field(
        default_factory=lambda: {
            "embed": 512,
            "mlp_0": 256,
            "attn_0": 512,
            "attn_1": 384,
            "attn_2": 256,
            "attn_3": 256,
            "mlp_3": 512,
        }
    )
    k: int = 16
    steps: int = 2000
    batch_size: int = 2048
    buffer_tokens: int = 2**16
    dead_after: int = 1_000_000


@dataclass(frozen=True)
class ZooConfig:
    """Everything that decides what the zoo contains; the default is the shipped zoo."""

    seed: int = 0
    n_docs: int = 120_000
    lm: LMConfig = field(default_factory=LMConfig)
    dictionaries: DictionaryConfig = field(default_factory=DictionaryConfig)
    task_pairs: dict[str, int] = field(
        default_factory=lambda: {"train": 1000, "test": 200, "generalisation": 200}
    )
    bios: dict[str, int] = field(default_factory=lambda: {"ambiguous": 4000, "balanced": 2000})
    eval_docs: int = 512


QUICK = ZooConfig(  # seq_len 192: the model's positions must hold sva-hard's longest prompts
    n_docs=400,
    lm=LMConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, seq_len=192, minutes=0.1),
    dictionaries=DictionaryConfig(
        width=64, widths={}, k=4, steps=40, batch_size=256, buffer_tokens=2048
    ),
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
    """TopK SAEs for every submodule (`circuits.train_dictionaries`; resumes from its
    checkpoint), in dictionary_learning's layout with a metrics file each."""
    from circuits.dictionaries.training import train_dictionaries
    from circuits.models import load_model

    model = load_model(out_dir / "model")
    options = asdict(config.dictionaries)
    widths = options.pop("widths")
    options["width"] = {s.name: widths.get(s.name, options["width"]) for s in model.submodules}
    train_dictionaries(
        model,
        "zoo",
        out_dir / "dictionaries",
        **options,
        context_length=config.lm.seq_len,
        eval_docs=config.eval_docs,
        seed=config.seed + 1,
    )


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

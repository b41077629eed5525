"""Measure a built zoo and write its model card (``card.json`` and ``MODEL_CARD.md``).

Everything is re-measured from the saved files through the same loaders users call
(``load_model``, ``load_dictionaries``, ``load_task``):

- task accuracy: the fraction of prompts (clean and patch) whose correct answer's logit beats the
  other answer's, and the mean logit-difference margin, per task and split;
- per SAE, on held-out corpus text (every real token, BOS included): fraction of variance explained,
  mean L0, the fraction of features that never fire, cross-entropy with the SAE spliced in (ΔCE in
  nats and the share of the zero-ablation loss it recovers), and task accuracy with it spliced in.
"""

from __future__ import annotations

from pathlib import Path

import nnsight
import torch

from circuits.zoo import language

CARD_TASKS = ("sva-simple", "sva-within-rc", "sva-rc", "sva-nounpp", "sva-hard", "ioi")
CARD_SPLITS = ("test", "generalisation")
COMMAND = "circuits zoo build"


def run_saving(model, batch) -> dict[str, torch.Tensor]:
    """Activations of every submodule ``{name: [batch, pos, width]}`` from one forward."""
    with torch.no_grad():
        with model.trace(batch):
            saved = nnsight.save({sub.name: model.read(sub) for sub in model.submodules})
    return saved


def spliced_logits(model, batch, sub=None, replace=None) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` with ``sub``'s activation ``x`` replaced by ``replace(x)``
    (a plain forward when ``sub`` is None)."""
    if sub is None:
        with torch.no_grad():
            return model.forward(batch)
    with torch.no_grad():
        with model.trace(batch):
            model.write(sub, replace(model.read(sub)))
            logits = model.read_logits().save()
    return logits


def cross_entropy(logits: torch.Tensor, batch) -> float:
    """Mean next-token loss in nats over real tokens (``logits [batch, pos, vocab]``)."""
    targets = batch.input_ids[:, 1:].masked_fill(batch.attention_mask[:, 1:] == 0, -100)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return torch.nn.functional.cross_entropy(flat, targets.reshape(-1), ignore_index=-100).item()


def task_scores(model, task, sub=None, replace=None) -> tuple[float, float]:
    """(accuracy, mean logit-difference margin) over clean and patch prompts of ``task``."""
    tok = model.tokenizer
    prompts, right, wrong = [], [], []
    for p in task.pairs:
        a = tok(p.clean_answer, add_special_tokens=False)["input_ids"][0]
        b = tok(p.patch_answer, add_special_tokens=False)["input_ids"][0]
        prompts += [p.clean_prefix, p.patch_prefix]
        right += [a, b]
        wrong += [b, a]
    batch = model.tokenize(prompts)
    last = batch.at_last(spliced_logits(model, batch, sub, replace))  # [batch, vocab]
    rows = torch.arange(len(prompts))
    margin = last[rows, torch.tensor(right)] - last[rows, torch.tensor(wrong)]
    return (margin > 0).float().mean().item(), margin.mean().item()


def measure(zoo_dir: Path, *, eval_docs: int, seed: int) -> dict:
    """Measure the zoo under ``zoo_dir``; returns the card as a plain dict."""
    from circuits.dictionaries import load_dictionaries
    from circuits.models import load_model
    from circuits.tasks import load_task

    zoo_dir = Path(zoo_dir)
    model = load_model(zoo_dir / "model")
    dictionaries = load_dictionaries(model, zoo_dir / "dictionaries")
    tasks = {
        (name, split): load_task(zoo_dir / "tasks" / name / f"{split}.jsonl")
        for name in CARD_TASKS
        for split in CARD_SPLITS
        if (zoo_dir / "tasks" / name / f"{split}.jsonl").exists()
    }
    docs = language.corpus(eval_docs, seed=seed + 999_999)
    text = model.tokenize(docs)
    keep = text.attention_mask.bool()
    clean_ce = cross_entropy(spliced_logits(model, text), text)
    acts = run_saving(model, text)

    card = {
        "model": {
            "architecture": model.architecture.name,
            "n_layers": model.n_layers,
            "d_model": model.d_model,
            "vocab_size": model.vocab_size,
            "parameters": sum(p.numel() for p in model.torch_model.parameters()),
            "eval_tokens": int(keep.sum()),
            "ce_loss": round(clean_ce, 4),
        },
        "tasks": {},
        "saes": {},
        "command": COMMAND,
    }
    for (name, split), task in tasks.items():
        acc, margin = task_scores(model, task)
        card["tasks"].setdefault(name, {})[split] = {
            "n_prompts": 2 * len(task),
            "accuracy": round(acc, 4),
            "mean_margin": round(margin, 3),
        }
    for sub in model.submodules:
        d = dictionaries.get(sub.name)
        if d is None:
            continue
        x = acts[sub.name][keep].float()  # [tokens, width]
        with torch.no_grad():
            f = d.encode(x)
            fvu = (x - d.decode(f)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        spliced_ce = cross_entropy(spliced_logits(model, text, sub, d), text)
        zero_ce = cross_entropy(spliced_logits(model, text, sub, torch.zeros_like), text)
        recovered = (zero_ce - spliced_ce) / (zero_ce - clean_ce) if zero_ce > clean_ce else None
        tests = {name: t for (name, split), t in tasks.items() if split == "test"}
        accs = {name: task_scores(model, t, sub, d)[0] for name, t in tests.items()}
        drops = [card["tasks"][name]["test"]["accuracy"] - acc for name, acc in accs.items()]
        card["saes"][sub.name] = {
            "width": d.width,
            "fvu": round(fvu.item(), 4),
            "variance_explained": round(1 - fvu.item(), 4),
            "l0": round((f > 0).float().sum(-1).mean().item(), 2),
            "dead_fraction": round(((f > 0).sum(0) == 0).float().mean().item(), 4),
            "delta_ce": round(spliced_ce - clean_ce, 4),
            "zero_ablation_delta_ce": round(zero_ce - clean_ce, 4),
            "ce_recovered": None if recovered is None else round(recovered, 4),
            "min_test_accuracy_spliced": round(min(accs.values()), 4) if accs else None,
            "max_test_accuracy_drop": round(max(drops), 4) if drops else None,
        }
    return card

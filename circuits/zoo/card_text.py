"""The zoo's model card as text: ``MODEL_CARD.md`` from ``card.json``.

Plain Python only, so ``circuits zoo info`` prints the card without importing torch
(`circuits.zoo.card` measures the numbers; this module only formats them).
"""

from __future__ import annotations

import json
from pathlib import Path

ACCURACY_TARGET = 0.95
"""Task accuracy the card flags results below."""


def write_card(card: dict, zoo_dir: Path) -> None:
    """Write ``card.json`` and ``MODEL_CARD.md`` beside the artefacts."""
    zoo_dir = Path(zoo_dir)
    (zoo_dir / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (zoo_dir / "MODEL_CARD.md").write_text(card_markdown(card))


def card_markdown(card: dict) -> str:
    """The card as markdown tables (also what ``circuits zoo info`` prints)."""
    m = card["model"]
    lines = [
        "# Zoo model card",
        "",
        f"Measured by `{card['command']}` at the end of the build; `circuits zoo info` prints it.",
        "",
        f"{m['architecture']} with {m['n_layers']} layers, d_model {m['d_model']}, vocabulary "
        f"{m['vocab_size']}, {m['parameters']:,} parameters. Held-out text: "
        f"{m['eval_tokens']:,} tokens, cross-entropy {m['ce_loss']:.3f} nats.",
        "",
        "## Tasks (accuracy: correct answer's logit above the other's; margin in logits)",
        "",
        "| task | split | prompts | accuracy | mean margin |",
        "|---|---|---:|---:|---:|",
    ]
    for name, splits in card["tasks"].items():
        for split, r in splits.items():
            lines.append(
                f"| {name} | {split} | {r['n_prompts']} | {r['accuracy']:.3f} | "
                f"{r['mean_margin']:.2f} |"
            )
    below = [
        f"{name} {split} ({r['accuracy']:.3f})"
        for name, splits in card["tasks"].items()
        for split, r in splits.items()
        if r["accuracy"] < ACCURACY_TARGET
    ]
    lines += [
        "",
        f"Below the {ACCURACY_TARGET:.0%} accuracy target: {', '.join(below) or 'none'}. "
        "The generalisation split holds noun–verb combinations, nesting depths (sva) and a "
        "template (ioi) never seen in training.",
    ]
    lines += [
        "",
        "## SAEs (held-out text; ΔCE = loss with the SAE spliced in minus clean loss; accuracy "
        "drop = the largest fall of a task's test accuracy with the SAE spliced in)",
        "",
        "| submodule | width | var. explained | L0 | dead | ΔCE (nats) | CE recovered | "
        "min task acc. spliced | largest acc. drop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in card["saes"].items():
        rec = "n/a" if r["ce_recovered"] is None else f"{r['ce_recovered']:.3f}"
        acc = r["min_test_accuracy_spliced"]
        acc = "n/a" if acc is None else f"{acc:.3f}"
        drop = r.get("max_test_accuracy_drop")
        drop = "n/a" if drop is None else f"{drop:+.3f}"
        lines.append(
            f"| {name} | {r['width']} | {r['variance_explained']:.3f} | {r['l0']:.1f} | "
            f"{r['dead_fraction']:.3f} | {r['delta_ce']:.4f} | {rec} | {acc} | {drop} |"
        )
    if "build_seconds" in card:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in card["build_seconds"].items())
        lines += ["", f"Build time on the machine that built it: {stages or 'all stages reused'}."]
    return "\n".join(lines) + "\n"

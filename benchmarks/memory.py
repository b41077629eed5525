"""Peak memory of attribution and evaluation against pairs, dictionary width and kept nodes.

Run ``python benchmarks/memory.py`` (about 4 minutes on 2 CPU cores). It prints two markdown
tables. Rows of the first:

- the zoo model and SAEs, ``sva-rc`` train pairs repeated to N = 100, 1,000 and 10,000: AtP node
  effects (batch 32), then an `circuits.evaluate.Evaluator` over the same pairs scoring the
  top-100 circuit (batch 32);
- a Pythia-70M-sized GPT-NeoX (6 layers, d_model 512, d_mlp 2,048, random weights, the zoo's
  tokenizer) with random ReLU SAEs of width 4,096, 16,384 and 32,768 at all 19 submodules: AtP
  node effects on 64 pairs (batch 16).

Rows of the second: AtP edge effects (batch 16) between the top-K nodes by AtP effect, on 64
zoo pairs and on 64 pairs of the Pythia-70M-sized model with SAEs 32,768 wide.

Peak: the extra resident memory a call needed at its peak over what the process held before
it (model and dictionaries included in "held"), measured as in ``benchmarks/attribution.py``.
Attribution and evaluation sum per batch, so their peak should not grow with the pairs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _tools():
    """``_measure`` and ``_dictionaries`` of benchmarks/attribution.py, imported by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("attribution_benchmark", HERE / "attribution.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._measure, module._dictionaries


def main() -> int:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    import circuits
    from attribution import edge_effects, node_effects
    from attribution.discover import select_nodes
    from circuits.evaluate import Evaluator
    from circuits.tasks import load_task

    torch.set_num_threads(2)
    measure, random_dictionaries = _tools()
    zoo = circuits.load_model("zoo")
    saes = circuits.load_dictionaries(zoo, "zoo")
    pairs = list(load_task("sva-rc", "train").pairs)
    rows = []
    for n in (100, 1_000, 10_000):
        task = (pairs * (n // len(pairs) + 1))[:n]
        seconds, atp_kib, effects = measure(
            lambda task=task: node_effects(
                zoo, saes, task, method="atp", batch_size=32, progress=False
            ),
            1,
        )
        top = list(select_nodes(effects.nodes(), threshold=None, top_k=100))
        start = time.perf_counter()
        _, eval_kib, _ = measure(
            lambda task=task, top=top: Evaluator(zoo, saes, task, batch_size=32).evaluate(top), 1
        )
        rows.append(("zoo, SAEs 256–1,024", n, "—", atp_kib, seconds, eval_kib,
                     time.perf_counter() - start))  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)

    zoo_effects = node_effects(zoo, saes, pairs[:64], method="atp", progress=False)
    edges = _edge_rows(measure, edge_effects, zoo, saes, pairs[:64], zoo_effects, None)
    config = GPTNeoXConfig(
        vocab_size=zoo.vocab_size, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
        intermediate_size=2048, max_position_embeddings=2048,
    )  # fmt: skip
    torch.manual_seed(0)
    pythia = circuits.load_model(GPTNeoXForCausalLM(config).eval(), tokenizer=zoo.tokenizer)
    task = pairs[:64]
    for width in (4_096, 16_384, 32_768):
        dictionaries = random_dictionaries(pythia, f"random:{width}")
        seconds, kib, effects = measure(
            lambda d=dictionaries: node_effects(
                pythia, d, task, method="atp", batch_size=16, progress=False
            ),
            1,
        )
        rows.append(("Pythia-70M-sized, random SAEs", 64, f"{width:,}", kib, seconds, None, None))
        print(rows[-1], file=sys.stderr, flush=True)
        if width == 32_768:
            edges += _edge_rows(measure, edge_effects, pythia, dictionaries, task, effects, width)
        del dictionaries

    print("| model, dictionaries | pairs | width | AtP peak MiB | AtP s | evaluate peak MiB |"
          " evaluate s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, width, atp_kib, atp_s, eval_kib, eval_s in rows:
        mib = lambda kib: "n/a" if kib is None else f"{kib / 1024:,.0f}"  # noqa: E731
        ev = "— | —" if eval_s is None else f"{mib(eval_kib)} | {eval_s:.1f}"
        print(f"| {name} | {n:,} | {width} | {mib(atp_kib)} | {atp_s:.1f} | {ev} |")
    print()
    print("| model, dictionaries | width | kept nodes | edges peak MiB | edges s |")
    print("|---|---:|---:|---:|---:|")
    for name, width, k, kib, seconds in edges:
        print(f"| {name} | {width} | {k:,} | {kib / 1024:,.0f} | {seconds:.1f} |")
    return 0


def _edge_rows(measure, edge_effects, model, dictionaries, pairs, effects, width) -> list:
    """``(model, width, kept, peak KiB, s)`` of AtP edges between the top 50, 200 and 800."""
    from attribution.discover import select_nodes

    name = "zoo, SAEs 256–1,024" if width is None else "Pythia-70M-sized, random SAEs"
    rows = []
    for k in (50, 200, 800):
        kept = list(select_nodes(effects.nodes(), threshold=None, top_k=k))
        seconds, kib, _ = measure(
            lambda kept=kept: edge_effects(
                model, dictionaries, pairs, kept, effects=effects, batch_size=16, progress=False
            ),
            1,
        )
        rows.append((name, "—" if width is None else f"{width:,}", len(kept), kib, seconds))
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())

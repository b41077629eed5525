"""Peak memory of node attribution and evaluation against pairs and dictionary width.

Run ``python benchmarks/memory.py`` (about 3 minutes on 2 CPU cores). It prints a markdown
table. Rows:

- the zoo model and SAEs, ``sva-rc`` train pairs repeated to N = 100, 1,000 and 10,000: AtP node
  effects (batch 32), then an `circuits.evaluate.Evaluator` over the same pairs scoring the
  top-100 circuit (batch 32);
- a Pythia-70M-sized GPT-NeoX (6 layers, d_model 512, d_mlp 2,048, random weights, the zoo's
  tokenizer) with random ReLU SAEs of width 4,096, 16,384 and 32,768 at all 19 submodules: AtP
  node effects on 64 pairs (batch 16).

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
    from attribution import node_effects
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

    config = GPTNeoXConfig(
        vocab_size=zoo.vocab_size, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
        intermediate_size=2048, max_position_embeddings=2048,
    )  # fmt: skip
    torch.manual_seed(0)
    pythia = circuits.load_model(GPTNeoXForCausalLM(config).eval(), tokenizer=zoo.tokenizer)
    task = pairs[:64]
    for width in (4_096, 16_384, 32_768):
        dictionaries = random_dictionaries(pythia, f"random:{width}")
        seconds, kib, _ = measure(
            lambda d=dictionaries: node_effects(
                pythia, d, task, method="atp", batch_size=16, progress=False
            ),
            1,
        )
        rows.append(("Pythia-70M-sized, random SAEs", 64, f"{width:,}", kib, seconds, None, None))
        print(rows[-1], file=sys.stderr, flush=True)
        del dictionaries

    print("| model, dictionaries | pairs | width | AtP peak MiB | AtP s | evaluate peak MiB |"
          " evaluate s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, width, atp_kib, atp_s, eval_kib, eval_s in rows:
        mib = lambda kib: "n/a" if kib is None else f"{kib / 1024:,.0f}"  # noqa: E731
        ev = "— | —" if eval_s is None else f"{mib(eval_kib)} | {eval_s:.1f}"
        print(f"| {name} | {n:,} | {width} | {mib(atp_kib)} | {atp_s:.1f} | {ev} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    raise SystemExit(main())

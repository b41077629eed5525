"""SAE features against neurons on SmolLM2-135M, on the same residual-stream submodules.

    python examples/smollm2_features_vs_neurons.py --saes out/smollm2-saes/wordnet-2048 \
        [--task en-sva-rc] [--n 64] [--method ig]

For each node set — the SAEs' features and error nodes, and the neurons of the same submodules
(``"neurons"`` restricted to them) — node effects on the task's train split, then faithfulness /
completeness of the top-k circuits on its test split, under the sfc protocol (``embed`` and
layers 0–9 intact, so only the SAEs from layer 10 on are evaluated) and the strict one (every
SAE's submodule evaluated). Prints one markdown table per protocol.
"""

from __future__ import annotations

import argparse
import time

import circuits
from attribution import node_effects
from circuits.evaluate import Evaluator
from circuits.tasks import load_task

SIZES = (5, 10, 25, 50, 100, 250, 500, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saes", required=True, help="dictionaries trained on SmolLM2")
    parser.add_argument("--task", default="en-sva-rc")
    parser.add_argument("--n", type=int, default=64, help="pairs per split")
    parser.add_argument("--method", default="ig", choices=["atp", "ig", "ig-joint"])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()

    model = circuits.load_model("smollm2-135m")
    features = circuits.load_dictionaries(model, args.saes)
    neurons = circuits.load_dictionaries(model, "neurons", submodules=list(features))
    train = load_task(args.task, "train", n=args.n)
    test = load_task(args.task, "test", n=args.n)
    rows = {protocol: [] for protocol in ("sfc", "strict")}
    for label, dictionaries in (("features", features), ("neurons", neurons)):
        start = time.perf_counter()
        effects = node_effects(model, dictionaries, train, method=args.method, progress=False)
        seconds = time.perf_counter() - start
        for protocol in rows:
            evaluator = Evaluator(model, dictionaries, test, protocol=protocol)
            points = evaluator.curve(effects.nodes(), sizes=args.sizes)
            cells = [f"{p.faithfulness:.3f} / {p.completeness:.3f}" for p in points]
            rows[protocol].append(
                f"| {label} | {evaluator.n_total} | {seconds:.0f} | " + " | ".join(cells) + " |"
            )
    subs = ", ".join(features)
    print(f"{args.task}: {args.method} effects on {args.n} train pairs, scored on {args.n} test")
    print(f"pairs; submodules {subs}; faithfulness / completeness of the top-k circuits\n")
    for protocol, lines in rows.items():
        print(f"{protocol} protocol:\n")
        print(
            "| nodes | evaluated | effects s | " + " | ".join(f"k = {k}" for k in args.sizes) + " |"
        )
        print("|---|---:|---:|" + "---:|" * len(args.sizes))
        print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

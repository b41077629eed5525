"""SAE features against neurons on SmolLM2-135M, on the same residual-stream submodules.

    python examples/smollm2_features_vs_neurons.py --saes out/smollm2-saes/wordnet-2048 \
        [--tasks en-sva-simple en-sva-within-rc en-sva-rc en-sva-nounpp] [--n 64] [--method ig]

For each task and node set — the SAEs' features and error nodes, and the neurons of the same
submodules (``"neurons"`` restricted to them) — node effects on the task's train split, then
faithfulness / completeness of the top-k circuits on its test split, under the sfc protocol
(``embed`` and layers 0–9 intact, so only the SAEs from layer 10 on are evaluated) and the
strict one (every SAE's submodule evaluated). Prints two markdown tables per task.
"""

from __future__ import annotations

import argparse
import time

import circuits
from attribution import node_effects
from circuits.evaluate import Evaluator
from circuits.tasks import load_task

SIZES = (5, 10, 25, 50, 100, 250, 500, 1000)
AGREEMENT = ("en-sva-simple", "en-sva-within-rc", "en-sva-rc", "en-sva-nounpp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--saes", required=True, help="dictionaries trained on SmolLM2")
    parser.add_argument("--tasks", nargs="+", default=list(AGREEMENT))
    parser.add_argument("--n", type=int, default=64, help="pairs per split")
    parser.add_argument("--method", default="ig", choices=["atp", "ig", "ig-joint"])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()

    model = circuits.load_model("smollm2-135m")
    features = circuits.load_dictionaries(model, args.saes)
    neurons = circuits.load_dictionaries(model, "neurons", submodules=list(features))
    for task in args.tasks:
        report(model, features, neurons, task, args)


def report(model, features, neurons, task: str, args: argparse.Namespace) -> None:
    """Print the two tables (sfc and strict protocol) of one task."""
    train = load_task(task, "train", n=args.n)
    test = load_task(task, "test", n=args.n)
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
    print(f"{task}: {args.method} effects on {len(train)} train pairs, scored on {len(test)} test")
    print(f"pairs; submodules {subs}; faithfulness / completeness of the top-k circuits\n")
    for protocol, lines in rows.items():
        print(f"{protocol} protocol:\n")
        print(
            "| nodes | evaluated | effects s | " + " | ".join(f"k = {k}" for k in args.sizes) + " |"
        )
        print("|---|---:|---:|" + "---:|" * len(args.sizes))
        print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()

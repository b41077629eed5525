"""AtP and IG against exact patching on the zoo: how well each ranks nodes, and how faithful the
circuits chosen by each ranking are.

1. Node effects of every feature and error node, summed over positions, by AtP, IG and exact
   activation patching (one patched run per node), on the task's train pairs.
2. Rank agreement with exact patching over the 200 nodes of largest exact |effect|: Spearman's
   rho of the signed effects, and the share of those nodes whose sign agrees.
3. Faithfulness and completeness of the top-k circuits of each ranking, scored on the test pairs
   with the default protocol (`circuits.evaluate.Evaluator`).

Run: python examples/exact_agreement.py [--task sva-rc] [--n 32] [--eval-n 64]
"""

from __future__ import annotations

import argparse
import time

import torch

from attribution import node_effects
from circuits.dictionaries import load_dictionaries
from circuits.evaluate import Evaluator
from circuits.models import load_model
from circuits.tasks import load_task

METHODS = ("atp", "ig", "exact")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rho of two ``[n]`` vectors (Pearson correlation of their ranks)."""
    ranks = [v.argsort().argsort().double() for v in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return float((ranks[0] * ranks[1]).sum() / (ranks[0].norm() * ranks[1].norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sva-rc")
    parser.add_argument("--n", type=int, default=32, help="train pairs the effects come from")
    parser.add_argument("--eval-n", type=int, default=64, help="test pairs circuits are scored on")
    parser.add_argument("--top", type=int, default=200, help="nodes the rank agreement covers")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 150, 200, 500])
    args = parser.parse_args()

    model = load_model("zoo")
    saes = load_dictionaries(model, "zoo")
    find = load_task(args.task, "train", n=args.n)
    effects, seconds = {}, {}
    for method in METHODS:
        start = time.perf_counter()
        found = node_effects(model, saes, find, method=method, max_runs=None, progress=False)
        effects[method] = found.nodes()
        seconds[method] = time.perf_counter() - start

    names = list(effects["exact"])
    exact = torch.tensor([effects["exact"][n] for n in names])
    top = exact.abs().argsort(descending=True)[: args.top]
    print(f"{args.task}: effects on {args.n} train pairs, {len(names)} nodes\n")
    print(f"| method | seconds | Spearman vs exact (top {args.top}) | sign agreement |")
    print("|---|---:|---:|---:|")
    for method in METHODS:
        values = torch.tensor([effects[method][n] for n in names])
        rho = spearman(values[top], exact[top])
        signs = float((values[top].sign() == exact[top].sign()).double().mean())
        print(f"| {method} | {seconds[method]:.1f} | {rho:.3f} | {signs:.3f} |")

    evaluator = Evaluator(model, saes, load_task(args.task, "test", n=args.eval_n))
    print(f"\nfaithfulness / completeness on {args.eval_n} test pairs ({evaluator.protocol}")
    print("protocol), top-k circuits of each ranking:\n")
    print("| method | " + " | ".join(f"k = {k}" for k in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for method in METHODS:
        points = evaluator.curve(effects[method], sizes=args.sizes)
        cells = [f"{p.faithfulness:.3f} / {p.completeness:.3f}" for p in points]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

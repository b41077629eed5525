"""AtP, IG and learned masks head to head on the zoo's subject-verb agreement tasks.

For each task: circuits of k nodes (k = 5 ... 500, 1,000 and 2,000) found on the train split
with attribution patching, integrated gradients, a hard-concrete mask and a sigmoid mask, over SAE
features and over neurons, all scored on the test split with the default protocol (SFC's:
position-mean ablation, ``embed`` and layer 0 intact). Writes
``out/compare/<task>/comparison.{md,json,png}`` and prints each table; each finished row is in
``out/compare/<task>/rows.jsonl`` as it lands, and a rerun resumes from it.

    python examples/compare_methods.py [--tasks sva-rc sva-nounpp] [--n 64] [--mask-steps 500]

The same for one task from the command line:
``circuits compare --task sva-rc --n 64 --eval-n 64 --out out/compare/sva-rc``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import circuits
from circuits.compare import SIZES, compare
from circuits.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sva-rc", "sva-nounpp"])
    parser.add_argument("--n", type=int, default=64, help="prompt pairs per split")
    parser.add_argument("--sizes", nargs="+", type=int, default=[*SIZES, 1000, 2000])
    parser.add_argument("--mask-steps", type=int, default=500)
    parser.add_argument("--out", default="out/compare")
    args = parser.parse_args()

    model = circuits.load_model("zoo")
    node_sets = {
        "features": circuits.load_dictionaries(model, "zoo"),
        "neurons": circuits.load_dictionaries(model, "neurons"),
    }
    for task in args.tasks:
        comparison = compare(
            model,
            node_sets,
            load_task(task, "train", n=args.n),
            eval_task=load_task(task, "test", n=args.n),
            sizes=args.sizes,
            mask_steps=args.mask_steps,
            model_name="zoo",
            rows=Path(args.out) / task / "rows.jsonl",
            progress=False,
        )
        title = f"{task}: train → test, {comparison.protocol_text}"
        comparison.save(Path(args.out) / task, title=title, settings={"task": task})
        print(f"## {title}\n\n{comparison.table()}\n", flush=True)


if __name__ == "__main__":
    main()

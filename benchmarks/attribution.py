"""Wall time, peak memory and forward passes of node and edge attribution.

Run ``python benchmarks/attribution.py`` (the zoo model and SAEs; a few minutes on 2 CPU cores)
or, e.g., ``python benchmarks/attribution.py --model DIR --dictionaries neurons --task FILE``.
It prints a markdown table. Configurations:

- node attribution (`attribution.node_effects`) with ``atp``, ``ig`` and ``ig-joint``, against
  batch size and dictionary;
- edge attribution (`attribution.edge_effects`) between the ``top_k`` nodes of largest AtP effect,
  against ``top_k``, batch size and dictionary, with the clean-input gradient (``atp``, what
  edges after AtP or exact node effects use) and once with IG left vectors (what `discover`'s
  default ``method="ig"`` uses).

Dictionaries: the ``--dictionaries`` spec (the zoo's SAEs by default), neurons (an identity per
submodule, width d_model), and random ReLU SAEs of each ``--widths`` value (cost depends on the
width, not on training), so that dictionary widths can be compared.

How it measures. Each dictionary gets a fresh subprocess that loads the model, the dictionaries
and the task once. Per configuration it runs the measured call on 2 pairs (a warm-up: nnsight
compiles its traces on first use), then ``--repeat`` times on all ``--n`` pairs:

- wall time: the fastest repeat (``time.perf_counter``);
- peak memory (`circuits.planning.peak_bytes`): on Linux, freed heap memory is handed back
  (``malloc_trim``), the process's peak resident set size is reset (``/proc/self/clear_refs``),
  and after the call the peak (``VmHWM``) minus the resident set size just before it is the
  extra memory the call needed at its peak, allocator caching included; the largest repeat is
  shown. On CPU every tensor lives in process memory, so this counts them all (Python's
  ``tracemalloc`` does not see torch's allocations and is not used). Without Linux's /proc the
  column shows n/a. On CUDA it would show host memory only;
- forward passes: counted by a forward hook on the wrapped model (calls, and batch rows summed),
  a check on the pass counts below.

Threads: ``--threads 1`` by default. The models here are small; with more threads than free
cores, each small operation waits for descheduled threads (measured on a 2-core machine with a
training job running: atp on a tiny model took 50x longer on 2 threads than on 1).

Passes per batch of ``b`` prompt pairs, read off the code in ``attribution/`` (``S`` = attributed
submodules, ``N`` = ``--steps``; one patch forward fewer without patch prompts):

- ``atp`` (attribution/atp.py): 2 forwards of ``b`` rows (clean, keeping the graph; patch,
  without gradients) and 1 backward.
- ``ig`` (attribution/ig.py): 2 forwards of ``b`` rows without gradients (both ends), then per
  submodule 1 forward of ``N * b`` rows and 1 backward: ``2 + S`` forwards, ``S`` backwards.
- ``ig-joint`` (attribution/ig.py): 2 forwards of ``b`` rows without gradients, 1 forward of
  ``N * b`` rows and 1 backward.
- edges (attribution/edges.py), ``atp`` gradient: 2 forwards of ``b`` rows (clean, keeping the
  held-fixed graph; patch) and 1 backward of the metric plus one vector-Jacobian product per
  submodule (one backward in pieces); then, per downstream submodule with kept nodes, one
  batched backward per ``chunk_size`` (64) kept nodes on the cheaper side (kept downstream
  features, or kept upstream nodes plus one double-backward) and one per ``chunk_size`` kept
  error nodes, each local to one block. IG left vectors add, per downstream submodule with
  edges, 1 forward of ``N * b`` rows and 1 backward (``ig-joint``: 1 of each in all).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PASSES = """\
Passes per batch of b pairs (S attributed submodules, N steps; read off attribution/*.py):
- atp: 2 forwards (b rows) + 1 backward
- ig: 2 forwards (b rows, no grad) + S x [1 forward (N*b rows) + 1 backward]
- ig-joint: 2 forwards (b rows, no grad) + 1 forward (N*b rows) + 1 backward
- edges, atp gradient: 2 forwards (b rows) + 1 backward (in pieces) + per downstream submodule
  ceil(kept features or kept upstream / 64) + ceil(kept errors / 64) batched local backwards
- edges, ig gradient: the above + per downstream submodule 1 forward (N*b rows) + 1 backward"""


# ------------------------------------------------------------------------------------------------
# Memory


def _measure(call, repeat: int) -> tuple[float, int | None, object]:
    """Fastest wall time, largest peak KiB above the start (None: not measurable), result."""
    from circuits.planning import peak_bytes

    best, peak, result = float("inf"), 0, None
    for _ in range(repeat):
        start = time.perf_counter()
        try:
            used, result = peak_bytes(call)
        except RuntimeError:  # no /proc/self/clear_refs: time only
            used, result = None, call()
        best = min(best, time.perf_counter() - start)
        peak = None if used is None or peak is None else max(peak, used // 1024)
    return best, peak, result


# ------------------------------------------------------------------------------------------------
# One dictionary's configurations (in a child process)


def _dictionaries(model, spec: str):
    """The dictionaries of ``spec``: a `load_dictionaries` spec or ``random:<width>``."""
    import math

    import torch

    from circuits.dictionaries import SAE, ReLU, load_dictionaries

    if not spec.startswith("random:"):
        return load_dictionaries(model, spec)
    width = int(spec.split(":", 1)[1])
    generator = torch.Generator().manual_seed(0)
    out = {}
    for sub in model.submodules:
        w_enc = torch.randn(sub.width, width, generator=generator) / math.sqrt(sub.width)
        sae = SAE(w_enc, torch.zeros(width), w_enc.T.clone(), torch.zeros(sub.width), ReLU())
        out[sub.name] = sae.to(device=model.device, dtype=model.dtype)
    return out


def run_configs(configs: list[dict]) -> list[dict]:
    """Measure configurations that share model, dictionaries and task; one result each."""
    import torch

    from attribution import edge_effects, node_effects, select_nodes
    from circuits.models import load_model
    from circuits.tasks import load_task

    first = configs[0]
    if first["threads"]:
        torch.set_num_threads(first["threads"])
    model = load_model(first["model"], device=first["device"])
    dictionaries = _dictionaries(model, first["dictionaries"])
    pairs = list(load_task(first["task"], first["split"], n=first["n"]).pairs)
    forwards: list[int] = []

    def count(module, args, kwargs):
        ids = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        forwards.append(0 if ids is None else ids.shape[0])

    results = []
    for config in configs:
        options = {"batch_size": config["batch_size"], "progress": False}
        if config["kind"] == "nodes":
            kept = None

            def call(data, config=config, options=options):
                return node_effects(
                    model,
                    dictionaries,
                    data,
                    method=config["method"],
                    steps=config["steps"],
                    **options,
                )

        else:
            atp = node_effects(model, dictionaries, pairs, method="atp", **options)
            nodes = select_nodes(atp.nodes(), threshold=None, top_k=config["top_k"])
            kept = len(nodes)

            def call(data, config=config, options=options, nodes=nodes, atp=atp):
                return edge_effects(
                    model,
                    dictionaries,
                    data,
                    nodes,
                    effects=atp,
                    gradient=config["gradient"],
                    steps=config["steps"],
                    **options,
                )

        call(pairs[:2])  # warm-up
        forwards.clear()
        hook = model.torch_model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            seconds, peak, result = _measure(lambda: call(pairs), config["repeat"])
        finally:
            hook.remove()
        results.append(
            {
                "seconds": seconds,
                "peak_kib": peak,
                "forwards": len(forwards) // config["repeat"],
                "rows": sum(forwards) // config["repeat"],
                "kept": kept,
                "edges": len(result) if kept is not None else None,
                "submodules": len(dictionaries),
                "widths": sorted({d.width for d in dictionaries.values()}),
                "examples": len(pairs),
            }
        )
    return results


# ------------------------------------------------------------------------------------------------
# The grid (parent process)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="zoo", help="'zoo', a hub name or a local directory")
    parser.add_argument(
        "--dictionaries", default="zoo", help="'zoo', 'neurons' or a directory in SFC's layout"
    )
    parser.add_argument(
        "--task", default="sva-rc", help="a zoo task name or a JSONL file of prompt pairs"
    )
    parser.add_argument("--split", default="test", help="split of a zoo task")
    parser.add_argument("--n", type=int, default=32, help="prompt pairs per measured call")
    parser.add_argument("--steps", type=int, default=10, help="IG steps")
    parser.add_argument("--methods", default="atp,ig,ig-joint", help="node methods to time")
    parser.add_argument("--batch-sizes", default="8,32", help="batch sizes to time")
    parser.add_argument("--top-k", default="25,100,400", help="kept-node counts for edges")
    parser.add_argument("--edge-batch-size", type=int, default=16, help="batch size of edges")
    parser.add_argument(
        "--widths", default="", help="also time random ReLU SAEs of these widths (e.g. 512,8192)"
    )
    parser.add_argument("--no-neurons", action="store_true", help="skip the neuron comparison")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="where the model runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def grid(args: argparse.Namespace) -> list[list[dict]]:
    """Every configuration to measure, grouped by dictionaries, in table order."""
    base = {
        key: getattr(args, key)
        for key in ("model", "task", "split", "n", "steps", "repeat", "threads", "device")
    }
    specs = [args.dictionaries]
    if args.dictionaries != "neurons" and not args.no_neurons:
        specs.append("neurons")
    specs += [f"random:{w}" for w in _ints(args.widths)]
    batch_sizes, top_ks = _ints(args.batch_sizes), _ints(args.top_k)
    middle_k = top_ks[len(top_ks) // 2]
    groups = []
    for spec in specs:
        nodes = {**base, "kind": "nodes", "dictionaries": spec}
        edges = {**base, "kind": "edges", "dictionaries": spec, "gradient": "atp"}
        group = [
            {**nodes, "method": method, "batch_size": b}
            for method in args.methods.split(",")
            for b in batch_sizes
        ]
        group += [{**edges, "top_k": k, "batch_size": args.edge_batch_size} for k in top_ks]
        if spec == specs[0]:
            group += [
                {**edges, "top_k": middle_k, "batch_size": b}
                for b in batch_sizes
                if b != args.edge_batch_size
            ]
            group.append(
                {**edges, "top_k": middle_k, "batch_size": args.edge_batch_size, "gradient": "ig"}
            )
        groups.append(group)
    return groups


def zoo_missing(args: argparse.Namespace) -> str | None:
    """Why the zoo cannot be used, or None."""
    from circuits.dictionaries.mapping import ZOO_DICTIONARIES
    from circuits.models import ZOO_MODEL_DIR

    missing = []
    if args.model == "zoo" and not (ZOO_MODEL_DIR / "COMPLETE").exists():
        missing.append(f"model ({ZOO_MODEL_DIR})")
    if args.dictionaries == "zoo" and not (ZOO_DICTIONARIES / "COMPLETE").exists():
        missing.append(f"dictionaries ({ZOO_DICTIONARIES})")
    if not missing:
        return None
    return (
        f"the zoo is not built: missing {' and '.join(missing)}. Build it with "
        "`circuits zoo build`, or benchmark another model, e.g. "
        "`python benchmarks/attribution.py --model DIR --dictionaries neurons --task FILE.jsonl`"
    )


def table(rows: list[tuple[dict, dict]]) -> str:
    head = (
        "| measured | method / gradient | dictionaries | width | batch | kept nodes | edges "
        "| wall s | ms / pair | forwards (rows) | peak MiB above start |"
    )
    lines = [head, "|" + "---|" * 11]
    for config, r in rows:
        what = config["method"] if config["kind"] == "nodes" else config["gradient"]
        widths = "/".join(map(str, r["widths"]))
        peak = "n/a" if r["peak_kib"] is None else f"{r['peak_kib'] / 1024:.1f}"
        lines.append(
            f"| {config['kind']} | {what} | {config['dictionaries']} | {widths} "
            f"| {config['batch_size']} | {r['kept'] if r['kept'] is not None else 'all'} "
            f"| {r['edges'] if r['edges'] is not None else ''} | {r['seconds']:.2f} "
            f"| {1000 * r['seconds'] / r['examples']:.1f} | {r['forwards']} ({r['rows']}) "
            f"| {peak} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_configs(json.loads(args.child))))
        return 0
    why = zoo_missing(args)
    if why:
        print(f"benchmark: {why}", file=sys.stderr)
        return 1
    groups = grid(args)
    rows, started = [], time.perf_counter()
    for i, group in enumerate(groups, start=1):
        print(
            f"[{i}/{len(groups)}] {group[0]['dictionaries']}: {len(group)} configurations",
            file=sys.stderr,
            flush=True,
        )
        done = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(group)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            print(f"benchmark: {group[0]['dictionaries']} failed: {last}", file=sys.stderr)
            return 1
        rows += zip(group, json.loads(done.stdout.strip().splitlines()[-1]), strict=True)
    total = time.perf_counter() - started

    import torch

    first = rows[0][1]
    threads = args.threads or torch.get_num_threads()
    print(
        f"# Attribution cost: model {args.model}, task {args.task} ({first['examples']} pairs), "
        f"{first['submodules']} attributed submodules, steps {args.steps}\n"
    )
    print(
        f"torch {torch.__version__}, device {args.device}, {threads} torch thread(s), "
        f"{os.cpu_count()} CPUs, fastest of {args.repeat}; total {total:.0f} s\n"
    )
    print(table(rows))
    print(
        "\nwall s: one call over all pairs, after a 2-pair warm-up. peak MiB: peak resident set "
        "size during the call minus the resident set size just before it (n/a: no Linux /proc). "
        "forwards: model forward calls per call, counted by a hook (rows: batch rows summed). "
        "Edges run between the top-k nodes by AtP effect (chosen untimed).\n"
    )
    print(PASSES)
    return 0


def _import_path() -> None:
    """This file is called ``attribution.py`` like the package it measures: take its own folder
    off the import path (so ``import attribution`` finds the package) and put the repository
    root on it (so the package is found without installing)."""
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]
    sys.path.insert(0, str(here.parent))


if __name__ == "__main__":
    _import_path()
    sys.exit(main())

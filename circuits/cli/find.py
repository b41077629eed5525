"""Commands that find and score circuits: ``discover``, ``evaluate``, ``mask`` and
``compare``.

Each ``add_<command>`` adds one subcommand's options; each ``_<command>`` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from circuits.cli import options
from circuits.cli.options import (
    METRIC_NAMES,
    NO_DEFAULT,
    batch_options,
    evaluation_options,
    model_options,
    output_options,
    remote_option,
    task_options,
)
from circuits.tasks import SPLITS

_IG_NOTE_SUBMODULES = 30
"""Above this many attributed submodules `circuits discover` says what per-submodule IG costs."""


def _discover(args: argparse.Namespace) -> int:
    import time

    from attribution import discover
    from circuits.dictionaries import load_dictionaries
    from circuits.graph import format_summary
    from circuits.tasks import load_task

    start = time.perf_counter()
    task = load_task(args.task, args.split, n=args.n)
    model = options.load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)
    if args.method == "ig" and len(dictionaries) > _IG_NOTE_SUBMODULES:
        print(
            f"note: ig runs {args.steps} interpolated rows, one forward and one backward, per "
            f"attributed submodule ({len(dictionaries)} here); --method atp costs 2 forwards and "
            "1 backward in all, ig-joint 1 interpolated forward and backward",
            file=sys.stderr,
        )
    settings = dict(
        method=args.method,
        metric=METRIC_NAMES[args.metric] if args.metric else None,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        top_k=args.top_k,
        aggregation=args.aggregation,
        steps=args.steps,
        edges=not args.no_edges,
    )
    args.batch_size = options.planned_batch_size(
        args,
        model,
        task.pairs,
        lambda pairs, b: discover(
            model, dictionaries, pairs, batch_size=b, progress=False, **settings
        ),
    )
    circuit = discover(
        model,
        dictionaries,
        task,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        provenance={"model": str(args.model), "dictionaries": str(args.dictionaries)},
        **settings,
    )
    if not args.no_eval:
        circuit.provenance["evaluation"] = _held_out_score(args, model, dictionaries, task, circuit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = circuit.save(out / "circuit.json")
    seconds = time.perf_counter() - start
    summary = circuit.summary()
    score = circuit.provenance.get("evaluation")
    if args.json:
        record = {**summary, "evaluation": score, "wall_time_s": round(seconds, 3)}
        print(json.dumps({**record, "file": str(path)}, indent=2))
        return 0
    print(format_summary(summary))
    if score is not None:
        print(_score_line(score))
    if summary["empty"]:
        kept = circuit.provenance.get("nodes_kept", 0)
        if circuit.provenance.get("total_effect") == 0:
            advice = (
                "no effect to explain: the metric is the same on the clean and the patch "
                "prompts (total effect 0); check that the two prompts of each pair differ"
            )
        elif kept:
            advice = (
                f"{kept} nodes passed the node selection but none has a path to y above the "
                "edge threshold; lower --edge-threshold"
            )
        else:
            advice = "no node passed the node selection; lower --node-threshold or use --top-k"
        print(advice)
    print(f"wall time: {seconds:.1f} s")
    print(f"saved: {path}")
    return 0


def _held_out_score(args, model, dictionaries, task, circuit) -> dict:
    """Faithfulness and completeness of a found circuit on --eval-task / --eval-split pairs."""
    from circuits.evaluate import FaithfulnessUndefinedError
    from circuits.tasks import load_task

    pairs = load_task(args.eval_task or args.task, args.eval_split, n=args.eval_n or args.n)
    where = {
        "task": pairs.name,
        "split": pairs.split,
        "held_out": pairs.source != task.source,
    }
    try:
        evaluator = _evaluator(args, model, dictionaries, pairs)
    except FaithfulnessUndefinedError as error:
        return {**where, "error": str(error)}
    return {**where, **evaluator.evaluate(circuit).to_dict()}


def _evaluator(args, model, dictionaries, pairs, batch_size=None):
    """The `circuits.evaluate.Evaluator` the scoring options of ``args`` describe."""
    from circuits.evaluate import Evaluator

    return Evaluator(
        model,
        dictionaries,
        pairs,
        metric=METRIC_NAMES[args.metric] if args.metric else None,
        ablation=args.ablation,
        protocol=args.protocol,
        first_layers_intact=args.first_layers_intact,
        batch_size=batch_size or args.batch_size,
        seed=getattr(args, "seed", 0),
    )


def _score_line(score: dict) -> str:
    """The summary line of a held-out score (see `_held_out_score`)."""
    pairs = f"{score['task']} {score['split']}"
    if "error" in score:
        return f"not scored on {pairs}: {score['error']}"
    caveat = "" if score["held_out"] else " (the pairs it was found on; give --eval-task)"
    return (
        f"scored on {score['n_examples']} {pairs} pairs{caveat}: faithfulness "
        f"{score['faithfulness']:.3f}, completeness {score['completeness']:.3f} with "
        f"{score['n_nodes']} of {score['n_total']} nodes; {score['protocol_text']}"
    )


def _evaluate(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries
    from circuits.graph import Circuit
    from circuits.tasks import load_task

    circuit = Circuit.load(args.circuit)
    task = load_task(args.task, args.split, n=args.n)
    found_on = circuit.provenance.get("task")
    positioned = any(circuit.graph.nodes[n].get("position") is not None for n in circuit.graph)
    if positioned and found_on not in (None, task.name):
        print(
            f"circuits: warning: this circuit's nodes sit at token positions of {found_on!r}'s "
            f"prompts; on {task.name!r} the same positions may hold other tokens",
            file=sys.stderr,
        )
    model = options.load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)

    args.batch_size = options.planned_batch_size(
        args,
        model,
        task.pairs,
        lambda pairs, b: _evaluator(args, model, dictionaries, pairs, b).evaluate(circuit),
    )
    evaluator = _evaluator(args, model, dictionaries, task)
    result = evaluator.evaluate(circuit).to_dict()
    if args.plot and not args.sizes:
        raise ValueError("--plot draws the curve over --sizes; give --sizes K [K ...] too")
    if args.sizes:
        points = evaluator.curve(circuit, sizes=args.sizes)
        result["curve"] = [vars(p) for p in points]
        if args.plot:
            from viz.plots import plot_curves

            label = circuit.provenance.get("method", "circuit")
            result["plot"] = str(plot_curves({label: points}, args.plot, title=args.circuit))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"faithfulness {result['faithfulness']:.3f}   completeness {result['completeness']:.3f}")
    print(
        f"m(C) {result['metric_circuit']:.4g}  m(M\\C) {result['metric_complement']:.4g}  "
        f"m(∅) {result['metric_empty']:.4g}  m(M) {result['metric_full']:.4g}"
    )
    print(
        f"{result['n_nodes']} of {result['n_total']} nodes; {result['protocol_text']}; "
        f"{result['n_examples']} examples"
    )
    if result["ablation"] in ("mean", "zero"):
        print(
            f"note: {result['ablation']} ablation sets nodes to values they never take on these "
            "prompts, so low faithfulness may measure that shift, not the circuit; "
            "position-mean (the default) and resample stay on-distribution"
        )
    for p in result.get("curve", []):
        print(
            f"  top {p['size']:>6}: faithfulness {p['faithfulness']:.3f}  "
            f"completeness {p['completeness']:.3f}"
        )
    if "plot" in result:
        print(f"wrote {result['plot']}")
    return 0


def _mask(args: argparse.Namespace) -> int:
    import time

    from circuits.dictionaries import load_dictionaries
    from circuits.graph import format_summary
    from circuits.tasks import load_task
    from masks import mask_circuit, train_mask

    start = time.perf_counter()
    task = load_task(args.task, args.split, n=args.n)
    model = options.load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    mask = train_mask(
        model,
        dictionaries,
        task,
        parametrisation=args.parametrisation,
        size=args.size,
        penalty=args.penalty,
        objective=args.objective,
        ablation=args.ablation,
        protocol=args.protocol,
        first_layers_intact=args.first_layers_intact,
        keep_errors=args.keep_errors,
        positions=args.positions,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint=out / "mask.ckpt",
        progress=progress,
    )
    circuit = mask_circuit(
        model,
        dictionaries,
        task,
        mask,
        method=args.effects,
        edge_threshold=args.edge_threshold,
        batch_size=args.batch_size,
        progress=progress,
        provenance={"model": str(args.model), "dictionaries": str(args.dictionaries)},
    )
    path = circuit.save(out / "circuit.json")
    seconds = time.perf_counter() - start
    result = {
        **circuit.summary(),
        "kept": len(mask.nodes),
        "candidates": mask.n_candidates,
        "expected_size": mask.expected_size,
        "faithfulness": mask.faithfulness,
        "ablation": mask.ablation,
        "protocol": mask.protocol,
        "wall_time_s": round(seconds, 3),
        "file": str(path),
        "checkpoint": str(out / "mask.ckpt"),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_summary(circuit.summary()))
    print(
        f"mask ({mask.parametrisation}): kept {len(mask.nodes)} of {mask.n_candidates} nodes, "
        f"expected size {mask.expected_size:.1f}, faithfulness {mask.faithfulness:.3f} "
        f"on its training pairs ({mask.protocol}; {len(mask.loss)} steps)"
    )
    print(f"wall time: {seconds:.1f} s")
    print(f"saved: {path} (training state: {out / 'mask.ckpt'}; delete it to train afresh)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import time

    from circuits.compare import compare, plan
    from circuits.dictionaries import load_dictionaries
    from circuits.tasks import load_task

    start = time.perf_counter()
    find = load_task(args.task, args.split, n=args.n)
    score = load_task(args.task, args.eval_split, n=args.eval_n)
    model = options.load_model(args)
    node_sets = {}
    if "features" in args.nodes:
        node_sets["features"] = load_dictionaries(model, args.dictionaries)
    if "neurons" in args.nodes:
        node_sets["neurons"] = load_dictionaries(model, "neurons")
    rows = Path(args.out) / "rows.jsonl"
    settings = {
        "eval_task": score,
        "methods": args.methods,
        "sizes": args.sizes,
        "ablation": args.ablation,
        "protocol": args.protocol,
        "first_layers_intact": args.first_layers_intact,
        "ig_steps": args.ig_steps,
        "mask_steps": args.mask_steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "model_name": str(args.model),
        "rows": rows,
    }
    print(f"plan: {plan(model, node_sets, find, **settings).describe()}", file=sys.stderr)
    try:
        comparison = compare(model, node_sets, find, **settings, progress=not args.no_progress)
    except KeyboardInterrupt:
        saved = plan(model, node_sets, find, **settings)
        print(
            f"interrupted: {len(saved.finished)} of {len(saved.keys)} rows saved in {rows}; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    title = f"{args.task}: {args.split} → {args.eval_split}, {comparison.protocol_text}"
    settings = {
        "task": args.task,
        "find_split": args.split,
        "eval_split": args.eval_split,
        "model": str(args.model),
        "dictionaries": str(args.dictionaries),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    files = comparison.save(args.out, title=title, settings=settings)
    if args.json:
        record = comparison.to_dict()
        record["settings"].update(settings)
        print(json.dumps({**record, "files": {k: str(v) for k, v in files.items()}}, indent=1))
        return 0
    print(title)
    print(comparison.table())
    print(f"wall time: {settings['wall_time_s']:.0f} s")
    print(f"saved: {', '.join(str(v) for v in files.values())}")
    return 0


def add_discover(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``discover`` subcommand's options."""
    disc = commands.add_parser(
        "discover",
        help="find a circuit: node effects, kept nodes, edges, pruned to the metric node y",
        description="Find a circuit for a task and save it as DIR/circuit.json. Progress bars "
        "go to stderr; stdout gets the summary (or, with --json, only the summary as JSON).",
        formatter_class=fmt,
    )
    model_options(disc)
    remote_option(disc)
    task_options(disc)
    disc.add_argument(
        "--method",
        default="ig",
        choices=["ig", "atp", "ig-joint", "exact"],
        help="node effects: integrated gradients per submodule, attribution patching, "
        "IG over all submodules at once, or exact patching (slow, one run per node)",
    )
    disc.add_argument(
        "--metric",
        choices=list(METRIC_NAMES),
        help="logit[patch answer] - logit[clean answer], log p(clean answer) or KL to the "
        "clean run (default: logit-diff when the task has patch prompts, else logprob)"
        + NO_DEFAULT,
    )
    disc.add_argument(
        "--aggregation",
        default="sum",
        choices=["sum", "none"],
        help="sum effects over positions, or keep positions (nodes like resid_2/17@5; prompts "
        "must all have the same token length)",
    )
    disc.add_argument(
        "--node-threshold",
        type=float,
        help="keep nodes with |effect| above this (default: 0.1 without --top-k, no threshold "
        "with it; both given: the top K of those above it)" + NO_DEFAULT,
    )
    disc.add_argument(
        "--edge-threshold", type=float, default=0.01, help="keep edges with |weight| above this"
    )
    disc.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="keep the K nodes of largest |effect| (default: no limit)" + NO_DEFAULT,
    )
    batch_options(disc, "batch")
    disc.add_argument(
        "--steps", type=int, default=10, help="interpolation steps of ig and ig-joint"
    )
    disc.add_argument(
        "--no-edges", action="store_true", help="node effects only: no edges, no pruning"
    )
    disc.set_defaults(split="train")
    disc.add_argument(
        "--eval-task",
        metavar="TASK",
        help="score the circuit on this zoo task or JSONL file (default: --task)" + NO_DEFAULT,
    )
    disc.add_argument(
        "--eval-split",
        default="test",
        choices=list(SPLITS),
        help="split the circuit is scored on (a zoo task's held-out pairs)",
    )
    disc.add_argument(
        "--eval-n",
        type=int,
        metavar="N",
        help="score on the first N pairs (default: --n)" + NO_DEFAULT,
    )
    disc.add_argument(
        "--no-eval", action="store_true", help="do not score the circuit after finding it"
    )
    evaluation_options(disc, "nodes outside the circuit, when it is scored,")
    output_options(disc, "DIR/circuit.json")
    disc.set_defaults(run=_discover)


def add_evaluate(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``evaluate`` subcommand's options."""
    ev = commands.add_parser(
        "evaluate",
        help="faithfulness and completeness of a saved circuit (SFC ablation)",
        description="Ablate every evaluated node outside the circuit and compare the mean metric "
        "with the full model and with everything ablated.",
        formatter_class=fmt,
    )
    model_options(ev)
    remote_option(ev)
    ev.add_argument("circuit", help="a circuit file saved by `circuits discover`")
    task_options(ev)
    ev.add_argument("--metric", choices=list(METRIC_NAMES), help="as for discover" + NO_DEFAULT)
    evaluation_options(ev, "ablated nodes")
    ev.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        metavar="K",
        help="also score the top-K nodes of the circuit by |effect|" + NO_DEFAULT,
    )
    ev.add_argument(
        "--plot",
        metavar="FILE",
        help="draw the --sizes curve to FILE (.png/.svg/.pdf)" + NO_DEFAULT,
    )
    batch_options(ev, "forward")
    ev.add_argument("--seed", type=int, default=0, help="seed of resample ablation")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(run=_evaluate)


def add_mask(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``mask`` subcommand's options."""
    msk = commands.add_parser(
        "mask",
        help="learn a binary mask over nodes that keeps the task's behaviour; save its circuit",
        description="Train a hard-concrete or sigmoid mask (masks.train_mask) on a task, give "
        "its kept nodes effects and edges (masks.mask_circuit) and save DIR/circuit.json. The "
        "training state is saved to DIR/mask.ckpt and a rerun with the same settings resumes "
        "from it.",
        formatter_class=fmt,
    )
    model_options(msk)
    task_options(msk)
    msk.add_argument(
        "--size",
        type=int,
        metavar="K",
        help="target number of kept nodes (default: penalty mode, --penalty sets the size)"
        + NO_DEFAULT,
    )
    msk.add_argument(
        "--parametrisation",
        default="hard-concrete",
        choices=["hard-concrete", "sigmoid"],
        help="hard-concrete gates with expected-L0, or sigmoid gates with annealed temperature",
    )
    msk.add_argument(
        "--penalty",
        type=float,
        help="size-term weight (default: 0.01 per expected node, 100 on the squared gap to K)"
        + NO_DEFAULT,
    )
    msk.add_argument(
        "--objective",
        default="logit-diff",
        choices=["logit-diff", "kl"],
        help="match the full model's logit difference, or its output distribution (KL)",
    )
    evaluation_options(msk, "masked-out nodes")
    msk.add_argument("--keep-errors", action="store_true", help="never mask error nodes")
    msk.add_argument("--positions", action="store_true", help="one gate per node and position")
    msk.add_argument("--steps", type=int, default=500, help="optimiser steps (one batch each)")
    msk.add_argument("--lr", type=float, default=0.1, help="Adam learning rate of the gates")
    msk.add_argument("--batch-size", type=int, default=16, help="prompt pairs per batch")
    msk.add_argument("--seed", type=int, default=0, help="seed of the gates' noise")
    msk.add_argument(
        "--effects",
        default="ig",
        choices=["ig", "atp", "ig-joint", "exact"],
        help="how the kept nodes' effects and edges are computed",
    )
    msk.add_argument(
        "--edge-threshold", type=float, default=0.01, help="keep edges with |weight| above this"
    )
    output_options(msk, "DIR/circuit.json")
    msk.set_defaults(run=_mask)


def add_compare(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``compare`` subcommand's options."""
    cmp_ = commands.add_parser(
        "compare",
        help="AtP, IG and learned masks head to head: faithfulness and completeness per size",
        description="Find circuits of each size with each method over SAE features and over "
        "neurons on one split, score them all with the same ablation on another, and write "
        "DIR/comparison.{md,json,png} (circuits.compare). Each scored row is appended to "
        "DIR/rows.jsonl as soon as it lands, so a run stopped (Ctrl-C, a kill) resumes when "
        "the same command is run again; delete that file to start afresh.",
        formatter_class=fmt,
    )
    model_options(cmp_)
    task_options(cmp_)
    cmp_.set_defaults(split="train")
    cmp_.add_argument(
        "--eval-split",
        default="test",
        choices=list(SPLITS),
        help="split the circuits are scored on",
    )
    cmp_.add_argument("--eval-n", type=int, default=64, help="score on the first N pairs")
    cmp_.add_argument(
        "--nodes",
        nargs="+",
        default=["features", "neurons"],
        choices=["features", "neurons"],
        help="node sets: the --dictionaries' features, and neurons (identity dictionaries)",
    )
    cmp_.add_argument(
        "--methods",
        nargs="+",
        default=["atp", "ig", "hard-concrete", "sigmoid"],
        choices=["atp", "ig", "hard-concrete", "sigmoid"],
        help="circuit-finding methods: attribution patching, integrated gradients, two masks",
    )
    cmp_.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=[5, 10, 20, 50, 100, 200, 500],
        metavar="K",
        help="circuit sizes (nodes)",
    )
    evaluation_options(cmp_, "nodes outside a circuit (masks and evaluation)")
    cmp_.add_argument("--ig-steps", type=int, default=10, help="interpolation steps of ig")
    cmp_.add_argument("--mask-steps", type=int, default=500, help="optimiser steps per mask")
    cmp_.add_argument("--batch-size", type=int, default=16, help="prompt pairs per batch")
    cmp_.add_argument("--seed", type=int, default=0, help="seed of the masks' gates")
    output_options(cmp_, "DIR/rows.jsonl and DIR/comparison.{md,json,png}")
    cmp_.set_defaults(run=_compare)

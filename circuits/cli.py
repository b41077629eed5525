"""The ``circuits`` command: parse arguments, make one library call per subcommand, print.

Heavy imports (torch, nnsight) happen inside the subcommands so that ``circuits --help`` and
``circuits --version`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from circuits import __version__
from circuits.files import write_text
from circuits.tasks import SPLITS  # plain Python: --help stays free of torch


def _info(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries

    model = _load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)
    rows = []
    for sub in model.submodules:
        d = dictionaries.get(sub.name)
        features = d.width if d is not None else 0
        rows.append(
            {
                "submodule": sub.name,
                "width": sub.width,
                "dictionary": type(d).__name__ if d is not None else None,
                "nodes": features + (1 if d is not None else 0),
            }
        )
    summary = {
        "model": str(args.model),
        "architecture": model.architecture.name,
        "n_layers": model.n_layers,
        "d_model": model.d_model,
        "parallel_attn": model.parallel_attn,
        "dictionaries": str(args.dictionaries),
        "submodules": rows,
        "total_nodes": sum(r["nodes"] for r in rows),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"{summary['model']}: {summary['architecture']}, {model.n_layers} layers, "
        f"d_model {model.d_model}, {'parallel' if model.parallel_attn else 'sequential'} attention"
    )
    print(f"dictionaries: {summary['dictionaries']}")
    print(f"{'submodule':<12}{'width':>7}  {'dictionary':<14}{'nodes/position':>15}")
    for r in rows:
        print(f"{r['submodule']:<12}{r['width']:>7}  {str(r['dictionary']):<14}{r['nodes']:>15}")
    print(f"{'total':<35}{summary['total_nodes']:>15}  (features + one error node per submodule)")
    return 0


_METRICS = {"logit-diff": "logit_diff", "logprob": "answer_logprob", "kl": "kl_to_clean"}
_ABLATIONS = ["position-mean", "mean", "zero", "resample"]  # circuits.ablation's kinds
# Ends a help text whose option has no default worth showing: it prints nothing, and stops
# ArgumentDefaultsHelpFormatter from appending "(default: None)".
_NO_DEFAULT = "%(default).0s"
DISTRIBUTED = ("discover", "evaluate")  # commands that split their pairs across torchrun ranks


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
    model = _load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)
    if args.method == "ig" and len(dictionaries) > _IG_NOTE_SUBMODULES:
        print(
            f"note: ig runs {args.steps} interpolated rows, one forward and one backward, per "
            f"attributed submodule ({len(dictionaries)} here); --method atp costs 2 forwards and "
            "1 backward in all, ig-joint 1 interpolated forward and backward",
            file=sys.stderr,
        )
    circuit = discover(
        model,
        dictionaries,
        task,
        method=args.method,
        metric=_METRICS[args.metric] if args.metric else None,
        node_threshold=args.node_threshold,
        edge_threshold=args.edge_threshold,
        top_k=args.top_k,
        aggregation=args.aggregation,
        steps=args.steps,
        batch_size=args.batch_size,
        edges=not args.no_edges,
        progress=not args.no_progress,
        provenance={"model": str(args.model), "dictionaries": str(args.dictionaries)},
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


def _evaluator(args, model, dictionaries, pairs):
    """The `circuits.evaluate.Evaluator` the scoring options of ``args`` describe."""
    from circuits.evaluate import Evaluator

    return Evaluator(
        model,
        dictionaries,
        pairs,
        metric=_METRICS[args.metric] if args.metric else None,
        ablation=args.ablation,
        protocol=args.protocol,
        first_layers_intact=args.first_layers_intact,
        batch_size=args.batch_size,
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
    model = _load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)
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
    model = _load_model(args)
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
    model = _load_model(args)
    node_sets = {}
    if "features" in args.nodes:
        node_sets["features"] = load_dictionaries(model, args.dictionaries)
    if "neurons" in args.nodes:
        node_sets["neurons"] = load_dictionaries(model, "neurons")
    rows = Path(args.out) / "rows.jsonl"
    options = {
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
    print(f"plan: {plan(model, node_sets, find, **options).describe()}", file=sys.stderr)
    try:
        comparison = compare(model, node_sets, find, **options, progress=not args.no_progress)
    except KeyboardInterrupt:
        saved = plan(model, node_sets, find, **options)
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


def _ablate(args: argparse.Namespace) -> int:
    from circuits.ablation import ablation_values
    from circuits.dictionaries import load_dictionaries
    from circuits.edit import Ablate, next_token_change, read_nodes
    from circuits.graph import parse_node_name

    nodes = read_nodes(args.nodes)
    model = _load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)
    values = None
    if args.ablation == "mean":
        subs = sorted({parse_node_name(n).submodule for n in nodes})
        reference = model.tokenize([args.prompt])
        values = ablation_values(model, dictionaries, reference, "mean", submodules=subs)
    edit = Ablate(nodes, how=args.ablation, values=values)
    result = next_token_change(model, dictionaries, args.prompt, [edit], top=args.top)
    result = {"nodes": len(nodes), "ablation": args.ablation, **result}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.prompt!r}: {len(nodes)} nodes {args.ablation}-ablated")
    for title, rows in (("before", result["before"]), ("after", result["after"])):
        print(f"{f'top tokens {title}:':<19}{'token':<16}{'before':>9}{'after':>9}{'change':>9}")
        for r in rows:
            print(
                f"{'':<19}{r['token']!r:<16}{r['before']:>9.4f}{r['after']:>9.4f}"
                f"{r['change']:>+9.4f}"
            )
    print(f"total variation distance: {result['total_variation']:.4f}")
    return 0


def _render(args: argparse.Namespace) -> int:
    from circuits.graph import Circuit
    from viz.annotations import read_annotations
    from viz.diagram import format_from_suffix, parse_tokens, render
    from viz.export import write_graphml, write_neuronpedia

    circuit = Circuit.load(args.circuit)
    annotations = read_annotations(args.annotations) if args.annotations else None
    tokens = None if args.tokens is None else parse_tokens(args.tokens)
    labels = None
    if args.dashboards:
        from viz.dashboard import auto_labels, read_dashboards

        labels = auto_labels(read_dashboards(args.dashboards))
    out = Path(args.out)
    fmt = args.format
    if fmt is None:
        suffix = out.suffix.lower()
        fmt = {".graphml": "graphml", ".json": "neuronpedia"}.get(suffix) or format_from_suffix(out)
    if fmt == "graphml":
        path = write_graphml(circuit, out, annotations=annotations, labels=labels)
    elif fmt == "neuronpedia":
        path = write_neuronpedia(
            circuit, out, annotations=annotations, labels=labels, tokens=tokens
        )
    else:
        path = render(
            circuit,
            out,
            format=fmt,
            annotations=annotations,
            labels=labels,
            positions=args.positions,
            tokens=tokens,
            max_nodes=args.max_nodes,
            row_cap=args.row_cap or None,
            edge_share=args.edge_share,
            title=args.title,
        )
    print(f"wrote {path}")
    return 0


def _explore(args: argparse.Namespace) -> int:
    from circuits.graph import Circuit
    from viz.annotations import read_annotations
    from viz.diagram import parse_tokens
    from viz.explorer import read_supernodes, write_explorer

    circuit = Circuit.load(args.circuit)
    dashboards = None
    if args.dashboards:
        from viz.dashboard import read_dashboards

        dashboards = read_dashboards(args.dashboards)
    path = write_explorer(
        circuit,
        args.out,
        annotations=read_annotations(args.annotations) if args.annotations else None,
        dashboards=dashboards,
        tokens=None if args.tokens is None else parse_tokens(args.tokens),
        supernodes=read_supernodes(args.supernodes) if args.supernodes else None,
        max_nodes=args.max_nodes,
        title=args.title or Path(args.circuit).parent.name or None,
    )
    print(f"wrote {path}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries
    from viz.dashboard import dashboards, default_cache_dir, write_dashboard_html

    if args.corpus == "zoo":
        from circuits.zoo.language import corpus

        docs = corpus(args.docs, seed=args.seed)
    else:
        lines = Path(args.corpus).read_text(encoding="utf-8").splitlines()
        docs = [line for line in lines if line.strip()][: args.docs]
    nodes = list(args.nodes)
    if args.circuit:
        from circuits.graph import Circuit

        circuit = Circuit.load(args.circuit)
        nodes += [name for name, _ in circuit.top_nodes(None) if "ε" not in name]
    nodes = list(dict.fromkeys(name.split("@", 1)[0] for name in nodes))
    if not nodes:
        raise ValueError("name at least one NODE, or a circuit with --circuit")
    model = _load_model(args)
    boards = dashboards(
        model,
        load_dictionaries(model, args.dictionaries),
        nodes,
        docs,
        top_k=args.contexts,
        batch_size=args.batch_size,
        cache_dir=None if args.no_cache else Path(args.cache_dir or default_cache_dir()),
    )
    if args.json:
        print(json.dumps(boards, indent=1, ensure_ascii=False))
        return 0
    if args.out and Path(args.out).suffix.lower() == ".json":
        write_text(args.out, json.dumps(boards, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    elif args.out:
        print(f"wrote {write_dashboard_html(boards, args.out, title=' '.join(nodes[:5]))}")
    for name, board in boards.items():
        print(f"{name}: {board['label']} (density {board['density']:.4f})")
    return 0


def _shift(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries
    from circuits.edit import read_nodes
    from circuits.shift import shift
    from circuits.tasks import read_texts

    nodes = read_nodes(args.nodes) if args.nodes else None
    model = _load_model(args)
    dictionaries = load_dictionaries(model, args.dictionaries)
    report = shift(
        model,
        dictionaries,
        *(
            read_texts("bios", split)
            if args.texts == "bios"
            else read_texts(Path(args.texts) / f"{split}.jsonl")
            for split in ("ambiguous", "balanced")
        ),
        layer=args.layer,
        spurious=args.spurious,
        selection=args.selection,
        nodes=nodes,
        top=args.top,
        share=args.share,
        promoted_top=args.promoted_top,
        threshold=args.threshold,
        seed=args.seed,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
        return 0
    print(f"ablated {len(report.selected)} features: {' '.join(report.selected)}")
    print(report.table())
    return 0


def _train_dictionaries(args: argparse.Namespace) -> int:
    from circuits.dictionaries.training import train_dictionaries
    from circuits.tasks import load_task

    model = _load_model(args)
    names = args.submodules or [sub.name for sub in model.submodules]
    results = train_dictionaries(
        model,
        args.corpus,
        args.out,
        submodules=args.submodules,
        activation=args.activation,
        width=_per_submodule(args.width, names, "--width"),
        k=_per_submodule(args.k, names, "--k"),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        buffer_tokens=args.buffer_tokens,
        context_length=args.context_length,
        skip_positions=args.skip_positions,
        eval_docs=args.eval_docs,
        task=load_task(args.task, "test") if args.task else None,
        seed=args.seed,
        progress=not args.no_progress,
    )
    metrics = {name: {**r.metrics, "path": str(r.path)} for name, r in results.items()}
    if args.json:
        print(json.dumps(metrics, indent=1))
        return 0
    print(f"{'submodule':<11}{'width':>7}{'L0':>8}{'var. expl.':>12}{'dead':>8}{'ΔCE (nats)':>12}")
    for name, m in metrics.items():
        print(
            f"{name:<11}{m['width']:>7}{m['l0']:>8.1f}{m['variance_explained']:>12.4f}"
            f"{m['dead_fraction']:>8.3f}{m['delta_ce']:>12.4f}"
        )
    print(f"saved: {args.out} (load with --dictionaries {args.out})")
    return 0


def _per_submodule(values: list[str], names: list[str], option: str) -> int | dict[str, int]:
    """``["1024"]`` -> 1024; ``["1024", "attn_3=2048"]`` -> ``{name: 1024, "attn_3": 2048}``."""
    plain = [v for v in values if "=" not in v]
    if len(plain) > 1:
        raise ValueError(f"{option} takes one plain number and NAME=N overrides, got {values}")
    try:
        default = int(plain[0]) if plain else None
        overrides = {k: int(v) for k, v in (item.split("=", 1) for item in values if "=" in item)}
    except ValueError:
        raise ValueError(f"{option}: expected N or NAME=N, got {values}") from None
    if not overrides:
        return default
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"{option}: no submodule {', '.join(unknown)} among {', '.join(names)}")
    if default is None and set(overrides) != set(names):
        raise ValueError(f"{option}: give a plain number for the submodules not named")
    return {name: overrides.get(name, default) for name in names}


def _zoo_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from circuits.zoo.build import DATA_DIR, QUICK, ZooConfig, build

    if args.out is None and not args.in_package:
        raise ValueError(
            "circuits zoo build writes into --out DIR; to rebuild the zoo installed with the "
            f"package ({DATA_DIR}) pass --in-package"
        )
    if args.out is not None and args.in_package:
        raise ValueError("give --out DIR or --in-package, not both")
    if args.quick and args.in_package:
        raise ValueError("a --quick zoo never replaces the installed one; give --out DIR")
    config = replace(QUICK if args.quick else ZooConfig(), seed=args.seed)
    card = build(config, DATA_DIR if args.in_package else Path(args.out), force=args.force)
    print(json.dumps(card, indent=2) if args.json else _card_text(card))
    return 0


def _zoo_info(args: argparse.Namespace) -> int:
    from circuits.zoo import DATA_DIR

    path = Path(args.dir or DATA_DIR) / "card.json"
    if not path.exists():
        print(
            f"no zoo card at {path}; build the zoo with `circuits zoo build --in-package`",
            file=sys.stderr,
        )
        return 1
    card = json.loads(path.read_text())
    print(json.dumps(card, indent=2) if args.json else _card_text(card))
    return 0


def _card_text(card: dict) -> str:
    from circuits.zoo.card_text import card_markdown

    return card_markdown(card)


def _load_model(args: argparse.Namespace):
    """The model `_model_options` names."""
    from circuits.models import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=_json_option(args.device_map, "--device-map", allow={"auto"}),
        max_memory=_devices(_json_option(args.max_memory, "--max-memory")),
        offload_folder=args.offload_folder,
        trust_remote_code=args.trust_remote_code,
    )


def _devices(memory: dict | None) -> dict | None:
    """--max-memory's GPU keys as accelerate wants them: ``"0"`` -> ``0``."""
    return None if memory is None else {int(k) if k.isdigit() else k: v for k, v in memory.items()}


def _json_option(text: str | None, option: str, allow: set[str] = frozenset()):
    """A JSON object given inline or as a file, or one of the words in ``allow``."""
    if text is None or text in allow:
        return text
    source = Path(text).read_text(encoding="utf-8") if Path(text).is_file() else text
    try:
        value = json.loads(source)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        words = "".join(f"'{w}', " for w in sorted(allow))
        raise ValueError(
            f"{option}: give {words}a JSON object or a file holding one, e.g. "
            '\'{"model.layers.20": "disk", ...}\''
        )
    return value


def _diagram_row_cap() -> int:
    """`viz.diagram.ROW_CAP` (imports graphviz and networkx, not torch)."""
    from viz.diagram import ROW_CAP

    return ROW_CAP


def _model_options(parser: argparse.ArgumentParser, *, dictionaries: bool = True) -> None:
    """--model, --dictionaries (unless ``dictionaries=False``), --device, --device-map,
    --max-memory, --offload-folder, --dtype, --trust-remote-code, --threads and --no-progress,
    the same for every command that loads a model."""
    parser.add_argument("--model", default="zoo", help="'zoo', a hub name or a local directory")
    if dictionaries:
        parser.add_argument(
            "--dictionaries",
            default="zoo",
            help="'zoo', 'neurons' (identity: neuron nodes), a directory in SFC's layout, "
            "'sae-lens:RELEASE/SAE_ID' or 'sparsify:REPO_ID' (Hugging Face Hub, cache first)",
        )
    parser.add_argument(
        "--device", help="where the model runs: cpu (the default), cuda, ..." + _NO_DEFAULT
    )
    parser.add_argument(
        "--device-map",
        metavar="MAP",
        help="accelerate's placement of the layers: 'auto', or a JSON object {module path: "
        "device, 'cpu' or 'disk'} inline or in a file (instead of --device)" + _NO_DEFAULT,
    )
    parser.add_argument(
        "--max-memory",
        metavar="JSON",
        help='with --device-map auto: {"0": "20GiB", "cpu": "60GiB"}' + _NO_DEFAULT,
    )
    parser.add_argument(
        "--offload-folder", metavar="DIR", help="where 'disk' layers are kept" + _NO_DEFAULT
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="cast the model's weights (default: the checkpoint's dtype)" + _NO_DEFAULT,
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose config names code of its own (auto_map) run it",
    )
    _process_options(parser)


def _process_options(parser: argparse.ArgumentParser) -> None:
    """--threads and --no-progress, for every command that computes."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        metavar="N",
        help="torch intra-op CPU threads (default: torch's, one per core; on a busy machine "
        "fewer is often faster)" + _NO_DEFAULT,
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars on stderr (tqdm's included)"
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _task_options(parser: argparse.ArgumentParser) -> None:
    """--task, --split and --n, the same for every command that reads prompt pairs."""
    parser.add_argument(
        "--task",
        required=True,
        help="a zoo task name (e.g. sva-rc) or a JSONL file of prompt pairs" + _NO_DEFAULT,
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=list(SPLITS),
        help="split of a zoo task (ignored for a file)",
    )
    parser.add_argument("--n", type=int, default=64, help="use the first N prompt pairs")


def _evaluation_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--ablation, --protocol and --first-layers-intact: how circuits are scored."""
    parser.add_argument(
        "--ablation",
        default="position-mean",
        choices=_ABLATIONS,
        help=f"what {what} are set to: position-mean over the patch prompts (SFC's mean "
        "ablation) or resample keep activations on-distribution; mean (pooled over positions) "
        "and zero do not, and can make every circuit look unfaithful",
    )
    parser.add_argument(
        "--protocol",
        default="sfc",
        choices=["sfc", "strict"],
        help="sfc: embed and the first n_layers // 3 layers stay intact, as SFC reports; "
        "strict: everything with a dictionary is ablated",
    )
    parser.add_argument(
        "--first-layers-intact",
        type=int,
        metavar="K",
        help="leave embed and layers 0..K-1 intact instead of the protocol's count" + _NO_DEFAULT,
    )


def _output_options(parser: argparse.ArgumentParser, files: str) -> None:
    """--out DIR and --json, for the commands that write a directory."""
    parser.add_argument("--out", required=True, metavar="DIR", help=f"write {files}" + _NO_DEFAULT)
    parser.set_defaults(out_kind="dir")
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (and nothing else)"
    )


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="circuits",
        description="Circuit discovery and causal analysis in language models.",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"circuits {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser(
        "info",
        help="list a model's submodules and the nodes its dictionaries give them",
        formatter_class=fmt,
    )
    _model_options(info)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(run=_info)

    disc = commands.add_parser(
        "discover",
        help="find a circuit: node effects, kept nodes, edges, pruned to the metric node y",
        description="Find a circuit for a task and save it as DIR/circuit.json. Progress bars "
        "go to stderr; stdout gets the summary (or, with --json, only the summary as JSON).",
        formatter_class=fmt,
    )
    _model_options(disc)
    _task_options(disc)
    disc.add_argument(
        "--method",
        default="ig",
        choices=["ig", "atp", "ig-joint", "exact"],
        help="node effects: integrated gradients per submodule, attribution patching, "
        "IG over all submodules at once, or exact patching (slow, one run per node)",
    )
    disc.add_argument(
        "--metric",
        choices=list(_METRICS),
        help="logit[patch answer] - logit[clean answer], log p(clean answer) or KL to the "
        "clean run (default: logit-diff when the task has patch prompts, else logprob)"
        + _NO_DEFAULT,
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
        "with it; both given: the top K of those above it)" + _NO_DEFAULT,
    )
    disc.add_argument(
        "--edge-threshold", type=float, default=0.01, help="keep edges with |weight| above this"
    )
    disc.add_argument(
        "--top-k",
        type=int,
        metavar="K",
        help="keep the K nodes of largest |effect| (default: no limit)" + _NO_DEFAULT,
    )
    disc.add_argument("--batch-size", type=int, default=16, help="prompt pairs per batch")
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
        help="score the circuit on this zoo task or JSONL file (default: --task)" + _NO_DEFAULT,
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
        help="score on the first N pairs (default: --n)" + _NO_DEFAULT,
    )
    disc.add_argument(
        "--no-eval", action="store_true", help="do not score the circuit after finding it"
    )
    _evaluation_options(disc, "nodes outside the circuit, when it is scored,")
    _output_options(disc, "DIR/circuit.json")
    disc.set_defaults(run=_discover)

    ev = commands.add_parser(
        "evaluate",
        help="faithfulness and completeness of a saved circuit (SFC ablation)",
        description="Ablate every evaluated node outside the circuit and compare the mean metric "
        "with the full model and with everything ablated.",
        formatter_class=fmt,
    )
    _model_options(ev)
    ev.add_argument("circuit", help="a circuit file saved by `circuits discover`")
    _task_options(ev)
    ev.add_argument("--metric", choices=list(_METRICS), help="as for discover" + _NO_DEFAULT)
    _evaluation_options(ev, "ablated nodes")
    ev.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        metavar="K",
        help="also score the top-K nodes of the circuit by |effect|" + _NO_DEFAULT,
    )
    ev.add_argument(
        "--plot",
        metavar="FILE",
        help="draw the --sizes curve to FILE (.png/.svg/.pdf)" + _NO_DEFAULT,
    )
    ev.add_argument("--batch-size", type=int, default=16, help="prompt pairs per forward")
    ev.add_argument("--seed", type=int, default=0, help="seed of resample ablation")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(run=_evaluate)

    msk = commands.add_parser(
        "mask",
        help="learn a binary mask over nodes that keeps the task's behaviour; save its circuit",
        description="Train a hard-concrete or sigmoid mask (masks.train_mask) on a task, give "
        "its kept nodes effects and edges (masks.mask_circuit) and save DIR/circuit.json. The "
        "training state is saved to DIR/mask.ckpt and a rerun with the same settings resumes "
        "from it.",
        formatter_class=fmt,
    )
    _model_options(msk)
    _task_options(msk)
    msk.add_argument(
        "--size",
        type=int,
        metavar="K",
        help="target number of kept nodes (default: penalty mode, --penalty sets the size)"
        + _NO_DEFAULT,
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
        + _NO_DEFAULT,
    )
    msk.add_argument(
        "--objective",
        default="logit-diff",
        choices=["logit-diff", "kl"],
        help="match the full model's logit difference, or its output distribution (KL)",
    )
    _evaluation_options(msk, "masked-out nodes")
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
    _output_options(msk, "DIR/circuit.json")
    msk.set_defaults(run=_mask)

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
    _model_options(cmp_)
    _task_options(cmp_)
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
    _evaluation_options(cmp_, "nodes outside a circuit (masks and evaluation)")
    cmp_.add_argument("--ig-steps", type=int, default=10, help="interpolation steps of ig")
    cmp_.add_argument("--mask-steps", type=int, default=500, help="optimiser steps per mask")
    cmp_.add_argument("--batch-size", type=int, default=16, help="prompt pairs per batch")
    cmp_.add_argument("--seed", type=int, default=0, help="seed of the masks' gates")
    _output_options(cmp_, "DIR/rows.jsonl and DIR/comparison.{md,json,png}")
    cmp_.set_defaults(run=_compare)

    abl = commands.add_parser(
        "ablate",
        help="next-token probabilities of a prompt with nodes ablated",
        description="Ablate the named nodes (at every position, or at the position a name's "
        "'@pos' gives) and print the top next-token probabilities before and after.",
        formatter_class=fmt,
    )
    _model_options(abl)
    abl.add_argument(
        "--nodes",
        required=True,
        metavar="FILE",
        help="node names, one per line ('#' comments), or a circuit JSON (all its nodes)"
        + _NO_DEFAULT,
    )
    abl.add_argument("--prompt", required=True, help="the prompt" + _NO_DEFAULT)
    abl.add_argument(
        "--ablation",
        default="zero",
        choices=["zero", "mean"],
        help="set nodes to 0, or to their mean over the prompt's tokens",
    )
    abl.add_argument("--top", type=int, default=10, help="tokens listed before and after")
    abl.add_argument("--json", action="store_true", help="print the result as JSON")
    abl.set_defaults(run=_ablate)

    rend = commands.add_parser(
        "render",
        help="draw a circuit (SVG, PNG, PDF, DOT) or export it (GraphML, Neuronpedia JSON)",
        description="Draw DIR/circuit.json with graphviz, or export it. The output's suffix "
        "picks the format: .svg .png .pdf .dot/.gv (diagram), .graphml, .json (Neuronpedia "
        "attribution-graph JSON); --format overrides it.",
        formatter_class=fmt,
    )
    rend.add_argument("circuit", help="a circuit file saved by `circuits discover`")
    rend.add_argument("-o", "--out", required=True, help="output file" + _NO_DEFAULT)
    rend.set_defaults(out_kind="file")
    rend.add_argument(
        "--format",
        choices=["svg", "png", "pdf", "dot", "graphml", "neuronpedia"],
        help="output format (default: from the output's suffix)" + _NO_DEFAULT,
    )
    rend.add_argument(
        "--positions",
        action=argparse.BooleanOptionalAction,
        help="one column per token position (default: when the circuit keeps positions)"
        + _NO_DEFAULT,
    )
    rend.add_argument(
        "--tokens",
        help="the example prompt's tokens, drawn under the position columns: words separated "
        'by spaces, or a JSON list such as \'["<bos>", " The", " cat"]\'' + _NO_DEFAULT,
    )
    rend.add_argument(
        "--annotations",
        metavar="FILE",
        help='SFC annotation JSON lines ({"Name": ..., "Annotation": ...}) used as labels'
        + _NO_DEFAULT,
    )
    rend.add_argument(
        "--max-nodes",
        type=int,
        metavar="N",
        help="draw only the N nodes of largest |effect| (a note says how many were left out)"
        + _NO_DEFAULT,
    )
    rend.add_argument(
        "--dashboards",
        metavar="FILE",
        help="dashboards JSON (`circuits dashboard -o x.json`): their automatic labels name "
        "nodes without an annotation" + _NO_DEFAULT,
    )
    rend.add_argument(
        "--row-cap",
        type=int,
        default=_diagram_row_cap(),
        metavar="N",
        help="draw the N nodes of largest |effect| per row and fold the rest into one "
        "'+M more' node (summed effect and edges); 0 draws every node",
    )
    rend.add_argument(
        "--edge-share",
        type=float,
        metavar="F",
        help="keep each node's strongest incoming edges carrying this share (0-1] of its "
        "incoming |weight| (default: every edge)" + _NO_DEFAULT,
    )
    rend.add_argument("--title", help="a line drawn above the diagram" + _NO_DEFAULT)
    rend.set_defaults(run=_render)

    expl = commands.add_parser(
        "explore",
        help="write a self-contained HTML page to explore a circuit in a browser",
        description="Write one HTML file (data inline, no network) with the circuit laid out "
        "by submodule and position: pan and zoom, a panel per node, node and edge filters that "
        "lay it out again, search, pinned paths and supernodes.",
        formatter_class=fmt,
    )
    expl.add_argument("circuit", help="a circuit file saved by `circuits discover`")
    expl.add_argument("-o", "--out", required=True, help="output .html file" + _NO_DEFAULT)
    expl.set_defaults(out_kind="file")
    expl.add_argument(
        "--annotations", metavar="FILE", help="SFC annotation JSON lines" + _NO_DEFAULT
    )
    expl.add_argument(
        "--dashboards",
        metavar="FILE",
        help="JSON object {node name: dashboard} shown in the node panel" + _NO_DEFAULT,
    )
    expl.add_argument(
        "--tokens",
        help="the example prompt's tokens: words separated by spaces or a JSON list" + _NO_DEFAULT,
    )
    expl.add_argument(
        "--max-nodes",
        type=int,
        metavar="N",
        help="show only the N nodes of largest |effect|" + _NO_DEFAULT,
    )
    expl.add_argument(
        "--supernodes",
        metavar="FILE",
        help='group nodes as in this file, saved by the page\'s "save supernodes"' + _NO_DEFAULT,
    )
    expl.add_argument(
        "--title", help="page title (default: the circuit's directory name)" + _NO_DEFAULT
    )
    expl.set_defaults(run=_explore)

    dash = commands.add_parser(
        "dashboard",
        help="top-activating contexts, activation histogram and output tokens of nodes",
        description="Compute dashboards of feature or neuron nodes over a corpus (one pass "
        "for all nodes; cached on disk unless --no-cache). Write HTML (-o x.html), JSON "
        "(-o x.json, what `circuits explore --dashboards` reads) or print JSON (--json).",
        formatter_class=fmt,
    )
    _model_options(dash)
    dash.add_argument("nodes", nargs="*", metavar="NODE", help="e.g. resid_2/17" + _NO_DEFAULT)
    dash.add_argument(
        "--circuit",
        metavar="FILE",
        help="also every feature and neuron node of this circuit (positions merged)" + _NO_DEFAULT,
    )
    dash.add_argument(
        "--corpus", default="zoo", help="'zoo' (the zoo's language) or a file, one doc a line"
    )
    dash.add_argument("--docs", type=int, default=256, help="number of corpus documents")
    dash.add_argument("--seed", type=int, default=1, help="seed of the zoo corpus")
    dash.add_argument(
        "--contexts", type=_positive_int, default=10, metavar="N", help="top contexts per node"
    )
    dash.add_argument("--batch-size", type=int, default=16, help="documents per forward")
    dash.add_argument(
        "--cache-dir",
        help="where dashboards are cached (default: $CIRCUITS_CACHE/dashboards or "
        "~/.cache/circuits/dashboards)" + _NO_DEFAULT,
    )
    dash.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    dash.add_argument("-o", "--out", help="write .html or .json" + _NO_DEFAULT)
    dash.set_defaults(out_kind="file", out_suffixes=(".html", ".json"))
    dash.add_argument("--json", action="store_true", help="print the dashboards as JSON")
    dash.set_defaults(run=_dashboard)

    sh = commands.add_parser(
        "shift",
        help="SHIFT: ablate spurious features of a probe and measure it on balanced texts",
        description="Train a profession probe on the ambiguous bios, attribute it to features, "
        "zero-ablate the gender features and print the table of circuits.shift. By default a "
        "judge picks them from the circuit features' dashboards and the concept named by "
        "--spurious, without reading disambiguating labels; --selection labels uses the rule "
        "that reads the balanced texts' labels; --nodes gives them.",
        formatter_class=fmt,
    )
    _model_options(sh)
    sh.add_argument(
        "--layer", type=int, help="probe on resid_LAYER; default: the middle layer" + _NO_DEFAULT
    )
    sh.add_argument(
        "--spurious",
        default="gender: he she his her him himself herself man woman",
        help="the spurious concept in words, 'NAME: token token ...'",
    )
    sh.add_argument(
        "--selection",
        choices=["concept-tokens", "labels"],
        default="concept-tokens",
        help="concept-tokens: a feature whose top contexts peak on the concept's tokens (or "
        "that promotes them) is spurious; labels: a feature that separates gender better than "
        "profession on balanced texts with their labels (held-out disambiguating data)",
    )
    sh.add_argument(
        "--nodes", metavar="FILE", help="feature names to ablate, one per line" + _NO_DEFAULT
    )
    sh.add_argument(
        "--top",
        type=int,
        default=1000,
        help="candidates: the feature nodes of largest |effect| on the probe",
    )
    sh.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="concept-tokens: least share of a feature's top contexts peaking on a concept token",
    )
    sh.add_argument(
        "--promoted-top",
        type=int,
        default=0,
        metavar="N",
        help="concept-tokens: also select a feature that promotes a concept token among its N "
        "most promoted tokens (0: peaks only)",
    )
    sh.add_argument(
        "--threshold", type=float, default=0.2, help="labels: least |2 AUC - 1| for gender"
    )
    sh.add_argument(
        "--texts",
        default="bios",
        help="'bios', or a directory holding ambiguous.jsonl and balanced.jsonl",
    )
    sh.add_argument(
        "--seed", type=int, default=0, help="seed of the probes, the splits and the Random row"
    )
    sh.add_argument("--json", action="store_true", help="print the report as JSON")
    sh.set_defaults(run=_shift)

    train = commands.add_parser(
        "train-dictionaries",
        help="train sparse autoencoders (TopK by default) on a model's activations",
        description="Train one SAE per submodule from the same forwards over a corpus "
        "(circuits.train_dictionaries: k-sparse autoencoders with AuxK, or BatchTopK, ReLU + L1, "
        "JumpReLU) and save them in dictionary_learning's layout with a metrics.json each. "
        "Checkpointed; rerunning the same command resumes.",
        formatter_class=fmt,
    )
    _model_options(train, dictionaries=False)
    train.add_argument(
        "--corpus",
        default="zoo",
        help="'zoo' (the zoo's language) or a text file (one document a line) or .jsonl file "
        "(a 'text' field a line)",
    )
    train.add_argument(
        "--submodules",
        nargs="+",
        metavar="NAME",
        help="submodules to train (default: all: embed, attn_i, mlp_i, resid_i)" + _NO_DEFAULT,
    )
    train.add_argument(
        "--activation",
        default="topk",
        choices=["topk", "batchtopk", "relu", "jumprelu"],
        help="the SAE's activation",
    )
    train.add_argument(
        "--width", nargs="+", default=["4096"], metavar="N", help="latents (N, NAME=N overrides)"
    )
    train.add_argument(
        "--k", nargs="+", default=["32"], metavar="N", help="active latents a token (TopK)"
    )
    train.add_argument("--steps", type=int, default=5000, help="optimiser steps")
    train.add_argument("--batch-size", type=int, default=4096, help="tokens per step")
    train.add_argument(
        "--lr",
        type=float,
        help="Adam's learning rate (default: 2e-4 / sqrt(width / 2^14))" + _NO_DEFAULT,
    )
    train.add_argument(
        "--buffer-tokens", type=int, default=2**16, help="activations held per submodule"
    )
    train.add_argument("--context-length", type=int, default=128, help="tokens kept per document")
    train.add_argument(
        "--skip-positions",
        type=int,
        default=0,
        help="leave each document's first N tokens out of training and metrics (attention sinks)",
    )
    train.add_argument("--eval-docs", type=int, default=64, help="documents held out for metrics")
    train.add_argument(
        "--task",
        help="also measure this task's accuracy with each SAE spliced in (test split)"
        + _NO_DEFAULT,
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the initialisation and order")
    train.add_argument("--out", required=True, metavar="DIR", help="output folder" + _NO_DEFAULT)
    train.set_defaults(out_kind="dir")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    train.set_defaults(run=_train_dictionaries)

    zoo = commands.add_parser("zoo", help="the shipped small model world").add_subparsers(
        dest="zoo_command", metavar="ZOO_COMMAND", required=True
    )
    zoo_build = zoo.add_parser(
        "build", help="rebuild the zoo (model, SAEs, tasks, card) from a seed", formatter_class=fmt
    )
    zoo_build.add_argument("--quick", action="store_true", help="tiny sizes, seconds not minutes")
    zoo_build.add_argument("--out", metavar="DIR", help="output directory" + _NO_DEFAULT)
    zoo_build.set_defaults(out_kind="dir")
    zoo_build.add_argument(
        "--in-package",
        action="store_true",
        help="rebuild the zoo installed with the package (circuits/zoo/data) instead",
    )
    zoo_build.add_argument(
        "--seed", type=int, default=0, help="seed of the language, the model and the SAEs"
    )
    zoo_build.add_argument("--force", action="store_true", help="rebuild finished stages too")
    zoo_build.add_argument("--json", action="store_true", help="print the card as JSON")
    _process_options(zoo_build)
    zoo_build.set_defaults(run=_zoo_build)
    zoo_info = zoo.add_parser(
        "info", help="print the zoo's measured model card", formatter_class=fmt
    )
    zoo_info.add_argument("--dir", help="zoo directory (default: the package's zoo)")
    zoo_info.add_argument("--json", action="store_true", help="print the card as JSON")
    zoo_info.set_defaults(run=_zoo_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from circuits import distributed

    if distributed.init():
        if args.command not in DISTRIBUTED:
            print(
                f"circuits: error: `circuits {args.command}` does not run distributed; only "
                f"{' and '.join(DISTRIBUTED)} do. Start it without torchrun",
                file=sys.stderr,
            )
            return 2
        if distributed.rank() != 0:  # rank 0 prints and writes
            args.no_progress = True
    restore = _apply_process_options(args)
    quiet = open(os.devnull, "w") if distributed.rank() != 0 else None  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            _check_outputs(args)
            return args.run(args)
    except (ValueError, OSError) as exc:  # the library's errors say what to do
        print(f"circuits: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # long runs say where they saved (circuits.runs)
        print(f"circuits: stopped{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    finally:
        restore()
        if quiet:
            quiet.close()


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output that cannot be written: a directory that is a file
    (or the reverse), a folder without write permission, a suffix the command cannot write."""
    kind, out = getattr(args, "out_kind", None), getattr(args, "out", None)
    if kind == "dir" and out:
        _check_writable(Path(out), directory=True, option="--out")
    elif kind == "file" and out:
        _check_writable(Path(out), directory=False, option="--out")
        suffixes = getattr(args, "out_suffixes", None)
        if suffixes and Path(out).suffix.lower() not in suffixes:
            raise ValueError(f"--out {out}: give a file ending in {' or '.join(suffixes)}")
    plot = getattr(args, "plot", None)
    if plot:
        _check_writable(Path(plot), directory=False, option="--plot")
        if Path(plot).suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ValueError(f"--plot {plot}: give a file ending in .png, .svg or .pdf")


def _check_writable(path: Path, *, directory: bool, option: str) -> None:
    if path.exists() and path.is_dir() != directory:
        what = "a file" if directory else "a directory"
        raise ValueError(
            f"{option} {path} is {what}; give {'a directory' if directory else 'a file'}"
        )
    folder = path if directory else path.parent
    while not folder.exists():  # the nearest folder that exists must let us create the rest
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: cannot write into {folder}")


def _apply_process_options(args: argparse.Namespace):
    """Apply --threads and --no-progress to this process; returns a function that undoes them
    (so that calling `main` from Python leaves no trace)."""
    undo = []
    if getattr(args, "no_progress", False):
        from transformers.utils import logging

        # TQDM_DISABLE reaches every tqdm bar created after tqdm is imported (the zoo build's);
        # transformers' weight-loading bar has its own switch.
        previous = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        logging.disable_progress_bar()
        undo.append(logging.enable_progress_bar)
        if previous is None:
            undo.append(lambda: os.environ.pop("TQDM_DISABLE", None))
        else:
            undo.append(lambda: os.environ.__setitem__("TQDM_DISABLE", previous))
    if getattr(args, "threads", None):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        undo.append(lambda: torch.set_num_threads(threads))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


if __name__ == "__main__":
    sys.exit(main())

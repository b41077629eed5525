"""Commands that show circuits and their units: ``render``, ``explore``, ``dashboard`` and
``explain``.

Each ``add_<command>`` adds one subcommand's options; each ``_<command>`` runs it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from circuits.cli import options
from circuits.cli.options import (
    NO_DEFAULT,
    model_options,
    positive_int,
    remote_option,
)
from circuits.files import write_text


def _diagram_row_cap() -> int:
    """`viz.diagram.ROW_CAP` (imports graphviz and networkx, not torch)."""
    from viz.diagram import ROW_CAP

    return ROW_CAP


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


def _corpus(args: argparse.Namespace, model) -> list[str]:
    """``--docs`` documents of ``--corpus``: the zoo's language (as long as the model reads,
    its BOS token included), or a file's non-empty lines."""
    if args.corpus == "zoo":
        from circuits.zoo.language import corpus

        return corpus(args.docs, seed=args.seed, doc_len=min(128, (model.max_positions or 129) - 1))
    lines = Path(args.corpus).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()][: args.docs]


def _units(args: argparse.Namespace) -> list[str]:
    """The NODEs and the feature and neuron nodes of ``--circuit`` (its ``--top`` by |effect|),
    without positions or repeats."""
    nodes = list(args.nodes)
    if args.circuit:
        from circuits.graph import Circuit

        circuit = Circuit.load(args.circuit)
        units = [name for name, _ in circuit.top_nodes(None) if "ε" not in name]
        nodes += units[: getattr(args, "top", None)]
    nodes = list(dict.fromkeys(name.split("@", 1)[0] for name in nodes))
    if not nodes:
        raise ValueError("name at least one NODE, or a circuit with --circuit")
    return nodes


def _dashboard(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries
    from viz.dashboard import dashboards, default_cache_dir, write_dashboard_html

    nodes = _units(args)
    model = options.load_model(args)
    docs = _corpus(args, model)
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


def add_render(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``render`` subcommand's options."""
    rend = commands.add_parser(
        "render",
        help="draw a circuit (SVG, PNG, PDF, DOT) or export it (GraphML, Neuronpedia JSON)",
        description="Draw DIR/circuit.json with graphviz, or export it. The output's suffix "
        "picks the format: .svg .png .pdf .dot/.gv (diagram), .graphml, .json (Neuronpedia "
        "attribution-graph JSON); --format overrides it.",
        formatter_class=fmt,
    )
    rend.add_argument("circuit", help="a circuit file saved by `circuits discover`")
    rend.add_argument("-o", "--out", required=True, help="output file" + NO_DEFAULT)
    rend.set_defaults(out_kind="file")
    rend.add_argument(
        "--format",
        choices=["svg", "png", "pdf", "dot", "graphml", "neuronpedia"],
        help="output format (default: from the output's suffix)" + NO_DEFAULT,
    )
    rend.add_argument(
        "--positions",
        action=argparse.BooleanOptionalAction,
        help="one column per token position (default: when the circuit keeps positions)"
        + NO_DEFAULT,
    )
    rend.add_argument(
        "--tokens",
        help="the example prompt's tokens, drawn under the position columns: words separated "
        'by spaces, or a JSON list such as \'["<bos>", " The", " cat"]\'' + NO_DEFAULT,
    )
    rend.add_argument(
        "--annotations",
        metavar="FILE",
        help='SFC annotation JSON lines ({"Name": ..., "Annotation": ...}) used as labels'
        + NO_DEFAULT,
    )
    rend.add_argument(
        "--max-nodes",
        type=int,
        metavar="N",
        help="draw only the N nodes of largest |effect| (a note says how many were left out)"
        + NO_DEFAULT,
    )
    rend.add_argument(
        "--dashboards",
        metavar="FILE",
        help="dashboards JSON (`circuits dashboard -o x.json`): their automatic labels name "
        "nodes without an annotation" + NO_DEFAULT,
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
        "incoming |weight| (default: every edge)" + NO_DEFAULT,
    )
    rend.add_argument("--title", help="a line drawn above the diagram" + NO_DEFAULT)
    rend.set_defaults(run=_render)


def add_explore(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``explore`` subcommand's options."""
    expl = commands.add_parser(
        "explore",
        help="write a self-contained HTML page to explore a circuit in a browser",
        description="Write one HTML file (data inline, no network) with the circuit laid out "
        "by submodule and position: pan and zoom, a panel per node, node and edge filters that "
        "lay it out again, search, pinned paths and supernodes.",
        formatter_class=fmt,
    )
    expl.add_argument("circuit", help="a circuit file saved by `circuits discover`")
    expl.add_argument("-o", "--out", required=True, help="output .html file" + NO_DEFAULT)
    expl.set_defaults(out_kind="file")
    expl.add_argument(
        "--annotations", metavar="FILE", help="SFC annotation JSON lines" + NO_DEFAULT
    )
    expl.add_argument(
        "--dashboards",
        metavar="FILE",
        help="JSON object {node name: dashboard} shown in the node panel" + NO_DEFAULT,
    )
    expl.add_argument(
        "--tokens",
        help="the example prompt's tokens: words separated by spaces or a JSON list" + NO_DEFAULT,
    )
    expl.add_argument(
        "--max-nodes",
        type=int,
        metavar="N",
        help="show only the N nodes of largest |effect|" + NO_DEFAULT,
    )
    expl.add_argument(
        "--supernodes",
        metavar="FILE",
        help='group nodes as in this file, saved by the page\'s "save supernodes"' + NO_DEFAULT,
    )
    expl.add_argument(
        "--title", help="page title (default: the circuit's directory name)" + NO_DEFAULT
    )
    expl.set_defaults(run=_explore)


def _unit_options(parser: argparse.ArgumentParser, *, top: int | None = None) -> None:
    """NODE..., --circuit and, with a default ``top``, --top: what `_units` reads."""
    parser.add_argument("nodes", nargs="*", metavar="NODE", help="e.g. resid_2/17" + NO_DEFAULT)
    parser.add_argument(
        "--circuit",
        metavar="FILE",
        help="also every feature and neuron node of this circuit (positions merged)" + NO_DEFAULT,
    )
    if top is not None:
        parser.add_argument(
            "--top", type=positive_int, default=top, metavar="N", help="of --circuit, the N largest"
        )


def _corpus_options(parser: argparse.ArgumentParser, cached: str) -> None:
    """--corpus, --docs, --seed, --batch-size, --cache-dir and --no-cache."""
    parser.add_argument(
        "--corpus", default="zoo", help="'zoo' (the zoo's language) or a file, one doc a line"
    )
    parser.add_argument("--docs", type=int, default=256, help="number of corpus documents")
    parser.add_argument("--seed", type=int, default=1, help="seed of the zoo corpus")
    parser.add_argument("--batch-size", type=int, default=16, help="documents per forward")
    parser.add_argument(
        "--cache-dir",
        help=f"where {cached} are cached (default: $CIRCUITS_CACHE/{cached} or "
        f"~/.cache/circuits/{cached})" + NO_DEFAULT,
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")


def add_dashboard(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``dashboard`` subcommand's options."""
    dash = commands.add_parser(
        "dashboard",
        help="top-activating contexts, activation histogram and output tokens of nodes",
        description="Compute dashboards of feature or neuron nodes over a corpus (one pass "
        "for all nodes; cached on disk unless --no-cache). Write HTML (-o x.html), JSON "
        "(-o x.json, what `circuits explore --dashboards` reads) or print JSON (--json).",
        formatter_class=fmt,
    )
    model_options(dash)
    remote_option(dash)
    _unit_options(dash)
    _corpus_options(dash, "dashboards")
    dash.add_argument(
        "--contexts", type=positive_int, default=10, metavar="N", help="top contexts per node"
    )
    dash.add_argument("-o", "--out", help="write .html or .json" + NO_DEFAULT)
    dash.set_defaults(out_kind="file", out_suffixes=(".html", ".json"))
    dash.add_argument("--json", action="store_true", help="print the dashboards as JSON")
    dash.set_defaults(run=_dashboard)


def _explain(args: argparse.Namespace) -> int:
    from circuits.chat import open_chat
    from circuits.dictionaries import load_dictionaries
    from circuits.explain import Settings, default_cache_dir, explain, write_explanations
    from viz.annotations import read_annotations

    nodes = _units(args)
    given = read_annotations(args.explanations) if args.explanations else None
    if given is not None:
        missing = [n for n in nodes if n not in given]
        if missing:
            raise ValueError(f"{args.explanations} has no explanation for {', '.join(missing[:5])}")
    model = options.load_model(args)
    docs = _corpus(args, model)
    explainer = open_chat(args.explainer, model_name=args.explainer_model)
    scorer = (
        open_chat(args.scorer, model_name=args.scorer_model)
        if args.scorer and args.scorer != args.explainer
        else explainer
    )
    records = explain(
        model,
        load_dictionaries(model, args.dictionaries),
        nodes,
        docs,
        explainer,
        scorer=scorer,
        scores=args.scores,
        explanations=given,
        settings=Settings(shown=args.contexts, steer=args.steer, seed=args.seed),
        batch_size=args.batch_size,
        cache_dir=None if args.no_cache else Path(args.cache_dir or default_cache_dir()),
    )
    if args.out:
        print(f"wrote {write_explanations(args.out, records)}")
    if args.json:
        print(json.dumps(records, indent=1, ensure_ascii=False))
        return 0
    for record in records:
        numbers = []
        for score, values in record["scores"].items():
            value = values.get("auroc", values.get("accuracy"))
            numbers.append(f"{score} {'-' if value is None else f'{value:.2f}'}")
        print(f"{record['Name']}: {record['Annotation']!r} ({', '.join(numbers)})")
    return 0


def _scores(text: str) -> tuple[str, ...]:
    from circuits.explain import SCORES

    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in chosen if s not in SCORES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown score {unknown[0]!r}; choose from {', '.join(SCORES)} (comma-separated)"
        )
    return chosen


def add_explain(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``explain`` subcommand's options."""
    expl = commands.add_parser(
        "explain",
        help="explain features or neurons with a language model, and score the explanations",
        description="Explain each node from its dashboard (top contexts, tokens marked) with an "
        "explainer LM, then score the explanation by detection, fuzzing and intervention with a "
        "scorer LM. Write SFC annotation JSON lines with scores and provenance (-o x.jsonl), "
        "which `render` and `explore` read with --annotations.",
        formatter_class=fmt,
    )
    model_options(expl)
    remote_option(expl)
    _unit_options(expl, top=20)
    _corpus_options(expl, "explanations")
    expl.add_argument(
        "--explainer",
        default="smollm2-135m",
        help="a model `--model` would open (run here), or an OpenAI-compatible API's base URL "
        "(http://host:port/v1; key from $OPENAI_API_KEY)",
    )
    expl.add_argument("--explainer-model", default="default", help="the model name sent to an API")
    expl.add_argument("--scorer", help="like --explainer (default: the explainer)" + NO_DEFAULT)
    expl.add_argument("--scorer-model", default="default", help="the model name sent to an API")
    expl.add_argument(
        "--scores",
        type=_scores,
        default=("detection", "fuzzing", "intervention"),
        metavar="LIST",
        help="comma-separated: detection, fuzzing, intervention",
    )
    expl.add_argument(
        "--explanations",
        metavar="FILE",
        help="score these explanations (annotation JSON lines) instead of writing new ones"
        + NO_DEFAULT,
    )
    expl.add_argument(
        "--contexts",
        type=positive_int,
        default=10,
        metavar="N",
        help="top contexts shown to the explainer (as many more are held out for scoring)",
    )
    expl.add_argument(
        "--steer",
        type=float,
        default=2.0,
        help="intervention: add this many times the unit's largest activation along it",
    )
    expl.add_argument("-o", "--out", help="write JSON lines (.jsonl)" + NO_DEFAULT)
    expl.set_defaults(out_kind="file", out_suffixes=(".jsonl",))
    expl.add_argument("--json", action="store_true", help="print the records as JSON")
    expl.set_defaults(run=_explain)

"""Commands that edit the model: ``ablate`` and ``shift``.

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
    remote_option,
)


def _ablate(args: argparse.Namespace) -> int:
    from circuits.ablation import ablation_values
    from circuits.dictionaries import load_dictionaries
    from circuits.edit import Ablate, next_token_change, read_nodes
    from circuits.graph import parse_node_name

    nodes = read_nodes(args.nodes)
    model = options.load_model(args)
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


def _shift(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries
    from circuits.edit import read_nodes
    from circuits.shift import shift
    from circuits.tasks import read_texts

    nodes = read_nodes(args.nodes) if args.nodes else None
    model = options.load_model(args)
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


def add_ablate(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``ablate`` subcommand's options."""
    abl = commands.add_parser(
        "ablate",
        help="next-token probabilities of a prompt with nodes ablated",
        description="Ablate the named nodes (at every position, or at the position a name's "
        "'@pos' gives) and print the top next-token probabilities before and after.",
        formatter_class=fmt,
    )
    model_options(abl)
    remote_option(abl)
    abl.add_argument(
        "--nodes",
        required=True,
        metavar="FILE",
        help="node names, one per line ('#' comments), or a circuit JSON (all its nodes)"
        + NO_DEFAULT,
    )
    abl.add_argument("--prompt", required=True, help="the prompt" + NO_DEFAULT)
    abl.add_argument(
        "--ablation",
        default="zero",
        choices=["zero", "mean"],
        help="set nodes to 0, or to their mean over the prompt's tokens",
    )
    abl.add_argument("--top", type=int, default=10, help="tokens listed before and after")
    abl.add_argument("--json", action="store_true", help="print the result as JSON")
    abl.set_defaults(run=_ablate)


def add_shift(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``shift`` subcommand's options."""
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
    model_options(sh)
    remote_option(sh)
    sh.add_argument(
        "--layer", type=int, help="probe on resid_LAYER; default: the middle layer" + NO_DEFAULT
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
        "--nodes", metavar="FILE", help="feature names to ablate, one per line" + NO_DEFAULT
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

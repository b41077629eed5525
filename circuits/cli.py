"""The ``circuits`` command: parse arguments, make one library call per subcommand, print.

Heavy imports (torch, nnsight) happen inside the subcommands so that ``circuits --help`` and
``circuits --version`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from circuits import __version__


def _info(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries
    from circuits.models import load_model

    model = load_model(args.model, device=args.device)
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


def _zoo_build(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from circuits.zoo.build import DATA_DIR, QUICK, ZooConfig, build

    config = replace(QUICK if args.quick else ZooConfig(), seed=args.seed)
    card = build(config, Path(args.out) if args.out else DATA_DIR, force=args.force)
    print(json.dumps(card, indent=2) if args.json else _card_text(card))
    return 0


def _zoo_info(args: argparse.Namespace) -> int:
    from circuits.zoo.build import DATA_DIR

    path = Path(args.dir or DATA_DIR) / "card.json"
    if not path.exists():
        print(f"no zoo card at {path}; build the zoo with `circuits zoo build`", file=sys.stderr)
        return 1
    card = json.loads(path.read_text())
    print(json.dumps(card, indent=2) if args.json else _card_text(card))
    return 0


def _card_text(card: dict) -> str:
    from circuits.zoo.card import card_markdown

    return card_markdown(card)


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
    info.add_argument("--model", default="zoo", help="'zoo', a hub name or a local directory")
    info.add_argument(
        "--dictionaries", default="zoo", help="'zoo', 'neurons' or a directory in SFC's layout"
    )
    info.add_argument("--device", default="cpu")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(run=_info)

    zoo = commands.add_parser("zoo", help="the shipped small model world").add_subparsers(
        dest="zoo_command", metavar="ZOO_COMMAND", required=True
    )
    zoo_build = zoo.add_parser(
        "build", help="rebuild the zoo (model, SAEs, tasks, card) from a seed", formatter_class=fmt
    )
    zoo_build.add_argument("--quick", action="store_true", help="tiny sizes, seconds not minutes")
    zoo_build.add_argument("--out", help="output directory (default: the package's zoo)")
    zoo_build.add_argument("--seed", type=int, default=0)
    zoo_build.add_argument("--force", action="store_true", help="rebuild finished stages too")
    zoo_build.add_argument("--json", action="store_true", help="print the card as JSON")
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
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:  # the library's errors say what to do
        print(f"circuits: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Commands that describe and build: ``info``, ``train-dictionaries`` and ``zoo``.

Each ``add_<command>`` adds one subcommand's options; each ``_<command>`` runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from circuits.cli import options
from circuits.cli.options import (
    NO_DEFAULT,
    model_options,
    per_submodule,
    process_options,
)


def _info(args: argparse.Namespace) -> int:
    from circuits.dictionaries import load_dictionaries

    model = options.load_model(args)
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


def _train_dictionaries(args: argparse.Namespace) -> int:
    from circuits.dictionaries.training import train_dictionaries
    from circuits.tasks import load_task

    model = options.load_model(args)
    names = args.submodules or [sub.name for sub in model.submodules]
    results = train_dictionaries(
        model,
        args.corpus,
        args.out,
        submodules=args.submodules,
        activation=args.activation,
        width=per_submodule(args.width, names, "--width"),
        k=per_submodule(args.k, names, "--k"),
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


def add_info(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``info`` subcommand's options."""
    info = commands.add_parser(
        "info",
        help="list a model's submodules and the nodes its dictionaries give them",
        formatter_class=fmt,
    )
    model_options(info)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(run=_info)


def add_train_dictionaries(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``train-dictionaries`` subcommand's options."""
    train = commands.add_parser(
        "train-dictionaries",
        help="train sparse autoencoders (TopK by default) on a model's activations",
        description="Train one SAE per submodule from the same forwards over a corpus "
        "(circuits.train_dictionaries: k-sparse autoencoders with AuxK, or BatchTopK, ReLU + L1, "
        "JumpReLU) and save them in dictionary_learning's layout with a metrics.json each. "
        "Checkpointed; rerunning the same command resumes.",
        formatter_class=fmt,
    )
    model_options(train, dictionaries=False)
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
        help="submodules to train (default: all: embed, attn_i, mlp_i, resid_i)" + NO_DEFAULT,
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
        help="Adam's learning rate (default: 2e-4 / sqrt(width / 2^14))" + NO_DEFAULT,
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
        help="also measure this task's accuracy with each SAE spliced in (test split)" + NO_DEFAULT,
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the initialisation and order")
    train.add_argument("--out", required=True, metavar="DIR", help="output folder" + NO_DEFAULT)
    train.set_defaults(out_kind="dir")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")
    train.set_defaults(run=_train_dictionaries)


def add_zoo(commands: argparse._SubParsersAction, fmt: type) -> None:
    """The ``zoo`` subcommand's options."""
    zoo = commands.add_parser("zoo", help="the shipped small model world").add_subparsers(
        dest="zoo_command", metavar="ZOO_COMMAND", required=True
    )
    zoo_build = zoo.add_parser(
        "build", help="rebuild the zoo (model, SAEs, tasks, card) from a seed", formatter_class=fmt
    )
    zoo_build.add_argument("--quick", action="store_true", help="tiny sizes, seconds not minutes")
    zoo_build.add_argument("--out", metavar="DIR", help="output directory" + NO_DEFAULT)
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
    process_options(zoo_build)
    zoo_build.set_defaults(run=_zoo_build)
    zoo_info = zoo.add_parser(
        "info", help="print the zoo's measured model card", formatter_class=fmt
    )
    zoo_info.add_argument("--dir", help="zoo directory (default: the package's zoo)")
    zoo_info.add_argument("--json", action="store_true", help="print the card as JSON")
    zoo_info.set_defaults(run=_zoo_info)

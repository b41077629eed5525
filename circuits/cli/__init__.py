"""The ``circuits`` command: parse arguments, make one library call per subcommand, print.

One module per group of subcommands (`circuits.cli.find`, `.look`, `.editing`, `.build`), the
options they share in `circuits.cli.options`.

Heavy imports (torch, nnsight) happen inside the subcommands so that ``circuits --help`` and
``circuits --version`` answer at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from circuits import __version__
from circuits.cli import build, editing, find, look

# Commands that split their pairs (or corpus) across torchrun ranks.
DISTRIBUTED = ("discover", "evaluate", "train-dictionaries")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(
        prog="circuits",
        description="Circuit discovery and causal analysis in language models.",
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"circuits {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        build.add_info, find.add_discover, find.add_evaluate, find.add_mask,
        find.add_compare, editing.add_ablate, look.add_render, look.add_explore,
        look.add_dashboard, look.add_explain, editing.add_shift,
        build.add_train_dictionaries, build.add_zoo,
    ):  # fmt: skip
        add(commands, fmt)
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
                f"{', '.join(DISTRIBUTED)} do. Start it without torchrun",
                file=sys.stderr,
            )
            distributed.finish(wait=True)  # every process refuses
            return 2
        if distributed.rank() != 0:  # rank 0 prints and writes
            args.no_progress = True
    restore = _apply_process_options(args)
    quiet = open(os.devnull, "w") if distributed.rank() != 0 else None  # noqa: SIM115
    finished = False
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            _check_outputs(args)
            code = args.run(args)
        finished = True
        return code
    except (ValueError, OSError) as exc:  # the library's errors say what to do
        print(f"circuits: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # long runs say where they saved (circuits.runs)
        print(f"circuits: stopped{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    finally:
        distributed.finish(wait=finished)
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

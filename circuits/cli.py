"""The ``circuits`` command: parse arguments, make one library call per subcommand, print.

Heavy imports (torch, nnsight) happen inside the subcommands so that ``circuits --help`` and
``circuits --version`` answer at once.
"""

from __future__ import annotations

import argparse
import sys

from circuits import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuits",
        description="Circuit discovery and causal analysis in language models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"circuits {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Installs everything into ./.venv: the graphviz system package when `dot` is missing,
# the CPU build of torch, and this package with its dev extra. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dot >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq graphviz >/dev/null
    else
        echo "graphviz's 'dot' is missing; install it with: sudo apt-get install graphviz" >&2
    fi
fi
python3 -m venv .venv || {
    echo "python3 -m venv failed; on Debian install it with: apt-get install python3-venv" >&2
    exit 1
}
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned here (not in pyproject, which admits any torch>=2.4) so that pip takes the
# CPU wheel rather than resolving a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"

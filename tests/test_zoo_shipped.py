"""The shipped zoo: it loads offline through the public loaders, its SAE files read with nothing
but torch and json in dictionary_learning's format, and its card's numbers are reproduced by
computations that share no code with the card."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import circuits
from circuits.tasks import TASK_NAMES, load_task, read_texts, validate
from circuits.zoo.build import DATA_DIR

CARD = json.loads((DATA_DIR / "card.json").read_text())


@pytest.fixture(scope="module")
def zoo():
    model = circuits.load_model("zoo")
    return model, circuits.load_dictionaries(model, "zoo")


def test_zoo_loads_like_a_hub_model(zoo):
    model, saes = zoo
    assert model.architecture.name == "gpt_neox" and model.parallel_attn
    assert [s.name for s in model.submodules][:4] == ["embed", "attn_0", "mlp_0", "resid_0"]
    assert list(saes) == [s.name for s in model.submodules]
    for name in TASK_NAMES:
        for split in ("train", "test", "generalisation"):
            validate(load_task(name, split), model.tokenizer)
    assert {t.labels["profession"] for t in read_texts("bios", "balanced")} == {
        "professor",
        "nurse",
    }


def test_sae_files_read_by_an_independent_dictionary_learning_reader(zoo):
    model, saes = zoo
    x = torch.randn(5, model.d_model) * 3
    for sub in model.submodules:
        folder = (
            DATA_DIR
            / "dictionaries"
            / ("embed" if sub.kind == "embed" else f"{sub.kind}_out_layer{sub.layer}")
        )
        config = json.loads((folder / "config.json").read_text())["trainer"]
        state = torch.load(folder / "ae.pt", weights_only=True)
        assert config["dict_class"] == "AutoEncoder"
        assert set(state) == {"bias", "encoder.weight", "encoder.bias", "decoder.weight"}
        width, d = state["encoder.weight"].shape
        assert (config["activation_dim"], config["dict_size"]) == (d, width)
        f = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
        x_hat = f @ state["decoder.weight"].T + state["bias"]
        torch.testing.assert_close(saes[sub.name].encode(x), f)
        torch.testing.assert_close(saes[sub.name].decode(f), x_hat)
        norms = state["decoder.weight"].norm(dim=0)
        torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("name", ["sva-rc", "ioi"])
def test_card_accuracy_reproduced_with_plain_transformers(name):
    tokenizer = AutoTokenizer.from_pretrained(DATA_DIR / "model")
    model = AutoModelForCausalLM.from_pretrained(DATA_DIR / "model").eval()
    correct, margins = [], []
    for line in (DATA_DIR / "tasks" / name / "test.jsonl").read_text().splitlines():
        row = json.loads(line)
        answers = [
            tokenizer.convert_tokens_to_ids(row[k].strip())
            for k in ("clean_answer", "patch_answer")
        ]
        for prefix, (good, bad) in (
            (row["clean_prefix"], answers),
            (row["patch_prefix"], answers[::-1]),
        ):
            ids = torch.tensor([tokenizer(prefix)["input_ids"]])
            with torch.no_grad():
                logits = model(ids).logits[0, -1]
            margins.append((logits[good] - logits[bad]).item())
            correct.append(margins[-1] > 0)
    card = CARD["tasks"][name]["test"]
    assert card["n_prompts"] == len(correct)
    assert card["accuracy"] == pytest.approx(sum(correct) / len(correct), abs=1e-4)
    assert card["mean_margin"] == pytest.approx(sum(margins) / len(margins), abs=1e-2)


def test_card_meets_its_targets_or_says_so():
    for name, row in CARD["saes"].items():
        assert row["variance_explained"] >= 0.9, name
        assert row["dead_fraction"] < 0.1, name
    for name in ("sva-simple", "sva-within-rc", "sva-rc", "sva-nounpp"):
        assert CARD["tasks"][name]["test"]["accuracy"] >= 0.95, name

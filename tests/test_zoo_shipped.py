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
        # dictionary_learning's AutoEncoderTopK: ReLU, then the k largest, then a linear decoder.
        assert config["dict_class"] == "AutoEncoderTopK"
        linear = {"encoder.weight", "encoder.bias", "decoder.weight"}
        assert set(state) == linear | {"b_dec", "k", "threshold"}
        width, d = state["encoder.weight"].shape
        assert (config["activation_dim"], config["dict_size"]) == (d, width)
        assert config["k"] == int(state["k"])
        pre = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
        top = pre.topk(int(state["k"]), dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        x_hat = f @ state["decoder.weight"].T + state["b_dec"]
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


def _read_topk(folder):
    """An independent AutoEncoderTopK reader: ``x -> x_hat`` from ``ae.pt`` alone."""
    state = torch.load(folder / "ae.pt", weights_only=True)
    k = int(state["k"])

    def reconstruct(x):
        pre = torch.relu((x - state["b_dec"]) @ state["encoder.weight"].T + state["encoder.bias"])
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        return f @ state["decoder.weight"].T + state["b_dec"], f

    return reconstruct


def test_card_sae_numbers_recomputed_with_plain_transformers():
    """resid_3 (the largest ΔCE) and attn_3: variance explained, L0, dead fraction and ΔCE on the
    card's held-out text, with the SAE spliced in by a plain forward hook on the Hugging Face
    modules."""
    from circuits.zoo import language

    tokenizer = AutoTokenizer.from_pretrained(DATA_DIR / "model")
    model = AutoModelForCausalLM.from_pretrained(DATA_DIR / "model").eval()
    docs = language.corpus(512, seed=999_999)  # the card's held-out documents (seed 0)
    batch = tokenizer(docs, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()

    def ce(hook_module=None, hook=None):
        handle = None if hook_module is None else hook_module.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
        finally:
            if handle is not None:
                handle.remove()
        targets = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100
        ).item()

    clean = ce()
    layer = model.gpt_neox.layers[3]
    for name, module, folder in (
        ("resid_3", layer, "resid_out_layer3"),
        ("attn_3", layer.attention.dense, "attn_out_layer3"),
    ):
        reconstruct = _read_topk(DATA_DIR / "dictionaries" / folder)
        seen = {}

        def splice(module, args, output, reconstruct=reconstruct, seen=seen):
            x = output[0] if isinstance(output, tuple) else output
            x_hat, f = reconstruct(x)
            seen["x"], seen["x_hat"], seen["f"] = x[mask], x_hat[mask], f[mask]
            return (x_hat, *output[1:]) if isinstance(output, tuple) else x_hat

        spliced = ce(module, splice)
        x, x_hat = seen["x"], seen["x_hat"]
        fvu = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        row = CARD["saes"][name]
        assert row["variance_explained"] == pytest.approx(1 - fvu.item(), abs=2e-3), name
        assert row["l0"] == pytest.approx((seen["f"] > 0).sum(-1).float().mean().item(), abs=0.05)
        never_fired = ((seen["f"] > 0).sum(0) == 0).float().mean().item()
        assert row["dead_fraction"] == pytest.approx(never_fired, abs=2e-3), name
        assert row["delta_ce"] == pytest.approx(spliced - clean, abs=2e-3), name


def test_card_meets_its_targets_or_says_so():
    for name, row in CARD["saes"].items():
        assert row["variance_explained"] >= 0.95, name
        assert row["delta_ce"] <= 0.05, name  # the target: 0.05 nats
        assert row["max_test_accuracy_drop"] <= 0.01, name  # task accuracy unchanged within 1%
        assert row["dead_fraction"] < 0.05, name
    for name in ("sva-simple", "sva-within-rc", "sva-rc", "sva-nounpp"):
        assert CARD["tasks"][name]["test"]["accuracy"] >= 0.95, name

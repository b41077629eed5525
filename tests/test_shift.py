"""SHIFT on a tiny model where one embedding coordinate carries the spurious attribute.

The tiny GPT-NeoX model's embedding is edited so that coordinate 0 is +-3 on "cat"/"dog" (the
attribute) and 0 on every other token, coordinate 1 is +-1 on "teacher"/"doctor" (the label) and 0
elsewhere, and these four tokens have no other coordinate. With neurons as dictionaries, zeroing
``embed/0`` makes "cat" and "dog" the same input, so the attribute is gone exactly.
"""

from __future__ import annotations

import random

import pytest
import torch

from circuits.dictionaries.base import Identity
from circuits.edit import Ablate, edited
from circuits.models import load_model
from circuits.shift import (
    auc,
    pooled_activations,
    probe_effects,
    select_spurious,
    shift,
    train_probe,
    worst_group_accuracy,
)
from circuits.tasks import LabelledText
from tests.conftest import TINY_WORDS, make_tiny_tokenizer

FILLERS = "the a near by desk sat on mat that".split()


def texts(n: int, *, balanced: bool, seed: int) -> list[LabelledText]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        job = ("teacher", "doctor")[i % 2]
        animal = ("cat", "dog")[(i // 2) % 2 if balanced else i % 2]
        words = [rng.choice(FILLERS) for _ in range(4)] + [job, animal]
        rng.shuffle(words)
        out.append(LabelledText(" ".join(words), {"profession": job, "gender": animal}))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.conftest import build_tiny_model

    torch_model = build_tiny_model("gpt_neox", seed=1)
    with torch.no_grad():
        emb = torch_model.gpt_neox.embed_in.weight  # [vocab, d_model]
        emb[:, :2] = 0
        for word, coord, value in (
            ("cat", 0, 3.0),
            ("dog", 0, -3.0),
            ("teacher", 1, 1.0),
            ("doctor", 1, -1.0),
        ):
            emb[TINY_WORDS.index(word)] = 0
            emb[TINY_WORDS.index(word), coord] = value
    model = load_model(torch_model, tokenizer=make_tiny_tokenizer())
    neurons = {sub.name: Identity(sub.width) for sub in model.submodules}
    return model, neurons


class WatchedLabels(dict):
    """Labels that note when they are first read."""

    read: list[str] = []

    def __getitem__(self, key):
        WatchedLabels.read.append(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        WatchedLabels.read.append(key)
        return super().get(key, default)

    def __contains__(self, key):
        WatchedLabels.read.append(key)
        return super().__contains__(key)


def run_shift(world, **options):
    model, neurons = world
    ambiguous, balanced = texts(240, balanced=False, seed=0), texts(240, balanced=True, seed=1)
    return shift(model, neurons, ambiguous, balanced, top=10, seed=0, **options)


@pytest.fixture(scope="module")
def report(world):
    return run_shift(world, spurious="animal: cat dog")


@pytest.fixture(scope="module")
def labels_report(world):
    return run_shift(world, selection="labels")


def test_the_judge_picks_the_spurious_coordinate_from_dashboards(report):
    # Coordinate 0 carries the animal from the embedding up the residual stream; its neurons'
    # top contexts peak on "cat". Coordinate 1 (the profession) is left alone.
    assert "embed/0" in report.selected and "resid_0/0" in report.selected
    assert all(node.endswith("/0") for node in report.selected)
    verdicts = {v.node: v for v in report.verdicts}
    assert verdicts["embed/0"].peak_share == 1.0
    assert all(v.about == (v.node in report.selected) for v in report.verdicts)
    assert not any(v.about for v in report.verdicts if v.node.endswith("/1"))
    assert report.settings["selection"] == "concept-tokens"
    assert report.settings["spurious"] == {"name": "animal", "tokens": ("cat", "dog")}


def test_the_label_free_selection_reads_no_balanced_label_before_it_is_made(world, monkeypatch):
    import circuits.shift as shift_module

    model, neurons = world
    balanced = [
        LabelledText(t.text, WatchedLabels(t.labels)) for t in texts(40, balanced=True, seed=1)
    ]
    seen_at_selection = []
    judged = shift_module._judged

    def watching(*args, **kwargs):
        seen_at_selection.append(list(WatchedLabels.read))
        return judged(*args, **kwargs)

    WatchedLabels.read = []
    monkeypatch.setattr(shift_module, "_judged", watching)
    got = shift(
        model, neurons, texts(40, balanced=False, seed=0), balanced, spurious="animal: cat dog",
        top=10,
    )  # fmt: skip
    assert seen_at_selection[0] == [] and WatchedLabels.read  # read later, to evaluate
    assert "embed/0" in got.selected


def test_the_label_rule_picks_the_spurious_coordinate(labels_report):
    assert "embed/0" in labels_report.selected
    assert "embed/1" not in labels_report.selected
    for c in labels_report.candidates:
        assert c.selected == (
            c.attribute_separation >= 0.2 and c.attribute_separation > c.label_separation
        )
    assert labels_report.settings["feature_skyline"][0].endswith("/0")


def test_the_controls(report):
    names = [r.name for r in report.rows]
    assert names == [
        "Original", "Random", "Random (circuit)", "SHIFT", "SHIFT + retrain",
        "Embed features (judge)", "Embed features (judge) + retrain", "Concept tokens deleted",
        "Concept tokens deleted + retrain", "Feature skyline", "Neuron skyline", "Oracle",
    ]  # fmt: skip
    # Here the concept lives in one embedding coordinate, so ablating it at embed is SHIFT,
    # and deleting the words "cat" and "dog" removes it from the input altogether.
    assert report.settings["embed_nodes"] == ["embed/0"]
    deleted = report.row("Concept tokens deleted + retrain")
    assert deleted.worst_group_accuracy > 0.9 and abs(deleted.attribute_accuracy - 0.5) < 0.1


def test_ablating_it_removes_the_attribute_exactly(world):
    model, neurons = world
    pair = [
        LabelledText("the teacher sat on the cat", {}),
        LabelledText("the teacher sat on the dog", {}),
    ]
    before = pooled_activations(model, pair, 1)
    assert (before[0] - before[1]).abs().max() > 0.1
    with edited(model, neurons, [Ablate(["embed/0"])]):
        after = pooled_activations(model, pair, 1)
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=1e-6)


def test_table_margins(report):
    original, shifted, retrained = (report.row(n) for n in ("Original", "SHIFT", "SHIFT + retrain"))
    # The original probe leans on the (3x stronger) attribute coordinate.
    assert original.attribute_accuracy > 0.9 and original.worst_group_accuracy < 0.5
    assert retrained.label_accuracy > 0.95 and retrained.worst_group_accuracy > 0.9
    assert abs(retrained.attribute_accuracy - 0.5) < 0.1
    assert abs(shifted.attribute_accuracy - 0.5) < 0.1
    assert report.row("Oracle").worst_group_accuracy > 0.9
    table = report.table()
    assert table.count("\n") == 2 + len(report.rows) - 1 and "SHIFT + retrain" in table
    assert report.to_dict()["rows"][0]["name"] == "Original"


def newton_logistic(x, y, l2, steps=50):
    """Independent solution: Newton's method on the same penalised loss."""
    n, d = x.shape
    xb = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
    theta = torch.zeros(d + 1, dtype=x.dtype)
    reg = torch.full((d + 1,), l2, dtype=x.dtype)
    reg[-1] = 0
    for _ in range(steps):
        p = torch.sigmoid(xb @ theta)
        grad = xb.T @ (p - y) / n + reg * theta
        hess = (xb.T * (p * (1 - p))) @ xb / n + torch.diag(reg)
        theta = theta - torch.linalg.solve(hess, grad)
    return theta[:-1], theta[-1]


def test_probe_matches_newton():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = x[:, 0] - 0.5 * x[:, 2] + 0.5 * torch.randn(200, generator=g, dtype=torch.float64) > 0
    y = y.double()
    probe = train_probe(x, y, l2=0.1)
    w, b = newton_logistic(x, y, 0.1)
    torch.testing.assert_close(probe.weight, w, atol=1e-6, rtol=0)
    torch.testing.assert_close(probe.bias, b, atol=1e-6, rtol=0)


def test_auc_against_pairs():
    scores = torch.tensor([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0], [2.0, 3.0], [0.0, 1.0]])
    labels = torch.tensor([1, 0, 1, 0, 0])
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    torch.testing.assert_close(auc(scores, labels), wins.mean(dim=(0, 1)))
    # by hand: column 0 wins 3 of 6 pairs counting ties as 1/2; column 1 only half a pair
    torch.testing.assert_close(
        auc(scores, labels), torch.tensor([0.5, 1 / 12], dtype=torch.float64)
    )


def test_worst_group_on_a_hand_table():
    # groups: (a) 3/4 right, (b) 1/2, (c) 2/2
    correct = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1]).bool()
    groups = ["a", "a", "a", "a", "b", "b", "c", "c"]
    assert worst_group_accuracy(correct, groups) == 0.5
    with pytest.raises(ValueError):
        worst_group_accuracy(correct, groups[:3])


def test_select_spurious_rule():
    label = torch.tensor([0, 0, 1, 1] * 5)
    attr = torch.tensor([0, 1, 0, 1] * 5)
    feats = {"embed": torch.stack([attr.float(), label.float(), (label + attr).float()], 1)}
    effects = {"embed/0": 1.0, "embed/1": -2.0, "embed/2": 0.5, "embed/ε": 9.0}
    chosen, cands = select_spurious(effects, feats, label, attr, top=3, threshold=0.5)
    assert chosen == ["embed/0"]
    assert [c.node for c in cands] == ["embed/1", "embed/0", "embed/2"]
    assert select_spurious(effects, feats, label, attr, top=1, threshold=0.5)[0] == []


@pytest.mark.parametrize(
    "nodes",
    [[], ["embed/999"], ["nope/1"], ["embed/ε"], ["embed/0@2"], ["attn_1/x"]],
)
def test_bad_selections(world, nodes):
    model, neurons = world
    with pytest.raises(ValueError):
        shift(
            model,
            neurons,
            texts(20, balanced=False, seed=0),
            texts(20, balanced=True, seed=1),
            nodes=nodes,
        )


def test_empty_automatic_selection_and_bad_layer(world):
    model, neurons = world
    amb, bal = texts(40, balanced=False, seed=0), texts(40, balanced=True, seed=1)
    with pytest.raises(ValueError, match="selection is empty"):
        shift(model, neurons, amb, bal, selection="labels", threshold=1.01, top=3)
    with pytest.raises(ValueError, match="selection is empty"):
        shift(model, neurons, amb, bal, spurious="nothing: zebra", top=3)
    with pytest.raises(ValueError, match="spurious concept in words"):
        shift(model, neurons, amb, bal)
    with pytest.raises(ValueError, match="selection must be"):
        shift(model, neurons, amb, bal, selection="oracle")
    with pytest.raises(ValueError):
        shift(model, neurons, amb, bal, selection="labels", layer=7)
    with pytest.raises(ValueError, match="determine"):
        shift(model, neurons, bal, bal, selection="labels")


def test_effects_at_the_readout_are_exact(world):
    """Zero-ablating a neuron of the probe's own residual changes the logit linearly, so its AtP
    effect must equal ``-w_j * pooled_j`` averaged over texts."""
    model, neurons = world
    some = texts(12, balanced=True, seed=3)
    x = pooled_activations(model, some, 1).double()  # [texts, d_model]
    g = torch.Generator().manual_seed(0)
    probe = train_probe(x + 0.1 * torch.randn(x.shape, generator=g, dtype=x.dtype), x[:, 0] > 0)
    effects = probe_effects(model, neurons, some, probe, 1, batch_size=5)
    expected = -(probe.weight * x).mean(dim=0)  # [d_model]
    got = torch.tensor([effects.get(f"resid_1/{j}", 0.0) for j in range(x.shape[1])])
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-4)
    assert abs(effects["resid_1/ε"]) < 1e-9  # neurons: the error is zero


def test_cli_json(tiny_model_dir, tmp_path, capsys):
    import json

    from circuits.cli import main

    for split, balanced in (("ambiguous", False), ("balanced", True)):
        lines = [
            json.dumps({"text": t.text, **t.labels})
            for t in texts(40, balanced=balanced, seed=int(balanced))
        ]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "nodes.txt").write_text("embed/3\n# a comment\nresid_0/5\n")
    argv = ["shift", "--model", str(tiny_model_dir("gpt_neox")), "--dictionaries", "neurons"]
    argv += ["--texts", str(tmp_path), "--nodes", str(tmp_path / "nodes.txt"), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["selected"] == ["embed/3", "resid_0/5"] and out["settings"]["selection"] == "given"
    assert "Concept tokens deleted" in [row["name"] for row in out["rows"]]
    (tmp_path / "nodes.txt").write_text("embed/9999\n")
    assert main(argv) == 2
    assert "index beyond" in capsys.readouterr().err

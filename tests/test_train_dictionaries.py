"""train_dictionaries: SAEs trained on data with a known sparse dictionary and on a tiny model.

The truths are computed here without the trainer: the generating dictionary, activations read
with plain forward hooks, cross-entropy and task accuracy from plain forwards with the SAE
spliced in by a hook, and an uninterrupted run for resuming.
"""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import PAIRS, TINY_WORDS
from torch.testing import assert_close

import circuits
from circuits.dictionaries import (
    SAE,
    BatchTopK,
    JumpReLU,
    ReLU,
    TopK,
    load_dictionaries,
    train_dictionaries,
)
from circuits.dictionaries.trainee import _lr_factor, _Trainee
from circuits.dictionaries.training import _Corpus
from circuits.models import load_model
from circuits.tasks import Task

D, ATOMS, K = 32, 40, 3  # synthetic data: d_model, true dictionary size, active atoms per token


def sparse_data(seed: int = 0, atoms: int = ATOMS, k: int = K, subspace: int | None = None):
    """A random unit-norm dictionary ``[atoms, D]`` and a sampler of ``codes @ dictionary +
    offset``: exactly ``k`` atoms per token with magnitudes in [0.5, 1.5]. With ``subspace``,
    the atoms span only that many dimensions (returned as an orthonormal basis ``[D, D]`` whose
    first ``subspace`` columns they span)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    r = subspace or D
    atoms_ = torch.randn(atoms, r, generator=g) @ basis[:, :r].T
    atoms_ = atoms_ / atoms_.norm(dim=-1, keepdim=True)
    offset = 0.0 if subspace else 0.5

    def sample(n: int) -> torch.Tensor:
        idx = torch.rand(n, atoms, generator=g).argsort(-1)[:, :k]
        codes = torch.zeros(n, atoms).scatter(-1, idx, torch.rand(n, k, generator=g) + 0.5)
        return 3 * codes @ atoms_ + offset  # [n, D]

    return atoms_, sample, basis


def fit(trainee: _Trainee, sample, steps: int, batch: int = 256) -> SAE:
    trainee.initialise(sample(4096))
    for step in range(steps):
        trainee.step(sample(batch) / trainee.scale, _lr_factor(step, steps), learn_threshold=False)
    return trainee.export()


def trainee(width: int, *, auxk_alpha: float = 1 / 32, activation="topk", sparsity=0.0):
    return _Trainee(
        D, width, activation=activation, k=K, lr=1e-2, sparsity=sparsity, auxk_alpha=auxk_alpha,
        k_aux=D // 2, dead_after=1024, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def fvu(sae: SAE, x: torch.Tensor) -> float:
    return ((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


# ------------------------------------------------------------------------------------------------
# Synthetic data with a known dictionary


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_recovers_a_known_sparse_dictionary(activation):
    atoms, sample, _ = sparse_data()
    t = trainee(64, activation=activation, sparsity=1.0)
    assert torch.equal(t.W_enc, t.W_dec.T)  # encoder starts as the decoder's transpose
    sae = fit(t, sample, 500)
    x = sample(4096)
    best = (atoms @ sae.W_dec.T).max(-1).values  # [atoms]: best cosine per true atom
    if activation == "topk":
        assert best.min() > 0.9, best.min()
    else:  # the L0 penalty leaves a few atoms shared between latents
        assert best.median() > 0.95, best.median()
    assert fvu(sae, x) < 0.05, fvu(sae, x)
    assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    l0 = (sae.encode(x) > 0).sum(-1).float().mean().item()
    assert (l0 == K) if activation == "topk" else (K - 1 <= l0 <= K + 1), l0


def test_auxk_revives_dead_latents():
    # Three quarters of the latents start pointing mostly outside the data's 16-dimensional
    # subspace, so they lose every top-k contest; only AuxK gives them a gradient.
    _, sample, basis = sparse_data(seed=1, atoms=64, k=4, subspace=16)
    x = sample(4096)
    dead = {}
    for alpha in (0.0, 1 / 32):
        t = trainee(64, auxk_alpha=alpha)
        g = torch.Generator().manual_seed(2)
        away = 0.1 * torch.randn(48, 16, generator=g) @ basis[:, :16].T
        away += torch.randn(48, D - 16, generator=g) @ basis[:, 16:].T
        with torch.no_grad():
            t.W_dec[:48] = away / away.norm(dim=-1, keepdim=True)
            t.W_enc[:, :48] = t.W_dec[:48].T
        t.lr = 3e-3
        sae = fit(t, sample, 150)
        dead[alpha] = ((sae.encode(x) > 0).sum(0) == 0).float().mean().item()
    assert dead[0.0] > 0.4, dead
    assert dead[1 / 32] < dead[0.0] / 2, dead


# ------------------------------------------------------------------------------------------------
# A tiny model


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = TINY_WORDS[4:]
    return [" ".join(rng.choices(words, k=rng.randint(4, 20))) for _ in range(n)]


DOCS = documents(160)
TASK = Task("tiny", "test", tuple(PAIRS), "tests")
QUICK = dict(
    width=48, k=4, steps=24, batch_size=128, buffer_tokens=384, text_batch_size=16,
    eval_docs=12, lr=3e-3, progress=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir("gpt_neox"))


def hooked_activations(model, texts: list[str], names: list[str]) -> dict[str, torch.Tensor]:
    """``{name: [tokens, width]}`` at every real token, read with plain forward hooks."""
    batch = model.tokenize(texts)
    seen: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def hook(module, args, out):
            seen[name] = out[0] if isinstance(out, tuple) else out

        return hook

    hooks = [model.module(n).register_forward_hook(keeper(n)) for n in names]
    with torch.no_grad():
        model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for hook in hooks:
        hook.remove()
    keep = batch.attention_mask.bool()
    return {n: seen[n][keep] for n in names}


def embed_spliced_logits(model, texts: list[str], sae: SAE | None):
    """Plain-forward logits ``[batch, pos, vocab]`` (and the batch) with the embedding's output
    replaced by ``sae(output)`` when ``sae`` is given."""
    batch = model.tokenize(texts)
    hooks = (
        [] if sae is None else [model.module("embed").register_forward_hook(lambda *a: sae(a[2]))]
    )
    with torch.no_grad():
        out = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for hook in hooks:
        hook.remove()
    return out.logits, batch


def mean_ce(logits: torch.Tensor, batch) -> float:
    """Mean next-token cross-entropy over real tokens."""
    real = batch.attention_mask[:, 1:].bool()
    return F.cross_entropy(logits[:, :-1][real], batch.input_ids[:, 1:][real]).item()


@pytest.mark.parametrize(
    ("activation", "cls"),
    [("topk", TopK), ("batchtopk", BatchTopK), ("relu", ReLU), ("jumprelu", JumpReLU)],
)
def test_saved_dictionaries_load_and_their_metrics_hold(model, tmp_path, activation, cls):
    names = ["embed", "attn_0", "resid_1"]
    trained = train_dictionaries(
        model, DOCS, tmp_path, submodules=names, activation=activation,
        task=TASK if activation == "topk" else None, **QUICK,
    )  # fmt: skip
    assert list(trained) == names and not (tmp_path / "checkpoint.pt").exists()
    loaded = load_dictionaries(model, tmp_path)
    assert list(loaded) == names  # embed/, attn_out_layer0/, resid_out_layer1/
    acts = hooked_activations(model, DOCS[: QUICK["eval_docs"]], names)
    for name in names:
        d, sae, metrics = loaded[name], trained[name].dictionary, trained[name].metrics
        assert isinstance(d.activation, cls) and d.width == QUICK["width"]
        x = acts[name]  # [tokens, d_model], the held-out documents' activations
        assert_close(d.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        assert_close(d.decode(d.encode(x)), sae(x), atol=1e-5, rtol=1e-5)
        on_disk = json.loads((trained[name].path / "metrics.json").read_text())
        assert on_disk == json.loads(json.dumps(metrics))
        f = d.encode(x)
        assert metrics["eval_tokens"] == x.shape[0]
        assert metrics["variance_explained"] == pytest.approx(1 - fvu(d, x), abs=1e-5)
        assert metrics["l0"] == pytest.approx((f > 0).sum(-1).float().mean().item(), abs=1e-5)
        never = ((f > 0).sum(0) == 0).float().mean().item()
        assert metrics["dead_fraction"] == pytest.approx(never, abs=1e-6)
        assert metrics["variance_explained"] > 0.5
        if activation in ("topk", "batchtopk"):
            assert metrics["k"] == 4
        if activation == "topk":
            assert metrics["l0"] == 4
        if activation == "batchtopk":  # the learned threshold keeps about k per token
            assert d.activation.threshold > 0 and 2 <= metrics["l0"] <= 6, metrics["l0"]

    held_out = DOCS[: QUICK["eval_docs"]]
    clean = mean_ce(*embed_spliced_logits(model, held_out, None))
    spliced = mean_ce(*embed_spliced_logits(model, held_out, loaded["embed"]))
    assert trained["embed"].metrics["ce_clean"] == pytest.approx(clean, abs=1e-5)
    assert trained["embed"].metrics["delta_ce"] == pytest.approx(spliced - clean, abs=1e-5)
    if activation == "topk":
        right = []
        for p in TASK.pairs:
            cases = [(p.clean_prefix, p.clean_answer, p.patch_answer)]
            cases.append((p.patch_prefix, p.patch_answer, p.clean_answer))
            for prefix, good, bad in cases:
                logits, _ = embed_spliced_logits(model, [prefix], loaded["embed"])
                good_id, bad_id = (model.tokenizer(w)["input_ids"][-1] for w in (good, bad))
                right.append(bool(logits[0, -1, good_id] > logits[0, -1, bad_id]))
        accuracy = trained["embed"].metrics["task_accuracy_spliced"]
        assert accuracy == pytest.approx(sum(right) / len(right))


def test_skipped_first_positions_stay_out_of_training_and_metrics(model, tiny_model_dir, tmp_path):
    """With ``skip_positions=2`` the metrics are those of positions 2 on, and the SAE spliced in
    leaves positions 0 and 1 as they were; a first token 1,000 times larger warns."""
    trained = train_dictionaries(
        model, DOCS, tmp_path, submodules=["embed"], skip_positions=2, **QUICK
    )["embed"]
    held_out = DOCS[: QUICK["eval_docs"]]
    batch = model.tokenize(held_out)
    later = batch.attention_mask.bool() & (batch.attention_mask.cumsum(1) > 2)
    with torch.no_grad():
        x = model.module("embed")(batch.input_ids)[later]  # [tokens, d_model]
    sae = trained.dictionary
    assert trained.metrics["eval_tokens"] == x.shape[0]
    assert trained.metrics["variance_explained"] == pytest.approx(1 - fvu(sae, x), abs=1e-5)

    def from_position_2(module, args, out):
        return torch.cat([out[:, :2], sae(out[:, 2:])], 1)

    hook = model.module("embed").register_forward_hook(from_position_2)
    with torch.no_grad():
        logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    hook.remove()
    clean = mean_ce(*embed_spliced_logits(model, held_out, None))
    assert trained.metrics["delta_ce"] == pytest.approx(
        mean_ce(logits.logits, batch) - clean, abs=1e-5
    )

    sinking = load_model(tiny_model_dir("gpt_neox"))  # every text starts with BOS
    with torch.no_grad():
        sinking.module("embed").weight[batch.input_ids[0, 0]] *= 1000
    with pytest.warns(UserWarning, match="attention sink.*skip_positions=1"):
        train_dictionaries(sinking, DOCS, tmp_path / "sink", submodules=["embed"], **QUICK)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_dictionaries(
            sinking, DOCS, tmp_path / "skip", submodules=["embed"], skip_positions=1, **QUICK
        )


def test_resume_after_an_interruption_equals_an_uninterrupted_run(model, tmp_path):
    options = dict(QUICK, steps=13, checkpoint_every=5, submodules=["mlp_0", "resid_1"])
    options.update(width={"mlp_0": 32, "resid_1": 48}, k={"mlp_0": 2, "resid_1": 4})
    whole = train_dictionaries(model, DOCS, tmp_path / "whole", **dict(options, progress=True))

    def interrupt(step, stats):
        assert set(stats) == {"mlp_0", "resid_1"} and set(stats["mlp_0"]) >= {"fvu", "l0"}
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_dictionaries(model, DOCS, tmp_path / "cut", callback=interrupt, **options)
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["step"] == 5
    with pytest.raises(ValueError, match="other arguments.*seed"):
        train_dictionaries(model, DOCS, tmp_path / "cut", **dict(options, seed=1))
    steps = []
    resumed = train_dictionaries(
        model, DOCS, tmp_path / "cut", callback=lambda s, _: steps.append(s), **options
    )
    assert steps == list(range(6, 14))
    assert [(r.dictionary.width, r.dictionary.activation.k) for r in resumed.values()] == [
        (32, 2),
        (48, 4),
    ]
    for name in whole:
        a, b = whole[name].dictionary.state_dict(), resumed[name].dictionary.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        assert whole[name].metrics == resumed[name].metrics


def test_ctrl_c_saves_the_step_reached_and_resuming_equals_an_uninterrupted_run(model, tmp_path):
    import os
    import signal

    from circuits.runs import Interrupted

    options = dict(QUICK, steps=9, checkpoint_every=100, submodules=["mlp_0"], width=32, k=2)
    whole = train_dictionaries(model, DOCS, tmp_path / "whole", **options)

    def ctrl_c(step, stats):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # seen at the end of the next step

    with pytest.raises(Interrupted, match="stopped after step 5; saved to .*checkpoint.pt"):
        train_dictionaries(model, DOCS, tmp_path / "cut", callback=ctrl_c, **options)
    checkpoint = tmp_path / "cut" / "checkpoint.pt"
    assert torch.load(checkpoint, weights_only=True)["step"] == 5
    resumed = train_dictionaries(model, DOCS, tmp_path / "cut", **options)
    a, b = whole["mlp_0"].dictionary.state_dict(), resumed["mlp_0"].dictionary.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)

    checkpoint.parent.mkdir(exist_ok=True)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint.*delete it"):
        train_dictionaries(model, DOCS, tmp_path / "cut", **options)


def test_corpus_from_files_and_the_zoo(model, tmp_path):
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (tmp_path / "docs.txt").write_text("\n\n".join(DOCS) + "\n")
    for path in ("docs.jsonl", "docs.txt"):
        corpus = _Corpus(tmp_path / path, 5, seed=0)
        assert corpus.heldout == DOCS[:5] and corpus.n_train == len(DOCS) - 5
        stream = corpus.training(len(DOCS) - 6)  # the last training document, then around
        assert [next(stream) for _ in range(3)] == [DOCS[-1], DOCS[5], DOCS[6]]
    from_list = train_dictionaries(model, DOCS, tmp_path / "a", submodules=["embed"], **QUICK)
    from_file = train_dictionaries(
        model, tmp_path / "docs.jsonl", tmp_path / "b", submodules=["embed"], **QUICK
    )
    assert torch.equal(from_list["embed"].dictionary.W_dec, from_file["embed"].dictionary.W_dec)

    from circuits.zoo import language

    zoo = _Corpus("zoo", 3, seed=7)
    first = language.corpus(256, seed=7 * 1_000_003)
    assert zoo.heldout == first[:3] and next(zoo.training(0)) == first[3]
    assert circuits.train_dictionaries is train_dictionaries


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(corpus=[]), "empty"),
        (dict(corpus=["", "  "]), "empty"),
        (dict(submodules=["mlp_7"]), "unknown submodule"),
        (dict(k=49), "exceeds width"),
        (dict(width=0), "positive integer"),
        (dict(width={"embed": 16}), "must name exactly"),
        (dict(corpus=DOCS[:14]), "fewer than one batch"),
        (dict(corpus=DOCS[:12]), "all held out"),
        (dict(activation="gated"), "activation"),
        (dict(skip_positions=-1), "non-negative"),
    ],
)
def test_bad_input_raises_a_clear_value_error(model, tmp_path, change, message):
    options = dict(QUICK, submodules=["embed", "mlp_0"], corpus=DOCS)
    options.update(change)
    with pytest.raises(ValueError, match=message):
        train_dictionaries(model, options.pop("corpus"), tmp_path, **options)


def test_command_line_trains_loads_and_reports(model, tiny_model_dir, tmp_path, capsys):
    from circuits.cli import main

    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(documents(40)) + "\n", encoding="utf-8")
    out = tmp_path / "saes"
    args = ["train-dictionaries", "--model", str(tiny_model_dir("gpt_neox")), "--corpus"]
    args += [str(corpus), "--submodules", "embed", "resid_1", "--width", "32", "resid_1=48"]
    args += ["--k", "4", "--steps", "6", "--batch-size", "64", "--buffer-tokens", "128"]
    args += ["--eval-docs", "8", "--no-progress", "--out", str(out)]
    assert main([*args, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert list(metrics) == ["embed", "resid_1"]
    assert (metrics["embed"]["width"], metrics["resid_1"]["width"]) == (32, 48)
    loaded = circuits.load_dictionaries(model, out)
    assert list(loaded) == ["embed", "resid_1"] and loaded["resid_1"].width == 48
    for name, folder in (("embed", "embed"), ("resid_1", "resid_out_layer1")):
        assert json.loads((out / folder / "metrics.json").read_text()) == {
            k: v for k, v in metrics[name].items() if k != "path"
        }
    assert main(args) == 0  # finished: the same weights again, printed as a table
    assert "resid_1" in capsys.readouterr().out
    assert main([*args[:-1], str(tmp_path / "other"), "--width", "32", "mlp_9=8"]) == 2
    assert "--width: no submodule mlp_9" in capsys.readouterr().err

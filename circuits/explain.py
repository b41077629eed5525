"""Explanations of features and neurons, and scores of how well they predict the unit.

For each feature or neuron node, from its dashboard (`viz.dashboard`: top-activating and random
contexts, every token with its activation):

1. **Explain.** The top contexts are split by rank: even ranks (0, 2, 4, ...) are shown to the
   explainer, odd ranks are held out for scoring. A shown context is its text with the tokens
   where the unit fires marked ``<<like this>>`` (activation above 0 and at least ``mark`` times
   the context's maximum); the unit's most promoted output tokens follow when the dashboard has
   them. The explainer answers with one short phrase, greedily.
2. **Detection.** The scorer reads the explanation and one unmarked context at a time and says
   whether the unit fires on it: the held-out top contexts (positives) against the random
   contexts whose maximum is at most ``quiet`` times the unit's largest activation (negatives).
3. **Fuzzing.** The held-out top contexts, marked: every other one at the tokens where the unit
   fires (right), the rest at as many tokens drawn among those where it does not (wrong). The
   scorer says whether the marked tokens fit the explanation.
4. **Intervention.** The first ``prompt_tokens`` tokens of ``prompts`` corpus documents are
   continued greedily twice: plainly, and with ``steer`` times the unit's largest activation
   added along its direction at every position (`circuits.edit.Steer`). The scorer sees the
   explanation and both continuations, in both orders, and says which one it fits; a prompt
   whose continuations are equal counts 0.5.

Each judgement is the scorer's probability of the first answer ("Yes", or "A") against the
second, read from its next-token logits or log-probabilities (`circuits.chat`). For
detection and fuzzing the scores are ``auroc`` (the chance that a positive outranks a negative,
ties half: free of a scorer's bias towards one answer) and ``balanced_accuracy`` (the mean recall
of both classes, answering "Yes" above probability 0.5); for intervention, ``accuracy`` (the
mean probability given to the steered continuation). The scorer is shown a few fixed examples of
the task, about made-up features, before each question (`FEW_SHOT`).

Explainers and scorers are `circuits.chat.Chat`s: a causal LM run here, or an OpenAI-compatible
``/chat/completions`` endpoint. Every record keeps the explainer's prompt, both chats'
descriptions and the settings. Records are cached on disk (key: the dashboard, the chats'
descriptions, `PROMPT_VERSION` and the settings); ``cache_dir=None`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from circuits.chat import Chat, Messages
from circuits.files import write_text
from circuits.models import Batch, Model

__all__ = [
    "PROMPT_VERSION",
    "FEW_SHOT",
    "Settings",
    "explain",
    "score_explanation",
    "write_explanations",
    "default_cache_dir",
]

PROMPT_VERSION = 1
"""Version of the prompts below (part of the cache key)."""

EXPLAIN_SYSTEM = (
    "You explain what a unit of a language model responds to. You see texts where it is most "
    "active, with the tokens where it fires marked <<like this>>. Reply with one short phrase, "
    "at most 12 words, that says what the marked tokens have in common. Nothing else."
)
DETECT_SYSTEM = (
    "A unit of a language model fires on some texts. Given a description of the unit and a "
    "text, answer Yes if the unit fires on the text and No if it does not."
)
FUZZ_SYSTEM = (
    "A unit of a language model fires on some tokens. Given a description of the unit and a "
    "text with some tokens marked <<like this>>, answer Yes if the marked tokens are ones the "
    "description fits and No if they are not."
)
STEER_SYSTEM = (
    "A unit of a language model was turned up while one of two continuations was written. "
    "Given a description of the unit, answer A or B: the continuation the description fits "
    "better."
)
FEW_SHOT = {
    "detection": [
        ("words about food and eating", "We ate bread and soup for dinner .", "Yes"),
        ("words about food and eating", "The car stopped near the bridge .", "No"),
        ("colours", "The sky turned red and gold .", "Yes"),
        ("colours", "He wrote a letter to his friend .", "No"),
    ],
    "fuzzing": [
        ("words about food and eating", "We ate <<bread>> and soup .", "Yes"),
        ("words about food and eating", "We <<ate>> bread and soup .", "No"),
        ("colours", "The sky turned <<red>> and gold .", "Yes"),
        ("colours", "The <<sky>> turned red and gold .", "No"),
    ],
}
"""Worked examples the scorer sees before each detection or fuzzing question."""


def default_cache_dir() -> Path:
    """``$CIRCUITS_CACHE/explanations``, else ``~/.cache/circuits/explanations``."""
    root = os.environ.get("CIRCUITS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "circuits") / "explanations"


# ------------------------------------------------------------------------------------------------
# Contexts as text


@dataclass(frozen=True)
class Settings:
    """What shapes an explanation and its scores (recorded, and part of the cache key).

    Attributes:
        shown: Top contexts shown to the explainer (even ranks); as many odd ranks are held out.
        negatives: Random contexts drawn from the corpus for detection's negatives.
        mark: A token is marked where its activation is above 0 and at least ``mark`` times its
            context's maximum.
        quiet: A random context is a negative when its maximum is at most ``quiet`` times the
            unit's largest activation.
        prompts: Intervention prompts (corpus documents).
        prompt_tokens: Tokens of each intervention prompt.
        new_tokens: Tokens generated after each.
        steer: The intervention adds ``steer`` times the unit's largest activation along its
            direction.
        max_tokens: Longest explanation, in tokens.
        seed: Draws the negatives, the wrongly marked tokens and the prompts.
    """

    shown: int = 10
    negatives: int = 40
    mark: float = 0.5
    quiet: float = 0.1
    prompts: int = 8
    prompt_tokens: int = 8
    new_tokens: int = 12
    steer: float = 2.0
    max_tokens: int = 32
    seed: int = 0


def _text(
    tokens: Sequence[str], marked: set[int] = frozenset(), skip: set[str] = frozenset()
) -> str:
    """Tokens as text, those at ``marked`` wrapped in ``<<>>``. Tokens that carry their own
    leading space (BPE) are concatenated; word-level tokens are joined with spaces."""
    spaced = any(t[:1].isspace() for t in tokens[1:])
    parts = []
    for i, token in enumerate(tokens):
        if token in skip:
            continue
        if i in marked:
            bare = token.lstrip()
            token = f"{token[: len(token) - len(bare)]}<<{bare}>>"
        parts.append(token)
    return ("" if spaced else " ").join(parts).strip()


def _firing(context: Mapping[str, Any], mark: float) -> set[int]:
    """Indices of the context's tokens where the unit fires (see `Settings.mark`)."""
    acts = context["activations"]
    top = max(acts, default=0.0)
    return {i for i, a in enumerate(acts) if a > 0 and a >= mark * top}


def _explainer_messages(
    board: Mapping[str, Any], shown: Sequence[Mapping], settings: Settings, skip
) -> Messages:
    lines = [
        f"{i}. {_text(c['tokens'], _firing(c, settings.mark), skip)}"
        for i, c in enumerate(shown, 1)
    ]
    promoted = board.get("promoted") or []
    if promoted:
        tokens = ", ".join(repr(p["token"].strip() or p["token"]) for p in promoted[:10])
        lines.append(f"\nTokens it makes more likely next: {tokens}")
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": "\n".join(lines)},
    ]


def _first_phrase(reply: str) -> str:
    """The explanation in a reply: its first non-empty line, without a list number or marks."""
    line = next((x.strip() for x in reply.splitlines() if x.strip()), "")
    return re.sub(r"^\d+[.)]\s*", "", line).replace("<<", "").replace(">>", "").strip()


def _question(
    system: str, shots: Sequence[tuple[str, str, str]], explanation: str, text: str
) -> Messages:
    messages = [{"role": "system", "content": system}]
    for description, example, answer in shots:
        messages += [
            {"role": "user", "content": f"Description: {description}\nText: {example}"},
            {"role": "assistant", "content": answer},
        ]
    return [*messages, {"role": "user", "content": f"Description: {explanation}\nText: {text}"}]


# ------------------------------------------------------------------------------------------------
# Scores


def _auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    if not positive or not negative:
        return None
    p, n = torch.tensor(positive)[:, None], torch.tensor(negative)[None, :]
    return float(((p > n).float() + 0.5 * (p == n).float()).mean())


def _classification(positive: Sequence[float], negative: Sequence[float]) -> dict[str, Any]:
    if not positive or not negative:
        return {
            "auroc": None,
            "balanced_accuracy": None,
            "positives": len(positive),
            "negatives": len(negative),
        }
    recall_pos = sum(p > 0.5 for p in positive) / len(positive)
    recall_neg = sum(p <= 0.5 for p in negative) / len(negative)
    return {
        "auroc": _auroc(positive, negative),
        "balanced_accuracy": (recall_pos + recall_neg) / 2,
        "positives": len(positive),
        "negatives": len(negative),
    }


def _held_out(board: Mapping[str, Any], settings: Settings) -> tuple[list, list]:
    """(shown, held-out) top contexts: even and odd ranks."""
    contexts = board.get("contexts") or []
    return contexts[0 : 2 * settings.shown : 2], contexts[1 : 2 * settings.shown : 2]


def _detection(board, explanation, scorer: Chat, settings: Settings, skip) -> dict[str, Any]:
    _, held = _held_out(board, settings)
    top = board.get("max_activation") or 0.0
    negatives = [c for c in board.get("random") or [] if c["max"] <= settings.quiet * top]
    texts = [_text(c["tokens"], skip=skip) for c in held + negatives]
    probs = scorer.probabilities(
        [_question(DETECT_SYSTEM, FEW_SHOT["detection"], explanation, t) for t in texts],
        ("Yes", "No"),
    )
    return _classification(probs[: len(held)], probs[len(held) :])


def _fuzzing(board, explanation, scorer: Chat, settings: Settings, skip) -> dict[str, Any]:
    _, held = _held_out(board, settings)
    rng = random.Random(settings.seed)
    texts, right = [], []
    for i, context in enumerate(held):
        firing = _firing(context, settings.mark)
        others = [
            j
            for j in range(len(context["tokens"]))
            if j not in firing and context["tokens"][j] not in skip
        ]
        if i % 2 == 0 or len(others) < len(firing):
            texts.append(_text(context["tokens"], firing, skip))
            right.append(True)
        else:
            texts.append(_text(context["tokens"], set(rng.sample(others, len(firing))), skip))
            right.append(False)
    probs = scorer.probabilities(
        [_question(FUZZ_SYSTEM, FEW_SHOT["fuzzing"], explanation, t) for t in texts], ("Yes", "No")
    )
    return _classification(
        [p for p, r in zip(probs, right, strict=True) if r],
        [p for p, r in zip(probs, right, strict=True) if not r],
    )


def _plain_continuations(
    model: Model, corpus: Sequence[str], settings: Settings
) -> tuple[torch.Tensor, list[list[int]]]:
    """Intervention prompts ``[prompts, prompt_tokens]`` (the first tokens of corpus documents
    drawn with the seed, all of one length, so no padding) and their plain continuations."""
    if not corpus:
        raise ValueError("intervention scoring needs a corpus for its prompts")
    rng = random.Random(settings.seed)
    docs = rng.sample(list(corpus), min(settings.prompts, len(corpus)))
    ids = [model.tokenize([d]).input_ids[0] for d in docs]
    n = min(settings.prompt_tokens, *(len(i) for i in ids))
    prompts = torch.stack([i[:n] for i in ids])
    return prompts, _continue(model, prompts, settings)


def _continue(model: Model, prompts: torch.Tensor, settings: Settings) -> list[list[int]]:
    batch = Batch(
        prompts, torch.ones_like(prompts), torch.full((len(prompts),), prompts.shape[1] - 1)
    )
    with torch.no_grad():
        return model.generate(batch, max_new_tokens=settings.new_tokens).tolist()


def _intervention(
    model, dictionaries, board, explanation, scorer: Chat, settings: Settings, prompts, plain
) -> dict[str, Any]:
    from circuits.edit import Steer, edited

    scale = settings.steer * (board.get("max_activation") or 1.0)
    with edited(model, dictionaries, [Steer(board["node"], scale)]):
        steered = _continue(model, prompts, settings)
    tokenizer = model.tokenizer
    skip = set(tokenizer.all_special_tokens)

    def text(ids: list[int]) -> str:
        return _text([tokenizer.decode([i]) for i in ids], skip=skip)

    changed = [i for i in range(len(prompts)) if steered[i] != plain[i]]
    questions = []
    for i in changed:
        a, b = text(steered[i]), text(plain[i])
        for first, second in ((a, b), (b, a)):
            questions.append(
                [
                    {"role": "system", "content": STEER_SYSTEM},
                    {
                        "role": "user",
                        "content": f"Description: {explanation}\nA: {first}\nB: {second}",
                    },
                ]
            )
    probs = scorer.probabilities(questions, ("A", "B")) if questions else []
    per_prompt = [0.5] * len(prompts)
    for k, i in enumerate(changed):
        per_prompt[i] = (probs[2 * k] + 1 - probs[2 * k + 1]) / 2
    return {
        "accuracy": sum(per_prompt) / len(per_prompt),
        "prompts": len(prompts),
        "changed": len(changed),
        "scale": scale,
    }


# ------------------------------------------------------------------------------------------------
# The pipeline


SCORES = ("detection", "fuzzing", "intervention")


def _check_scores(scores: Sequence[str]) -> None:
    unknown = set(scores) - set(SCORES)
    if unknown:
        raise ValueError(f"unknown scores {sorted(unknown)}; choose from {', '.join(SCORES)}")


def score_explanation(
    model: Model,
    dictionaries: Mapping[str, Any],
    board: Mapping[str, Any],
    explanation: str,
    scorer: Chat,
    *,
    corpus: Sequence[str] = (),
    scores: Sequence[str] = SCORES,
    settings: Settings = Settings(),
    plain: tuple[torch.Tensor, list[list[int]]] | None = None,
) -> dict[str, Any]:
    """Score one explanation of ``board``'s unit (module docstring): ``{score name: numbers}``.

    Args:
        corpus: Where the intervention prompts come from (needed only for ``"intervention"``).
        plain: The prompts and their plain continuations, when already computed for
            ``corpus`` and ``settings`` (they do not depend on the unit).
    """
    _check_scores(scores)
    skip = set(model.tokenizer.all_special_tokens)
    result: dict[str, Any] = {}
    if "detection" in scores:
        result["detection"] = _detection(board, explanation, scorer, settings, skip)
    if "fuzzing" in scores:
        result["fuzzing"] = _fuzzing(board, explanation, scorer, settings, skip)
    if "intervention" in scores:
        if plain is None:
            plain = _plain_continuations(model, corpus, settings)
        result["intervention"] = _intervention(
            model, dictionaries, board, explanation, scorer, settings, *plain
        )
    return result


def explain(
    model: Model,
    dictionaries: Mapping[str, Any],
    nodes: Sequence[str],
    corpus: Sequence[str],
    explainer: Chat,
    *,
    scorer: Chat | None = None,
    scores: Sequence[str] = SCORES,
    explanations: Mapping[str, str] | None = None,
    settings: Settings = Settings(),
    batch_size: int = 16,
    cache_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Explain and score feature or neuron ``nodes`` (module docstring).

    Args:
        model: The model whose units are explained.
        dictionaries: ``{submodule: Dictionary}`` covering the nodes (``"neurons"`` for neurons).
        nodes: Node names; a position suffix is ignored, repeats are dropped.
        corpus: Documents for the dashboards and the intervention prompts.
        explainer: Writes the explanations.
        scorer: Judges them (default: the explainer).
        scores: Which of ``detection``, ``fuzzing``, ``intervention`` to compute.
        explanations: ``{node: text}`` to score instead of asking the explainer (e.g. written
            by hand, or another node's as a control).
        settings: See `Settings`.
        batch_size: Corpus documents per forward of the dashboards.
        cache_dir: Where records are cached, and their dashboards in its ``dashboards``
            folder (None: no cache).

    Returns:
        One record per node: ``Name``, ``Annotation`` (the explanation: SFC's annotation
        JSON lines, which `viz.annotations` and every diagram read), ``scores``, ``prompt``
        (the explainer's messages, or None for a given explanation), ``explainer``,
        ``scorer`` (their descriptions), ``settings``, ``version``.
    """
    from viz.dashboard import dashboards

    _check_scores(scores)
    scorer = scorer or explainer
    names = list(dict.fromkeys(n.split("@", 1)[0] for n in nodes))
    if not names:
        raise ValueError("name at least one feature or neuron node to explain")
    boards = dashboards(
        model,
        dictionaries,
        names,
        corpus,
        top_k=2 * settings.shown,
        random_k=settings.negatives,
        seed=settings.seed,
        batch_size=batch_size,
        cache_dir=None if cache_dir is None else Path(cache_dir) / "dashboards",
    )
    silent = [
        n
        for n, b in boards.items()
        if (b.get("max_activation") or 0.0) <= 0.0 and n not in (explanations or {})
    ]
    if silent:
        raise ValueError(
            f"{', '.join(silent[:5])} never fire on this corpus, so there is nothing to explain; "
            "leave them out or give a corpus where they fire"
        )
    skip = set(model.tokenizer.all_special_tokens)
    described = {"explainer": explainer.describe(), "scorer": scorer.describe()}
    plain = None
    records = []
    for name, board in boards.items():
        given = (explanations or {}).get(name)
        key = hashlib.sha256(
            json.dumps(
                [PROMPT_VERSION, board, described, asdict(settings), sorted(scores), given],
                sort_keys=True,
            ).encode()
        ).hexdigest()
        path = Path(cache_dir) / f"{key}.json" if cache_dir is not None else None
        if path is not None and path.exists():
            records.append(json.loads(path.read_text(encoding="utf-8")))
            continue
        shown, _ = _held_out(board, settings)
        messages = None
        if given is None:
            messages = _explainer_messages(board, shown, settings, skip)
            given = _first_phrase(explainer.complete(messages, max_tokens=settings.max_tokens))
        if "intervention" in scores and plain is None:
            plain = _plain_continuations(model, corpus, settings)
        result = score_explanation(
            model, dictionaries, board, given, scorer, scores=scores, settings=settings, plain=plain
        )
        record = {
            "Name": name,
            "Annotation": given,
            "scores": result,
            "prompt": messages,
            **described,
            "settings": {**asdict(settings), "temperature": 0, "scores": list(scores)},
            "version": PROMPT_VERSION,
        }
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, json.dumps(record, ensure_ascii=False))
        records.append(record)
    return records


def write_explanations(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write records as JSON lines: SFC's annotation format with the scores and provenance as
    extra keys (``circuits render --annotations``, ``circuits explore --annotations``)."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    write_text(path, "\n".join(lines) + "\n")
    return Path(path)

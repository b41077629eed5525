"""A concept named in words, and a transparent judge of whether a feature is about it.

SHIFT's selection without disambiguating labels (`circuits.shift`): the user names the spurious
concept with a few of its tokens (``"gender: he she his her man woman"``) and a judge reads each
circuit feature's dashboard (`viz.dashboard`: its top-activating contexts and the output tokens
its decoder direction promotes) and decides. The concept-token rule is the judge here:

- ``peak share``: of the feature's top-activating contexts, the fraction whose most active token
  is one of the concept's tokens;
- ``promoted``: the concept's tokens among the feature's ``promoted_top`` most promoted tokens.

A feature is about the concept when its peak share is at least ``share``, or (with
``promoted_top > 0``) a concept token is among its most promoted. Tokens compare
case-insensitively, without surrounding whitespace and without a BPE word-start mark (``Ġ``,
``▁``), so ``" She"`` matches ``she``. No label is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Concept", "Verdict", "delete_concept_tokens", "judge_concept_tokens", "normalise"]


def normalise(token: str) -> str:
    """A token as concepts compare it: no whitespace or word-start mark, lower case."""
    return token.strip().lstrip("Ġ▁").strip().lower()


@dataclass(frozen=True)
class Concept:
    """A concept and tokens that express it.

    Attributes:
        name: What it is called (``gender``).
        tokens: Its tokens, normalised (``("he", "she", ...)``).
    """

    name: str
    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Concept:
        """``"gender: he she his her"`` (or the tokens alone, then named ``spurious``)."""
        name, _, words = text.rpartition(":") if ":" in text else ("spurious", "", text)
        tokens = tuple(dict.fromkeys(normalise(w) for w in words.replace(",", " ").split()))
        tokens = tuple(t for t in tokens if t)
        if not name.strip() or not tokens:
            raise ValueError(
                f"name the concept and some of its tokens, e.g. 'gender: he she his her'; "
                f"got {text!r}"
            )
        return cls(name.strip(), tokens)

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and normalise(token) in self.tokens


@dataclass(frozen=True)
class Verdict:
    """The judge's numbers for one feature.

    Attributes:
        node: The feature.
        peak_share: Fraction of its top contexts that peak on a concept token.
        promoted: Concept tokens among its most promoted tokens.
        about: Whether the judge says it is about the concept.
    """

    node: str
    peak_share: float
    promoted: tuple[str, ...]
    about: bool


def judge_concept_tokens(
    dashboards: Mapping[str, Mapping[str, Any]],
    concept: Concept,
    *,
    share: float = 0.5,
    promoted_top: int = 0,
) -> list[Verdict]:
    """The concept-token rule (module docstring) for each ``{node: dashboard}``, in order."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    verdicts = []
    for node, board in dashboards.items():
        peaks = []
        for context in board.get("contexts") or []:
            tokens, acts = context.get("tokens") or [], context.get("activations") or []
            if tokens and acts:
                peaks.append(tokens[max(range(len(acts)), key=acts.__getitem__)])
        peak_share = sum(p in concept for p in peaks) / len(peaks) if peaks else 0.0
        promoted = tuple(
            normalise(p["token"])
            for p in (board.get("promoted") or [])[:promoted_top]
            if p["token"] in concept
        )
        verdicts.append(Verdict(node, peak_share, promoted, peak_share >= share or bool(promoted)))
    return verdicts


def delete_concept_tokens(texts: Sequence[str], concept: Concept) -> list[str]:
    """``texts`` with every whole word that is one of the concept's tokens removed."""
    pattern = re.compile(
        r"(?<!\w)(?:" + "|".join(map(re.escape, concept.tokens)) + r")(?!\w)", re.IGNORECASE
    )
    return [" ".join(pattern.sub(" ", text).split()) for text in texts]

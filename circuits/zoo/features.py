"""Zoo features whose meaning the grammar gives: ground truth for explanations.

The zoo's language is generated from word lists (`circuits.zoo.language`), so some words mark a
known role: a gendered pronoun, the ``that`` of a relative clause, a plural noun. For each such
set, `known_features` finds the feature of a chosen submodule whose firing (activation > 0)
best matches the tokens of the set, by F1 over the tokens of a corpus sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from circuits.zoo.language import NOUNS

__all__ = ["WORDS", "known_features"]

WORDS: dict[str, tuple[str, frozenset[str]]] = {
    "pronoun": ("mlp_0", frozenset({"he", "she", "his", "her", "him"})),
    "that": ("resid_1", frozenset({"that"})),
    "plural": ("resid_0", frozenset(plural for _, plural in NOUNS)),
}
"""``{name: (submodule searched, its words)}``; words compare lower-cased, without spaces."""


def known_features(
    model: Any, dictionaries: Mapping[str, Any], docs: Sequence[str]
) -> dict[str, tuple[str, float]]:
    """``{name: (feature node, F1)}`` for each entry of `WORDS`, over the tokens of ``docs``."""
    import nnsight

    batch = model.tokenize(list(docs))
    mask = batch.attention_mask.bool().flatten()  # [batch * pos]
    tokens = [model.tokenizer.decode([i]).strip().lower() for i in batch.input_ids.flatten()]
    subs = [s.name for s in model.submodules if s.name in {sub for sub, _ in WORDS.values()}]
    with torch.no_grad():
        with model.trace(batch):
            read = nnsight.save({sub: model.read(sub) for sub in subs})
    found = {}
    for name, (sub, words) in WORDS.items():
        target = torch.tensor([t in words for t in tokens])[mask].float()  # [tokens]
        with torch.no_grad():
            fires = dictionaries[sub].encode(read[sub]).flatten(0, 1)[mask] > 0  # [tokens, width]
        hits = (fires.float() * target[:, None]).sum(0)  # [width]
        f1 = 2 * hits / (fires.sum(0) + target.sum()).clamp(min=1)
        found[name] = (f"{sub}/{int(f1.argmax())}", float(f1.max()))
    return found

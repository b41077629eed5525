"""The concept-token judge and the token-deletion control, on hand-made dashboards and texts."""

import pytest

from circuits.concepts import Concept, delete_concept_tokens, judge_concept_tokens, normalise


def board(peaks: list[str], promoted: list[str]) -> dict:
    """A dashboard whose contexts peak on ``peaks`` (one context each)."""
    contexts = [{"tokens": ["x", p, "y"], "activations": [0.1, 2.0, 0.3]} for p in peaks]
    return {"contexts": contexts, "promoted": [{"token": t, "value": 1.0} for t in promoted]}


def test_parse_and_normalise():
    concept = Concept.parse("gender: He she, HIS  her")
    assert concept == Concept("gender", ("he", "she", "his", "her"))
    assert Concept.parse("cat dog").name == "spurious"
    assert normalise(" She") == "she" and normalise("Ġher") == "her" and normalise("▁His") == "his"
    assert " She" in concept and "shed" not in concept
    for bad in ("gender:", "", ": he"):
        with pytest.raises(ValueError, match="name the concept"):
            Concept.parse(bad)


def test_the_rule_counts_peaks_and_promoted_tokens():
    concept = Concept.parse("gender: he she")
    verdicts = judge_concept_tokens(
        {
            "a/1": board([" he", "She", "the", "cat"], ["x"]),  # 2 of 4 peaks: 0.5
            "a/2": board([" he", "the", "cat", "dog"], ["y", "z", " she"]),  # promoted, 3rd
            "a/3": board([" he", "the", "cat", "dog"], ["y", "z", "w", " she"]),  # 4th: no
            "a/4": {"contexts": [], "promoted": []},
        },
        concept,
        share=0.5,
        promoted_top=3,
    )
    got = {v.node: (v.peak_share, v.promoted, v.about) for v in verdicts}
    assert got == {
        "a/1": (0.5, (), True),
        "a/2": (0.25, ("she",), True),
        "a/3": (0.25, (), False),
        "a/4": (0.0, (), False),
    }
    with pytest.raises(ValueError, match="share"):
        judge_concept_tokens({}, concept, share=0)


def test_deletion_removes_whole_words_only():
    concept = Concept.parse("gender: he she his her")
    texts = ["She said he left . His hat , her shed .", "Hershey helped ."]
    assert delete_concept_tokens(texts, concept) == ["said left . hat , shed .", "Hershey helped ."]

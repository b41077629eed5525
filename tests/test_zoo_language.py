"""The zoo language: determinism, vocabulary, held-out splits, task-pair shape and the tokenizer.

Agreement is checked by an independent parser: a subject is a "the" noun phrase that starts a
clause (sentence start, after "that" or ","); a verb right after "that" agrees with the noun just
before "that"; any other agreeing verb closes the most recent open subject.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from transformers import AutoTokenizer

from circuits.zoo import language as L
from circuits.zoo.tokenizer import build_tokenizer, unknown_words

NOUN = {w: (sg, number) for sg, pl in L.NOUNS + L.THINGS for number, w in enumerate((sg, pl))}
VERB = {w: (sg, number) for sg, pl in L.VERBS for number, w in enumerate((sg, pl))}
ANIMATE = {sg for sg, _ in L.NOUNS}
TEMPLATES = ("simple", "within_rc", "rc", "nounpp")
SPLITS = ("train", "test", "generalisation")


def relations(text: str) -> list[tuple[str, str, bool, int]]:
    """(singular noun, singular verb, numbers agree, nouns in between) for each subject–verb."""
    found = []
    for sentence in text.split(" . "):
        words = sentence.split()
        stack: list[tuple[str, int, int]] = []  # open subjects: (word, number, noun count)
        last_noun: tuple[str, int, int] | None = None
        n_nouns = 0
        subject_np = False
        for i, w in enumerate(words):
            before = words[i - 1] if i else None
            if w in ("the", "The"):
                subject_np = before in (None, "that", ",")
            elif w in NOUN:
                last_noun = (w, NOUN[w][1], n_nouns)
                if subject_np:
                    stack.append(last_noun)
                subject_np = False
                n_nouns += 1
            elif w in VERB:
                subject = last_noun if before == "that" else (stack.pop() if stack else None)
                if subject is not None and subject[0] in NOUN:
                    sg, number = NOUN[subject[0]]
                    verb, verb_number = VERB[w]
                    found.append((sg, verb, number == verb_number, n_nouns - subject[2] - 1))
    return found


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return L.corpus(400, seed=3)


def whole_sentences(docs: list[str]) -> str:
    """The documents' complete sentences: the first may start, and the last stops, mid-way."""
    return " . ".join(" . ".join(d.split(" . ")[1:-1]) for d in docs)


@pytest.fixture(scope="module")
def all_pairs() -> dict[tuple[str, str], list[dict]]:
    pairs = {(t, s): L.sva_pairs(t, 80, split=s, seed=5) for t in TEMPLATES for s in SPLITS}
    pairs |= {("hard", s): L.sva_hard_pairs(80, split=s, seed=5) for s in SPLITS}
    pairs |= {("ioi", s): L.ioi_pairs(80, split=s, seed=5) for s in SPLITS}
    return pairs


def test_deterministic_per_seed():
    assert L.corpus(20, seed=1) == L.corpus(20, seed=1)
    assert L.corpus(20, seed=1) != L.corpus(20, seed=2)
    assert L.sva_pairs("rc", 30, split="train", seed=1) == L.sva_pairs(
        "rc", 30, split="train", seed=1
    )
    assert L.sva_hard_pairs(10, split="test", seed=4) == L.sva_hard_pairs(10, split="test", seed=4)
    assert L.ioi_pairs(10, split="train", seed=1) != L.ioi_pairs(10, split="train", seed=2)
    assert L.bios(8, split="balanced", seed=1) == L.bios(8, split="balanced", seed=1)
    assert L.bios(8, split="balanced", seed=1, cues="weak") == L.bios(
        8, split="balanced", seed=1, cues="weak"
    )


def test_vocabulary_covers_everything(docs, all_pairs):
    vocab = L.vocabulary()
    assert len(vocab) == len(set(vocab))
    known = set(vocab)
    texts = list(docs)
    for rows in all_pairs.values():
        texts += [r[k] for r in rows for k in ("clean_prefix", "patch_prefix")]
        texts += [r[k].strip() for r in rows for k in ("clean_answer", "patch_answer")]
    for split in ("ambiguous", "balanced"):
        for cues in ("plain", "weak"):
            texts += [r["text"] for r in L.bios(40, split=split, seed=0, cues=cues)]
    assert {w for t in texts for w in t.split()} <= known


def test_corpus_shape_and_mix(docs):
    assert all(len(d.split()) == 128 for d in docs)
    assert len(L.corpus(3, seed=0, doc_len=40)[0].split()) == 40
    text = " ".join(docs)
    assert " gave a " in text and " teaches " in text and " patients " in text
    rels = relations(whole_sentences(docs))
    assert len(rels) > 2000
    assert all(agree for _, _, agree, _ in rels), "every subject agrees with its verb"
    assert Counter(depth for *_, depth in rels)[2] > 100, "two nouns between subject and verb"
    starts = Counter(d.split()[0] for d in docs)
    assert starts["The"] < 0.6 * len(docs), "documents do not all start with a subject"


def test_held_out_never_in_corpus(docs):
    held = L.held_out_combinations()
    assert 0.05 * len(L.NOUNS) * len(L.VERBS) < len(held) < 0.2 * len(L.NOUNS) * len(L.VERBS)
    rels = relations(whole_sentences(docs))
    animate = [(n, v) for n, v, _, _ in rels if n in ANIMATE]
    assert not set(animate) & held
    assert max(depth for *_, depth in rels) <= 2
    assert " Once " not in " ".join(docs)  # the held-out IOI template


@pytest.mark.parametrize("task", [*TEMPLATES, "hard", "ioi"])
def test_pairs_shape(task, all_pairs):
    lengths = set()
    for split in SPLITS:
        rows = all_pairs[task, split]
        assert len(rows) == 80
        for row in rows:
            clean, patch = row["clean_prefix"].split(), row["patch_prefix"].split()
            assert len(clean) == len(patch)
            diff = [(c, p) for c, p in zip(clean, patch, strict=True) if c != p]
            for answer in (row["clean_answer"], row["patch_answer"]):
                assert answer.startswith(" ") and len(answer.split()) == 1
            assert row["clean_answer"] != row["patch_answer"]
            if task == "ioi":
                assert len(diff) == 1 and diff[0] == (
                    row["patch_answer"][1:],
                    row["clean_answer"][1:],
                )
                continue
            assert len(diff) == 1, "clean and patch differ only in one noun's number"
            [(c, p)] = diff
            assert NOUN[c][0] == NOUN[p][0] and NOUN[c][1] != NOUN[p][1]
            clean_rel = relations(row["clean_prefix"] + row["clean_answer"])[-1]
            patch_rel = relations(row["patch_prefix"] + row["patch_answer"])[-1]
            assert clean_rel[2] and patch_rel[2], "answers agree with the parsed subject"
            assert clean_rel[0] == NOUN[c][0]
            held = (clean_rel[0], clean_rel[1]) in L.held_out_combinations()
            assert held == (split == "generalisation")
            if task in ("rc", "nounpp"):
                assert clean_rel[3] == (3 if split == "generalisation" else 1)
            if task == "hard":
                assert clean_rel[3] == 3 if split == "generalisation" else clean_rel[3] in (1, 2)
            lengths.add((split, len(clean)))
    if task in TEMPLATES:  # templatic: one prefix length per file
        assert len({s for s, _ in lengths}) == len(lengths)


def test_cases_and_train_test_disjoint(all_pairs):
    for task in (*TEMPLATES, "hard", "ioi"):
        train = {(r["clean_prefix"], r["clean_answer"]) for r in all_pairs[task, "train"]}
        test = {(r["clean_prefix"], r["clean_answer"]) for r in all_pairs[task, "test"]}
        assert not train & test
    cases = Counter(r["case"] for r in all_pairs["nounpp", "train"])
    assert set(cases) == {
        "singular_singular",
        "singular_plural",
        "plural_singular",
        "plural_plural",
    }
    assert len(set(cases.values())) == 1
    assert set(Counter(r["case"] for r in all_pairs["ioi", "test"])) == {"ABBA", "BABA"}


@pytest.mark.parametrize("cues", ["plain", "weak"])
def test_bios_splits(cues):
    ambiguous = L.bios(100, split="ambiguous", seed=0, cues=cues)
    assert {(r["profession"], r["gender"]) for r in ambiguous} == {
        ("professor", "male"),
        ("nurse", "female"),
    }
    balanced = L.bios(100, split="balanced", seed=0, cues=cues)
    groups = Counter((r["profession"], r["gender"]) for r in balanced)
    assert len(groups) == 4 and set(groups.values()) == {25}
    for row in ambiguous + balanced:
        words = row["text"].split()
        assert "professor" not in words and "nurse" not in words
        pronouns = {"male": {"he", "his"}, "female": {"she", "her"}}[row["gender"]]
        assert pronouns & set(row["text"].lower().split())


def _profession_words() -> dict[str, set[str]]:
    """Words that occur in one profession's bio sentences only (not in the other's, not neutral)."""
    own = {p: set(L._template_words(s)) for p, s in L._BIO_SENTENCES.items()}
    shared = set(L._template_words(L._NEUTRAL_BIO_SENTENCES))
    professor, nurse = L.PROFESSIONS
    return {
        professor: own[professor] - own[nurse] - shared,
        nurse: own[nurse] - own[professor] - shared,
    }


def test_weak_bios_state_gender_in_every_sentence_and_profession_in_one():
    cue_words = _profession_words()
    plain_cues, weak_cues = [], []
    for cues, counts in (("plain", plain_cues), ("weak", weak_cues)):
        for row in L.bios(400, split="balanced", seed=3, cues=cues):
            words = row["text"].split()
            other = "nurse" if row["profession"] == "professor" else "professor"
            assert set(words) & cue_words[row["profession"]]
            assert not set(words) & cue_words[other]
            counts.append(sum(w in cue_words[row["profession"]] for w in words))
            if cues == "plain":
                continue
            sentences = row["text"].removesuffix(" .").split(" . ")
            assert 2 <= len(sentences) <= 3
            names = L._MALE_NAMES if row["gender"] == "male" else L._FEMALE_NAMES
            assert words[0] in names
            pronouns = {"male": {"He", "His", "his"}, "female": {"She", "Her", "her"}}
            assert all(set(s.split()) & pronouns[row["gender"]] for s in sentences[1:])
            cued = [s for s in sentences if set(s.split()) & cue_words[row["profession"]]]
            assert len(cued) == 1
    assert sum(weak_cues) < 0.5 * sum(plain_cues)


def test_shipped_bios_are_the_weak_variant():
    from circuits.zoo.build import DATA_DIR, ZooConfig

    config = ZooConfig()
    for offset, (split, n) in enumerate(config.bios.items()):
        rows = L.bios(n, split=split, seed=config.seed + 7 + offset, cues="weak")
        path = DATA_DIR / "tasks" / "bios" / f"{split}.jsonl"
        assert [json.loads(line) for line in path.read_text().splitlines()] == rows


def test_tokenizer_round_trip(tmp_path):
    tokenizer = build_tokenizer(L.vocabulary())
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<bos>", "<eos>", "<pad>", "<unk>"]
    assert len(tokenizer(" is", add_special_tokens=False).input_ids) == 1
    row = L.sva_pairs("nounpp", 1, split="train", seed=0)[0]
    text = row["clean_prefix"]
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text.split()) + 1
    assert tokenizer(text, add_special_tokens=False).input_ids == ids[1:]
    assert tokenizer.unk_token_id not in ids
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for t in (text, text + row["clean_answer"], "zebra the"):
        assert loaded(t).input_ids == tokenizer(t).input_ids
        assert (
            loaded(t, add_special_tokens=False).input_ids
            == tokenizer(t, add_special_tokens=False).input_ids
        )
    assert loaded.bos_token_id == 0 and loaded.pad_token_id == 2
    assert unknown_words(tokenizer, "The zebra likes the zebra and qux") == ["zebra", "qux"]
    assert unknown_words(tokenizer, text) == []

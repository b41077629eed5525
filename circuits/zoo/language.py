"""A small synthetic English-like language: the training corpus and task files of the zoo.

Text is a sequence of space-separated word tokens; "." and "," are tokens of their own. Four
families of sentences make up the language:

1. **Subject–verb agreement.** A subject noun phrase (optional adjective or compound modifier, a
   head noun, then optional modifiers that nest) followed by a verb that agrees in number with the
   head. Modifiers are prepositional phrases ("near the dogs"), object relative clauses ("that the
   guards like") and subject relative clauses ("that likes the guards"). The nouns inside
   modifiers are *attractors*; they often have the opposite number.
2. **Indirect-object identification.** "When Mary and John went to the store , John gave a drink
   to Mary ."
3. **Biographies.** A gendered first name, then he/she/his/her sentences whose vocabulary reveals a
   profession (professor or nurse); the profession title itself is optional. (The ``bios`` task
   files use a variant that is not in the corpus: one profession sentence among 2–3.)
4. **Filler.** Descriptions, lists and counting, so that the corpus is varied.

Held out of the training corpus, and used only by the ``"generalisation"`` task split:

* a fixed, seeded subset of (subject noun, agreeing verb) combinations
  (:func:`held_out_combinations`);
* nesting depth 3: in training, at most two nouns ever sit between a subject and its verb;
* one of the IOI templates.

Everything is deterministic given ``seed``; randomness comes from a private ``random.Random`` and
never from the global generator.

The public functions are :func:`vocabulary`, :func:`corpus`, :func:`sva_pairs`,
:func:`sva_hard_pairs`, :func:`ioi_pairs`, :func:`bios` and :func:`held_out_combinations`.
Task rows use the JSON-lines schema of Sparse Feature Circuits: ``clean_prefix``,
``patch_prefix``, ``clean_answer``, ``patch_answer`` (with a leading space, e.g. ``" is"``) and
``case``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Sequence
from typing import Literal

# --------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------

NOUNS: tuple[tuple[str, str], ...] = (
    ("teacher", "teachers"), ("student", "students"), ("doctor", "doctors"),
    ("farmer", "farmers"), ("lawyer", "lawyers"), ("author", "authors"), ("singer", "singers"),
    ("dancer", "dancers"), ("pilot", "pilots"), ("driver", "drivers"), ("baker", "bakers"),
    ("painter", "painters"), ("writer", "writers"), ("officer", "officers"),
    ("manager", "managers"), ("guard", "guards"), ("athlete", "athletes"),
    ("senator", "senators"), ("surgeon", "surgeons"), ("customer", "customers"),
    ("neighbour", "neighbours"), ("soldier", "soldiers"), ("sailor", "sailors"),
    ("artist", "artists"), ("actor", "actors"), ("banker", "bankers"), ("player", "players"),
    ("clerk", "clerks"), ("chef", "chefs"), ("judge", "judges"), ("friend", "friends"),
    ("visitor", "visitors"), ("boy", "boys"), ("girl", "girls"), ("king", "kings"),
    ("queen", "queens"), ("man", "men"), ("woman", "women"), ("child", "children"),
    ("person", "people"), ("mouse", "mice"), ("dog", "dogs"), ("cat", "cats"),
    ("horse", "horses"), ("bird", "birds"),
)  # fmt: skip
"""Animate nouns as (singular, plural): subjects of agreeing verbs and attractors."""

THINGS: tuple[tuple[str, str], ...] = (
    ("desk", "desks"), ("table", "tables"), ("car", "cars"), ("house", "houses"),
    ("tree", "trees"), ("door", "doors"), ("window", "windows"), ("box", "boxes"),
    ("chair", "chairs"), ("bridge", "bridges"), ("tower", "towers"), ("lamp", "lamps"),
    ("road", "roads"), ("wall", "walls"), ("boat", "boats"), ("shop", "shops"),
)  # fmt: skip
"""Inanimate nouns as (singular, plural): attractors inside prepositional phrases and objects."""

_AUX = (("is", "are"), ("was", "were"), ("has", "have"))
_INTRANSITIVE = (
    ("walks", "walk"), ("sleeps", "sleep"), ("smiles", "smile"), ("runs", "run"),
    ("sings", "sing"), ("laughs", "laugh"), ("dances", "dance"), ("waits", "wait"),
    ("swims", "swim"), ("talks", "talk"), ("works", "work"), ("arrives", "arrive"),
)  # fmt: skip
_TRANSITIVE = (
    ("likes", "like"), ("sees", "see"), ("knows", "know"), ("helps", "help"),
    ("admires", "admire"), ("hates", "hate"), ("loves", "love"), ("meets", "meet"),
    ("follows", "follow"), ("visits", "visit"), ("calls", "call"), ("thanks", "thank"),
    ("trusts", "trust"), ("watches", "watch"), ("chases", "chase"), ("finds", "find"),
)  # fmt: skip
VERBS: tuple[tuple[str, str], ...] = _AUX + _INTRANSITIVE + _TRANSITIVE
"""Agreeing verbs as (singular, plural): auxiliaries, then intransitive, then transitive."""
_FIRST_INTRANSITIVE = len(_AUX)
_FIRST_TRANSITIVE = len(_AUX) + len(_INTRANSITIVE)
TRANSITIVE_VERBS = VERBS[_FIRST_TRANSITIVE:]
"""The verbs that can close an object relative clause ("that the guards *like*")."""

PREPOSITIONS = (
    "near", "behind", "beside", "with", "from", "above", "below", "under", "outside",
    "around", "among", "without",
)  # fmt: skip
_ADJECTIVES = (
    "old", "young", "tall", "happy", "tired", "angry", "quiet", "famous", "clever", "brave",
    "kind", "busy", "new", "small", "big", "red", "green", "blue",
)  # fmt: skip
_COMPOUNDS = ("school", "music", "art", "farm", "city", "night", "science", "army", "village")
_COLOURS = ("red", "green", "blue", "small", "big", "new", "heavy", "broken")
_PLACES = (
    "park", "store", "school", "station", "market", "library", "restaurant", "beach", "office",
    "garden", "museum", "kitchen",
)  # fmt: skip
_OBJECTS = (
    "drink", "book", "ring", "bag", "letter", "ball", "flower", "key", "gift", "cake", "pen",
    "hat",
)  # fmt: skip
_MALE_NAMES = (
    "John", "James", "Michael", "David", "Robert", "Thomas", "Daniel", "Paul", "Mark",
    "George", "Peter", "Henry", "Jack", "Samuel", "Edward", "Frank", "Oliver", "Lucas", "Adam",
    "Simon",
)  # fmt: skip
_FEMALE_NAMES = (
    "Mary", "Sarah", "Emma", "Anna", "Laura", "Kate", "Lisa", "Julia", "Alice", "Grace",
    "Rachel", "Helen", "Sophie", "Emily", "Claire", "Lucy", "Rose", "Jane", "Olivia", "Nora",
)  # fmt: skip
NAMES = _MALE_NAMES + _FEMALE_NAMES
"""First names: the first half male, the second half female."""
_CITIES = (
    "London", "Paris", "Boston", "Chicago", "Berlin", "Madrid", "Dublin", "Vienna", "Toronto",
    "Sydney",
)  # fmt: skip
_NUMBERS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve",
)  # fmt: skip
_FOODS = ("apples", "bread", "milk", "eggs", "rice", "cheese", "tea", "coffee", "fish", "soup")
_WEATHER = ("cold", "warm", "sunny", "rainy", "quiet", "long")
_FIELDS = (
    "physics", "history", "chemistry", "biology", "mathematics", "economics", "philosophy",
    "linguistics",
)  # fmt: skip
_TOPICS = (
    "climate", "language", "memory", "markets", "stars", "cells", "energy", "law", "trade",
    "learning",
)  # fmt: skip
_WARDS = ("heart", "cancer", "surgical", "maternity")
_HOBBIES = ("running", "cooking", "reading", "gardening", "painting", "swimming", "hiking", "chess")

# Sentence openers before an agreement sentence; the subject then starts with lowercase "the".
_OPENERS = (
    ("Yesterday", ","), ("Today", ","), ("In", "the", "morning", ","), ("I", "think", "that"),
    ("We", "know", "that"), ("She", "said", "that"), ("He", "said", "that"),
    ("It", "is", "clear", "that"),
)  # fmt: skip
# Continuations after the main verb, by kind of verb.
_BE_TAILS = (("here",), ("today",), ("in", "the", "{place}"), ("at", "the", "{place}"))
_INTRANSITIVE_TAILS = (
    (), ("here",), ("today",), ("every", "day"), ("in", "the", "{place}"), ("quietly",),
    ("again",),
)  # fmt: skip

# IOI templates: {A} and {B} are the two names in order, {S} repeats one, the answer is the other.
# All templates have the same token length (14) so task files can keep positions.
_IOI_TEMPLATES = (
    "When {A} and {B} went to the {place} , {S} gave a {obj} to",
    "After {A} and {B} arrived at the {place} , {S} handed a {obj} to",
    "While {A} and {B} were at the {place} , {S} gave a {obj} to",
    "{A} and {B} went to the {place} . Then {S} gave a {obj} to",
    "{A} and {B} found a {obj} at the {place} and {S} gave it to",
    "After {A} and {B} went to the {place} , {S} brought a {obj} to",
    "While {A} and {B} walked in the {place} , {S} passed a {obj} to",
    "Once {A} and {B} got to the {place} , {S} offered a {obj} to",
)
_IOI_HELD_OUT_TEMPLATE = len(_IOI_TEMPLATES) - 1
"""The last IOI template never appears in the corpus; the ``generalisation`` split uses it."""

PROFESSIONS = ("professor", "nurse")
_TITLE_SENTENCES = ("{Name} is a {title} .", "{Name} works as a {title} .")
_BIO_SENTENCES = {
    "professor": (
        "{S} teaches {field} at the university .",
        "{S} gives lectures on {field} to large classes of students .",
        "{S} has published many papers on {topic} .",
        "{S} leads a research group in the department of {field} .",
        "{P} research focuses on {topic} and {topic} .",
        "{S} supervises graduate students and writes grant proposals .",
        "{S} received a large grant for {p} research on {topic} .",
        "{S} often speaks at conferences in {city} .",
        "{S} earned a doctorate in {field} from a university in {city} .",
        "{S} spends most mornings in the lab and most afternoons in seminars .",
        "{S} is writing a book about {topic} .",
    ),
    "nurse": (
        "{S} works at the hospital in {city} .",
        "{S} works long night shifts on the {ward} ward .",
        "{S} cares for patients after surgery .",
        "{S} gives medicine to patients and checks their blood pressure .",
        "{S} helps the doctors in the emergency room .",
        "{S} studied nursing at a college in {city} .",
        "{S} has worked in the clinic for {num} years .",
        "{S} looks after sick children on the {ward} ward .",
        "{P} patients say that {s} is always calm and kind .",
        "{S} changes bandages and cleans wounds during {p} shifts .",
    ),
}
_NEUTRAL_BIO_SENTENCES = (
    "{S} lives in {city} with {p} family .",
    "{S} grew up in {city} .",
    "In {p} free time , {s} enjoys {hobby} .",
    "{S} was born in {city} and moved to {city} later .",
    "{S} has two children and a dog .",
    "{S} likes {hobby} on weekends .",
)
_FILLER = (
    "The {thing} is {colour} .",
    "The {things} in the {place} are {colour} .",
    "There is a {colour} {thing} in the {place} .",
    "There are {num} {things} near the {place} .",
    "We bought {food} , {food} , {food} and {food} at the market .",
    "It was a {weather} day in {city} .",
    "The {place} opens at {num} and closes at {num} .",
    "{Name} likes {food} and {food} .",
    "{Name} gave a {obj} to {Name} .",
    "{Name} and {Name} live in {city} .",
    "{count} .",
)
_SLOT_WORDS: dict[str, Sequence[str]] = {
    "place": _PLACES, "obj": _OBJECTS, "city": _CITIES, "num": _NUMBERS, "food": _FOODS,
    "weather": _WEATHER, "field": _FIELDS, "topic": _TOPICS, "ward": _WARDS, "hobby": _HOBBIES,
    "colour": _COLOURS, "thing": tuple(s for s, _ in THINGS), "things": tuple(p for _, p in THINGS),
    "Name": NAMES, "title": PROFESSIONS,
}  # fmt: skip
_PRONOUNS = {"male": ("He", "he", "His", "his"), "female": ("She", "she", "Her", "her")}

# --------------------------------------------------------------------------------------------
# Held-out combinations
# --------------------------------------------------------------------------------------------

_HELD_OUT_SEED = 20250917
_HELD_OUT_FRACTION = 0.1


def _held_out_indices() -> frozenset[tuple[int, int]]:
    rng = random.Random(_HELD_OUT_SEED)
    pairs = [(n, v) for n in range(len(NOUNS)) for v in range(len(VERBS))]
    return frozenset(rng.sample(pairs, round(_HELD_OUT_FRACTION * len(pairs))))


_HELD = _held_out_indices()
_ALLOWED = tuple(
    tuple(v for v in range(len(VERBS)) if (n, v) not in _HELD) for n in range(len(NOUNS))
)
_ALLOWED_TRANSITIVE = tuple(tuple(v for v in a if v >= _FIRST_TRANSITIVE) for a in _ALLOWED)
_HELD_LIST = tuple(sorted(_HELD))
_HELD_TRANSITIVE = tuple(p for p in _HELD_LIST if p[1] >= _FIRST_TRANSITIVE)


def held_out_combinations() -> frozenset[tuple[str, str]]:
    """(singular noun, singular verb) combinations that never agree in the training corpus.

    For example ``("teacher", "walks")`` means that neither "teacher … walks" nor "teachers …
    walk" occurs with the noun as the verb's subject; both words still occur elsewhere.
    """
    return frozenset((NOUNS[n][0], VERBS[v][0]) for n, v in _HELD)


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------


def _template_words(templates: Sequence[str]) -> list[str]:
    return [w for t in templates for w in t.split() if not w.startswith("{")]


def vocabulary() -> list[str]:
    """Every word the generator can emit, in a fixed order and without duplicates."""
    words: list[str] = [".", ",", "The", "the", "that", "a"]
    words += [w for pair in NOUNS + THINGS + VERBS for w in pair]
    words += [*PREPOSITIONS, *_ADJECTIVES, *_COMPOUNDS, *_COLOURS, *_PLACES, *_OBJECTS]
    words += [*NAMES, *_CITIES, *_NUMBERS, *_FOODS, *_WEATHER, *_FIELDS, *_TOPICS, *_WARDS]
    words += [*_HOBBIES, *PROFESSIONS, "very", "two", "many"]
    words += [w for p in _PRONOUNS.values() for w in p]
    words += [w for o in _OPENERS + _BE_TAILS + _INTRANSITIVE_TAILS for w in o if w[0] != "{"]
    words += _template_words(_IOI_TEMPLATES + _TITLE_SENTENCES + _NEUTRAL_BIO_SENTENCES + _FILLER)
    words += _template_words([s for group in _BIO_SENTENCES.values() for s in group])
    return list(dict.fromkeys(words))


# --------------------------------------------------------------------------------------------
# Agreement grammar
# --------------------------------------------------------------------------------------------

_Rand = Callable[[], float]
_N_ANIMATE = len(NOUNS)
_ALL_NOUNS = NOUNS + THINGS
_OPPOSITE_ATTRACTOR = 0.6  # probability that an attractor has the other number
_CORPUS_DEPTHS = (0, 0, 1, 1, 1, 2, 2, 2)  # subject nesting depth, sampled uniformly from these


def _pick(r: _Rand, seq: Sequence):
    return seq[int(r() * len(seq))]


def _attractor_number(r: _Rand, plural: int) -> int:
    return 1 - plural if r() < _OPPOSITE_ATTRACTOR else plural


def _noun_phrase(
    r: _Rand,
    out: list[str],
    depth: int,
    plural: int,
    *,
    animate: bool = True,
    lemma: int | None = None,
    subject_rc: bool = True,
) -> int:
    """Append a noun phrase after its determiner; return the head's index into ``_ALL_NOUNS``.

    ``depth`` is the exact number of nested modifiers, i.e. of nouns that follow the head inside
    the phrase. ``subject_rc=False`` keeps the head's own modifier from being a subject relative
    clause, whose verb would agree with the head.
    """
    x = r()
    if x < 0.2:
        out.append(_pick(r, _ADJECTIVES))
    elif x < 0.32 and animate:
        out.append(_pick(r, _COMPOUNDS))
    if lemma is None:
        lemma = int(r() * _N_ANIMATE) if animate else _N_ANIMATE + int(r() * len(THINGS))
    out.append(_ALL_NOUNS[lemma][plural])
    if depth == 0:
        return lemma
    x = r()
    if x < 0.5 or not animate and x < 0.7:  # prepositional phrase
        out.append(_pick(r, PREPOSITIONS))
        out.append("the")
        _noun_phrase(r, out, depth - 1, _attractor_number(r, plural), animate=r() < 0.7)
    elif x < 0.8 or not subject_rc or not animate:  # object relative clause
        out.append("that")
        out.append("the")
        inner_plural = _attractor_number(r, plural)
        inner = _noun_phrase(r, out, depth - 1, inner_plural)
        out.append(VERBS[_pick(r, _ALLOWED_TRANSITIVE[inner])][inner_plural])
    else:  # subject relative clause: the verb agrees with this head
        out.append("that")
        out.append(VERBS[_pick(r, _ALLOWED_TRANSITIVE[lemma])][plural])
        out.append("the")
        _noun_phrase(r, out, depth - 1, _attractor_number(r, plural), animate=r() < 0.7)
    return lemma


def _fill_slot(r: _Rand, word: str) -> str:
    return _pick(r, _SLOT_WORDS[word[1:-1]]) if word[0] == "{" else word


def _verb_tail(r: _Rand, out: list[str], verb: int) -> None:
    """Append what follows the main verb: a complement, an object or an adverbial."""
    if verb < 2:  # is/are, was/were
        x = r()
        if x < 0.5:
            out.append(_pick(r, _ADJECTIVES))
        elif x < 0.6:
            out.append("very")
            out.append(_pick(r, _ADJECTIVES))
        else:
            out.extend(_fill_slot(r, w) for w in _pick(r, _BE_TAILS))
    elif verb == 2:  # has/have
        x = r()
        if x < 0.6:
            out.append("a")
            out.append(_pick(r, _OBJECTS))
        else:
            out.append("two" if x < 0.8 else "many")
            out.append(_pick(r, THINGS)[1])
    elif verb < _FIRST_TRANSITIVE:
        out.extend(_fill_slot(r, w) for w in _pick(r, _INTRANSITIVE_TAILS))
    else:
        out.append("the")
        animate = r() < 0.6
        _noun_phrase(r, out, int(r() < 0.25), int(r() < 0.5), animate=animate, subject_rc=False)


def _agreement_sentence(r: _Rand, out: list[str]) -> None:
    if r() < 0.8:
        out.append("The")
    else:
        out.extend(_pick(r, _OPENERS))
        out.append("the")
    plural = int(r() < 0.5)
    lemma = _noun_phrase(r, out, _pick(r, _CORPUS_DEPTHS), plural)
    verb = _pick(r, _ALLOWED[lemma])
    out.append(VERBS[verb][plural])
    _verb_tail(r, out, verb)
    out.append(".")


# --------------------------------------------------------------------------------------------
# Other families
# --------------------------------------------------------------------------------------------


def _ioi_words(template: int, a: str, b: str, s: str, place: str, obj: str) -> list[str]:
    slots = {"{A}": a, "{B}": b, "{S}": s, "{place}": place, "{obj}": obj}
    return [slots.get(w, w) for w in _IOI_TEMPLATES[template].split()]


def _ioi_sentence(r: _Rand, out: list[str]) -> None:
    a = _pick(r, NAMES)
    b = _pick(r, NAMES)
    while b == a:
        b = _pick(r, NAMES)
    s, io = (b, a) if r() < 0.5 else (a, b)
    template = int(r() * _IOI_HELD_OUT_TEMPLATE)  # never the held-out template
    out.extend(_ioi_words(template, a, b, s, _pick(r, _PLACES), _pick(r, _OBJECTS)))
    out.append(io)
    out.append(".")


def _bio_words(r: _Rand, profession: str, gender: str, *, title: bool) -> list[str]:
    """A biography: optionally a title sentence, 2–4 profession sentences, 1–2 neutral ones."""
    name = _pick(r, _MALE_NAMES if gender == "male" else _FEMALE_NAMES)
    cap, low, cap_pos, low_pos = _PRONOUNS[gender]
    field = _pick(r, _FIELDS)  # one field per professor
    specific = list(_BIO_SENTENCES[profession])
    sentences = [specific.pop(int(r() * len(specific))) for _ in range(2 + int(r() * 3))]
    neutral = list(_NEUTRAL_BIO_SENTENCES)
    sentences += [neutral.pop(int(r() * len(neutral))) for _ in range(1 + int(r() * 2))]
    sentences = [sentences[0], *sorted(sentences[1:], key=lambda _: r())]
    if title:
        sentences.insert(0, _pick(r, _TITLE_SENTENCES))
    words: list[str] = []
    for i, sentence in enumerate(sentences):
        for w in sentence.split():
            if w == "{S}":
                # the name opens the bio and sometimes recurs; the last sentence uses a pronoun
                w = name if i == 0 or (i < len(sentences) - 1 and r() < 0.15) else cap
            elif w == "{Name}":
                w = name
            elif w == "{title}":
                w = profession
            elif w == "{field}":
                w = field
            elif w == "{s}":
                w = low
            elif w == "{P}":
                w = cap_pos
            elif w == "{p}":
                w = low_pos
            elif w[0] == "{":
                w = _pick(r, _SLOT_WORDS[w[1:-1]])
            words.append(w)
    return words


def _filler_sentence(r: _Rand, out: list[str]) -> None:
    template = _pick(r, _FILLER)
    if template == "{count} .":
        start = int(r() * 8)
        run = _NUMBERS[start : start + 3 + int(r() * 4)]
        out.extend(w for n in run for w in (n, ","))
        out[-1] = "."
        return
    out.extend(_fill_slot(r, w) for w in template.split())


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


def corpus(n_docs: int, *, seed: int, doc_len: int = 128) -> list[str]:
    """Training documents of exactly ``doc_len`` word tokens each, mixing all four families.

    Sentences follow one another, so agreement, IOI and biography sentences start at varying
    offsets; about a third of the documents start inside a sentence, and the last sentence is
    cut. Held-out (noun, verb) combinations, nesting deeper than two and the held-out IOI
    template never occur. Biographies carry their profession title half of the time.
    """
    rng = random.Random(f"corpus-{seed}")
    r = rng.random
    docs = []
    for _ in range(n_docs):
        out: list[str] = []
        skip = 0
        if r() < 0.33:
            _agreement_sentence(r, out)
            skip = int(r() * len(out))
        while len(out) < doc_len + skip:
            x = r()
            if x < 0.5:
                _agreement_sentence(r, out)
            elif x < 0.64:
                _ioi_sentence(r, out)
            elif x < 0.74:
                gender = "male" if r() < 0.5 else "female"
                profession = PROFESSIONS[int(r() < 0.5)]
                out += _bio_words(r, profession, gender, title=r() < 0.5)
            else:
                _filler_sentence(r, out)
        docs.append(" ".join(out[skip : skip + doc_len]))
    return docs


# --------------------------------------------------------------------------------------------
# Task files
# --------------------------------------------------------------------------------------------

SvaTemplate = Literal["simple", "within_rc", "rc", "nounpp"]
Split = Literal["train", "test", "generalisation"]
_NUMBER_NAMES = ("singular", "plural")


def _split_of(key: str) -> str:
    """Assign an item to ``train`` or ``test`` by a hash, so the two never share an item."""
    return "test" if zlib.crc32(key.encode()) % 4 == 0 else "train"


def _pair_row(clean: list[str], patch: list[str], clean_answer: str, patch_answer: str, case: str):
    return {
        "clean_prefix": " ".join(clean),
        "patch_prefix": " ".join(patch),
        "clean_answer": " " + clean_answer,
        "patch_answer": " " + patch_answer,
        "case": case,
    }


def _collect(n: int, split: str, make: Callable[[int], dict]) -> list[dict]:
    """Call ``make(i)`` until ``n`` rows of the wanted split; avoid duplicates where possible."""
    rows: list[dict] = []
    seen: set[tuple[str, str]] = set()
    tries = 0
    while len(rows) < n:
        row = make(len(rows))
        key = (row["clean_prefix"] + row["clean_answer"], row["patch_prefix"] + row["patch_answer"])
        tries += 1
        if split != "generalisation" and _split_of("|".join(sorted(key))) != split:
            continue
        if key in seen and tries < 50 * (n + 10):
            continue
        seen.add(key)
        rows.append(row)
    return rows


def _pick_combination(r: _Rand, split: str, *, transitive: bool) -> tuple[int, int]:
    """A (noun, verb) index pair: held out for ``generalisation``, allowed otherwise."""
    if split == "generalisation":
        return _pick(r, _HELD_TRANSITIVE if transitive else _HELD_LIST)
    noun = int(r() * _N_ANIMATE)
    return noun, _pick(r, (_ALLOWED_TRANSITIVE if transitive else _ALLOWED)[noun])


def _check_split(split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")


def sva_pairs(template: SvaTemplate, n: int, *, split: Split, seed: int) -> list[dict]:
    """Subject–verb agreement pairs in the four templates of Sparse Feature Circuits.

    Templates (N = animate noun, X = noun or thing, V = agreeing verb, Vt = transitive verb):

    * ``simple``: "The N" → V
    * ``within_rc``: "The N that the N" → Vt agreeing with the second noun
    * ``rc``: "The N that the N Vt" → V agreeing with the first noun
    * ``nounpp``: "The N prep the X" → V agreeing with the first noun

    Clean and patch differ only in the number of the noun the answer agrees with, so their
    prefixes have equal token length; every prefix in one file has the same length.
    ``case`` is "<subject number>_<other noun number>" (just the subject number for
    ``simple``), where for ``within_rc`` the subject is the first noun as in SFC.

    Splits: ``train`` and ``test`` use training combinations and never share a row;
    ``generalisation`` uses only held-out (noun, verb) combinations, and for ``rc`` and
    ``nounpp`` nests three modifiers deep ("The N prep the X prep the X prep the X", "The N that
    the N prep the X prep the X Vt"), which the corpus never does.
    """
    _check_split(split, ("train", "test", "generalisation"))
    if template not in ("simple", "within_rc", "rc", "nounpp"):
        raise ValueError(f"unknown template {template!r}")
    rng = random.Random(f"sva-{template}-{split}-{seed}")
    r = rng.random
    general = split == "generalisation"

    def noun_words(noun: int, number: int) -> str:
        return _ALL_NOUNS[noun][number]

    def pp_chain(subject_number: int, length: int) -> tuple[list[str], int]:
        words: list[str] = []
        number = subject_number
        for _ in range(length):
            number = _attractor_number(r, subject_number)
            thing = r() < 0.3
            noun = _N_ANIMATE + int(r() * len(THINGS)) if thing else int(r() * _N_ANIMATE)
            words += [_pick(r, PREPOSITIONS), "the", noun_words(noun, number)]
        return words, number

    def make(i: int) -> dict:
        if template == "simple":
            plural = i % 2
            noun, verb = _pick_combination(r, split, transitive=False)
            clean = ["The", noun_words(noun, plural)]
            patch = ["The", noun_words(noun, 1 - plural)]
            return _pair_row(clean, patch, VERBS[verb][plural], VERBS[verb][1 - plural],
                             _NUMBER_NAMES[plural])  # fmt: skip
        plural, other = (i // 2) % 2, i % 2
        case = f"{_NUMBER_NAMES[plural]}_{_NUMBER_NAMES[other]}"
        if template == "within_rc":
            inner, verb = _pick_combination(r, split, transitive=True)
            head = noun_words(int(r() * _N_ANIMATE), plural)
            clean = ["The", head, "that", "the", noun_words(inner, other)]
            patch = ["The", head, "that", "the", noun_words(inner, 1 - other)]
            return _pair_row(clean, patch, VERBS[verb][other], VERBS[verb][1 - other], case)
        noun, verb = _pick_combination(r, split, transitive=False)
        if template == "nounpp":
            middle, last = pp_chain(plural, 3 if general else 1)
            if last != other:  # force the case: flip the nearest attractor
                middle[-1] = _ALL_NOUNS[_noun_index(middle[-1])][other]
        else:
            inner = int(r() * _N_ANIMATE)
            chain, _ = pp_chain(other, 2 if general else 0)
            inner_verb = _pick(r, _ALLOWED_TRANSITIVE[inner])
            middle = ["that", "the", noun_words(inner, other), *chain, VERBS[inner_verb][other]]
        clean = ["The", noun_words(noun, plural), *middle]
        patch = ["The", noun_words(noun, 1 - plural), *middle]
        return _pair_row(clean, patch, VERBS[verb][plural], VERBS[verb][1 - plural], case)

    rows = _collect(n, split, make)
    rng.shuffle(rows)
    return rows


_NOUN_INDEX = {w: i for i, pair in enumerate(_ALL_NOUNS) for w in pair}


def _noun_index(word: str) -> int:
    return _NOUN_INDEX[word]


def sva_hard_pairs(n: int, *, split: Split, seed: int) -> list[dict]:
    """Harder agreement pairs: context sentences, then a nested subject, then the verb.

    The prefix is 1–3 corpus-like sentences followed by an agreement sentence whose subject
    (optionally with an adjective or compound modifier) carries a chain of prepositional phrases
    and object relative clauses, two modifiers deep at most for ``train``/``test`` and exactly
    three for ``generalisation`` (which also uses only held-out combinations). Clean and patch
    differ only in the subject's head noun, so they have equal length within a pair; lengths
    vary across pairs, so use position-summing aggregation. ``case`` is "<subject
    number>_<number of the last noun before the verb>".
    """
    _check_split(split, ("train", "test", "generalisation"))
    rng = random.Random(f"sva-hard-{split}-{seed}")
    r = rng.random

    def make(i: int) -> dict:
        context: list[str] = []
        for _ in range(1 + int(r() * 3)):
            x = r()
            if x < 0.4:
                _agreement_sentence(r, context)
            elif x < 0.6:
                _ioi_sentence(r, context)
            else:
                _filler_sentence(r, context)
        if r() < 0.7:
            context.append("The")
        else:
            context.extend(_pick(r, _OPENERS))
            context.append("the")
        plural = i % 2
        noun, verb = _pick_combination(r, split, transitive=False)
        depth = 3 if split == "generalisation" else 1 + int(r() < 0.5)
        start = len(context)
        clean = list(context)
        _noun_phrase(r, clean, depth, plural, lemma=noun, subject_rc=False)
        head = next(j for j in range(start, len(clean)) if clean[j] in _NOUN_INDEX)
        patch = list(clean)
        patch[head] = NOUNS[noun][1 - plural]
        last = next(w for w in reversed(clean) if w in _NOUN_INDEX)
        case = f"{_NUMBER_NAMES[plural]}_{_NUMBER_NAMES[_ALL_NOUNS[_noun_index(last)].index(last)]}"
        return _pair_row(clean, patch, VERBS[verb][plural], VERBS[verb][1 - plural], case)

    return _collect(n, split, make)


def ioi_pairs(n: int, *, split: Split, seed: int) -> list[dict]:
    """Indirect-object identification pairs, all prefixes 14 tokens long.

    Clean: "When Mary and John went to the store , John gave a drink to" → " Mary". Patch
    repeats the other name ("…, Mary gave a drink to") → " John". ``case`` is "ABBA" when the
    indirect object is named first, else "BABA". ``train`` and ``test`` use the corpus templates
    and never share a row; ``generalisation`` uses the template held out of the corpus.
    """
    _check_split(split, ("train", "test", "generalisation"))
    rng = random.Random(f"ioi-{split}-{seed}")
    r = rng.random

    def make(i: int) -> dict:
        a = _pick(r, NAMES)
        b = _pick(r, NAMES)
        while b == a:
            b = _pick(r, NAMES)
        if split == "generalisation":
            template = _IOI_HELD_OUT_TEMPLATE
        else:
            template = int(r() * _IOI_HELD_OUT_TEMPLATE)
        place, obj = _pick(r, _PLACES), _pick(r, _OBJECTS)
        abba = i % 2 == 0
        s, io = (b, a) if abba else (a, b)
        clean = _ioi_words(template, a, b, s, place, obj)
        patch = _ioi_words(template, a, b, io, place, obj)
        return _pair_row(clean, patch, io, s, "ABBA" if abba else "BABA")

    rows = _collect(n, split, make)
    rng.shuffle(rows)
    return rows


# Weak-cue biographies (task files only, never in the corpus): one profession sentence among
# neutral ones, with the name and a pronoun in every sentence.
_NAMED_NEUTRAL = tuple(t for t in _NEUTRAL_BIO_SENTENCES if t.startswith("{S}"))


def _weak_bio_words(r: _Rand, profession: str, gender: str) -> list[str]:
    """A neutral sentence opened by the name, then 0–1 neutral and 1 profession sentence."""
    name = _pick(r, _MALE_NAMES if gender == "male" else _FEMALE_NAMES)
    cap, low, cap_pos, low_pos = _PRONOUNS[gender]
    first = _pick(r, _NAMED_NEUTRAL)
    sentences = [_pick(r, _BIO_SENTENCES[profession])]
    if r() < 0.5:
        others = [t for t in _NEUTRAL_BIO_SENTENCES if t != first]
        sentences.insert(int(r() * 2), _pick(r, others))
    slots = {"{S}": cap, "{s}": low, "{P}": cap_pos, "{p}": low_pos}
    words: list[str] = []
    for i, sentence in enumerate([first, *sentences]):
        for w in sentence.split():
            if w == "{S}" and i == 0:
                w = name
            elif w in slots:
                w = slots[w]
            elif w[0] == "{":
                w = _pick(r, _SLOT_WORDS[w[1:-1]])
            words.append(w)
    return words


def bios(
    n: int,
    *,
    split: Literal["ambiguous", "balanced"],
    seed: int,
    cues: Literal["plain", "weak"] = "plain",
) -> list[dict]:
    """Biographies without the profession title: ``{"text", "profession", "gender"}``.

    ``ambiguous``: profession ≡ gender (professors male, nurses female), half each.
    ``balanced``: the four (profession, gender) groups in turn, so equally often (exactly when
    ``n`` is a multiple of 4). Order is shuffled.

    ``cues="plain"``: corpus-like bios, 2–4 sentences in the profession's vocabulary and 1–2
    neutral ones, so profession is stated many times. ``cues="weak"``: 2–3 sentences, only one
    of them in the profession's vocabulary; the name opens the bio and a pronoun is in every
    other sentence, so gender is stated in every sentence and profession in one. Profession is
    still always recoverable from the text. The shipped task files use ``"weak"``.
    """
    _check_split(split, ("ambiguous", "balanced"))
    if cues not in ("plain", "weak"):
        raise ValueError(f"cues must be 'plain' or 'weak', got {cues!r}")
    rng = random.Random(f"bios-{split}-{seed}")
    r = rng.random
    if split == "ambiguous":
        groups = [("professor", "male"), ("nurse", "female")]
    else:
        groups = [(p, g) for p in PROFESSIONS for g in ("male", "female")]
    rows = []
    for i in range(n):
        profession, gender = groups[i % len(groups)]
        if cues == "weak":
            words = _weak_bio_words(r, profession, gender)
        else:
            words = _bio_words(r, profession, gender, title=False)
        rows.append({"text": " ".join(words), "profession": profession, "gender": gender})
    rng.shuffle(rows)
    return rows

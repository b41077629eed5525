"""Build the English prompt-pair tasks shipped in ``circuits/data/english/``.

Five tasks in Sparse Feature Circuits' JSONL schema, each with a train and a test split:

    en-sva-simple     "The author"                      -> " is"    patch "The authors"
    en-sva-within-rc  "The author that the guards"      -> " like"  patch "... that the guard"
    en-sva-rc         "The author that the guards like" -> " is"    patch "The authors that ..."
    en-sva-nounpp     "The author near the guards"      -> " is"    patch "The authors near ..."
    en-ioi            "When Mary and John went to the store, John gave a drink to" -> " Mary"
                      patch: the second mention of the subject becomes the other name
                      ("..., Mary gave a drink to" -> " John")

The subject-verb agreement templates are SFC's (from Finlayson et al. 2021): the patch prompt
swaps the number of the noun the verb agrees with (the main subject; in ``within-rc`` the
relative clause's subject), and the answers are that verb in the singular and the plural. The IOI
templates follow Wang et al. 2022; ``case`` is ``ABBA`` or ``BABA`` for the clean prompt, and
``{first noun}_{second noun}`` numbers (or the subject's number) for agreement.

Steps:

1. Load the tokenizer (SmolLM2-135M's by default, via ``circuits.smollm2.model_dir``).
2. Keep the words that fit it: nouns whose singular and plural have the same number of tokens,
   answer verbs whose two forms are one token each with a leading space, names that are one
   token with a leading space. The manifest lists every dropped word.
3. Shuffle nouns and names with the seed and split them into disjoint train and test sets.
4. For each task and split, draw pairs with a seeded RNG, cycling through the cases so they
   are balanced, never repeating a pair.
5. Validate every task with ``circuits.tasks.validate`` and write ``{task}/{split}.jsonl`` and
   ``MANIFEST.json``.

Usage::

    python scripts/build_english_tasks.py                 # writes circuits/data/english/
    python scripts/build_english_tasks.py --check         # rebuilds in memory, compares
    python scripts/build_english_tasks.py --tokenizer DIR --out DIR --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "circuits" / "data" / "english"
SCHEMA_VERSION = 1

#: Animate nouns as (singular, plural).
NOUNS = [
    ("author", "authors"), ("pilot", "pilots"), ("surgeon", "surgeons"), ("farmer", "farmers"),
    ("officer", "officers"), ("teacher", "teachers"), ("doctor", "doctors"),
    ("lawyer", "lawyers"), ("senator", "senators"), ("dancer", "dancers"),
    ("singer", "singers"), ("painter", "painters"), ("writer", "writers"),
    ("student", "students"), ("manager", "managers"), ("guard", "guards"),
    ("minister", "ministers"), ("customer", "customers"), ("driver", "drivers"),
    ("athlete", "athletes"), ("artist", "artists"), ("soldier", "soldiers"), ("nurse", "nurses"),
    ("chef", "chefs"), ("editor", "editors"), ("actor", "actors"), ("judge", "judges"),
    ("clerk", "clerks"), ("player", "players"), ("worker", "workers"), ("parent", "parents"),
    ("child", "children"), ("man", "men"), ("woman", "women"), ("boy", "boys"),
    ("girl", "girls"), ("king", "kings"), ("queen", "queens"), ("friend", "friends"),
    ("neighbor", "neighbors"), ("guest", "guests"), ("visitor", "visitors"),
    ("director", "directors"), ("engineer", "engineers"), ("scientist", "scientists"),
    ("professor", "professors"), ("poet", "poets"), ("hunter", "hunters"),
    ("sailor", "sailors"), ("captain", "captains"), ("tourist", "tourists"),
    ("reporter", "reporters"), ("coach", "coaches"), ("banker", "bankers"),
    ("baker", "bakers"), ("mayor", "mayors"), ("pianist", "pianists"),
]  # fmt: skip

#: Verbs that follow a subject, as (singular, plural).
VERBS = [
    ("is", "are"), ("has", "have"), ("talks", "talk"), ("walks", "walk"), ("writes", "write"),
    ("works", "work"), ("waits", "wait"), ("runs", "run"), ("smiles", "smile"),
    ("sings", "sing"), ("seems", "seem"), ("lives", "live"), ("says", "say"),
    ("thinks", "think"), ("wants", "want"), ("needs", "need"), ("laughs", "laugh"),
    ("swims", "swim"), ("sleeps", "sleep"),
]  # fmt: skip

#: Transitive verbs for the relative clauses ("that the guards like"), as (singular, plural).
RC_VERBS = [
    ("likes", "like"), ("knows", "know"), ("sees", "see"), ("loves", "love"),
    ("trusts", "trust"), ("helps", "help"), ("follows", "follow"), ("thanks", "thank"),
    ("visits", "visit"), ("meets", "meet"), ("praises", "praise"), ("calls", "call"),
    ("watches", "watch"), ("hates", "hate"), ("admires", "admire"),
]  # fmt: skip

PREPOSITIONS = ["near", "behind", "beside", "next to", "with", "without", "from"]

NAMES = [
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Kate", "Lisa", "Mark",
    "Paul", "Sarah", "Anna", "David", "Peter", "Laura", "Jessica", "Emma", "Alice", "Michael",
    "Chris", "Jane", "Susan", "Robert", "William", "Richard", "Thomas", "Daniel", "Andrew",
    "Kevin", "George", "Edward", "Ryan", "Eric", "Adam", "Simon", "Rachel", "Emily", "Grace",
    "Helen", "Linda", "Jack", "Harry", "Henry", "Sam", "Ben", "Lucy", "Rose", "Olivia",
]  # fmt: skip

PLACES = [
    "store", "park", "school", "office", "garden", "restaurant", "hospital", "station", "beach",
    "library", "market", "house", "kitchen", "museum",
]  # fmt: skip

OBJECTS = [
    "drink", "book", "gift", "ball", "ring", "key", "bottle", "bag", "letter", "pen", "flower",
    "cake", "coin", "phone",
]  # fmt: skip

#: IOI templates: {a} and {b} are introduced, {s} is the subject's second mention.
IOI_TEMPLATES = [
    "When {a} and {b} went to the {place}, {s} gave a {object} to",
    "After {a} and {b} went to the {place}, {s} gave a {object} to",
    "When {a} and {b} got a {object} at the {place}, {s} decided to give it to",
    "While {a} and {b} were working at the {place}, {s} gave a {object} to",
    "Then, {a} and {b} went to the {place}. {s} gave a {object} to",
    "When {a} and {b} were at the {place}, {s} handed a {object} to",
    "After the lunch, {a} and {b} went to the {place}, and {s} gave a {object} to",
]

SVA_TASKS = ("en-sva-simple", "en-sva-within-rc", "en-sva-rc", "en-sva-nounpp")
TASKS = (*SVA_TASKS, "en-ioi")
NUMBERS = ("singular", "plural")


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fitting_words(tokenizer) -> tuple[dict[str, list], dict[str, list]]:
    """Step 2: the word lists this tokenizer can use, and the words dropped from each."""
    kept = {
        "nouns": [
            (sg, pl)
            for sg, pl in NOUNS
            if n_tokens(tokenizer, f"The {sg}") == n_tokens(tokenizer, f"The {pl}")
            and n_tokens(tokenizer, f" {sg}") == n_tokens(tokenizer, f" {pl}")
        ],
        "verbs": [pair for pair in VERBS if all(n_tokens(tokenizer, f" {w}") == 1 for w in pair)],
        "rc_verbs": [
            pair for pair in RC_VERBS if all(n_tokens(tokenizer, f" {w}") == 1 for w in pair)
        ],
        "names": [name for name in NAMES if n_tokens(tokenizer, f" {name}") == 1],
    }
    full = {"nouns": NOUNS, "verbs": VERBS, "rc_verbs": RC_VERBS, "names": NAMES}
    dropped = {key: [w for w in full[key] if w not in kept[key]] for key in full}
    return kept, dropped


def split_words(words: list, seed: int, what: str, train_fraction: float = 2 / 3) -> dict:
    """Step 3: a seeded, disjoint train/test split of ``words``."""
    shuffled = list(words)
    random.Random(f"{seed}-{what}").shuffle(shuffled)
    cut = round(len(shuffled) * train_fraction)
    return {"train": shuffled[:cut], "test": shuffled[cut:]}


def sva_pair(task: str, case: str, rng: random.Random, nouns: list, kept: dict) -> dict:
    """One agreement pair of ``task`` whose clean prompt has the numbers in ``case``."""
    numbers = [NUMBERS.index(part) for part in case.split("_")]
    first, second = rng.sample(nouns, 2)
    verb = rng.choice(kept["verbs"])
    subject = first[numbers[0]]
    flipped = first[1 - numbers[0]]
    if task == "en-sva-simple":
        return _record(f"The {subject}", f"The {flipped}", verb, numbers[0], case)
    other = second[numbers[1]]
    if task == "en-sva-within-rc":
        rc_verb = rng.choice(kept["rc_verbs"])
        head = f"The {subject} that the"
        return _record(
            f"{head} {other}", f"{head} {second[1 - numbers[1]]}", rc_verb, numbers[1], case
        )
    if task == "en-sva-rc":
        rc_verb = rng.choice(kept["rc_verbs"])[numbers[1]]
        tail = f"that the {other} {rc_verb}"
        return _record(f"The {subject} {tail}", f"The {flipped} {tail}", verb, numbers[0], case)
    if task == "en-sva-nounpp":
        tail = f"{rng.choice(PREPOSITIONS)} the {other}"
        return _record(f"The {subject} {tail}", f"The {flipped} {tail}", verb, numbers[0], case)
    raise ValueError(f"unknown agreement task {task!r}")


def _record(clean: str, patch: str, verb: tuple[str, str], number: int, case: str) -> dict:
    return {
        "clean_prefix": clean,
        "patch_prefix": patch,
        "clean_answer": f" {verb[number]}",
        "patch_answer": f" {verb[1 - number]}",
        "case": case,
    }


def ioi_pair(case: str, rng: random.Random, names: list) -> dict:
    """One IOI pair; ``case`` ``ABBA`` repeats the second name, ``BABA`` the first."""
    first, second = rng.sample(names, 2)
    template = rng.choice(IOI_TEMPLATES)
    fill = {"a": first, "b": second, "place": rng.choice(PLACES), "object": rng.choice(OBJECTS)}
    subject, indirect = (second, first) if case == "ABBA" else (first, second)
    return {
        "clean_prefix": template.format(s=subject, **fill),
        "patch_prefix": template.format(s=indirect, **fill),
        "clean_answer": f" {indirect}",
        "patch_answer": f" {subject}",
        "case": case,
    }


def build_tasks(
    tokenizer, *, seed: int = 0, sizes: dict[str, int] | None = None, tokenizer_name: str = ""
) -> dict:
    """Steps 2-5 without writing: ``{"tasks": {task: {split: [record, ...]}}, "manifest": ...}``.

    No two pairs of a split share both clean prefix and clean answer (the simple template has
    few prefixes, so one prefix may come with different verbs).

    Raises:
        circuits.tasks.TaskError: when a built task does not validate under ``tokenizer``.
        RuntimeError: when a split's words cannot give enough distinct pairs.
    """
    from circuits.tasks import PromptPair, Task, validate

    sizes = sizes or {"train": 200, "test": 100}
    kept, dropped = fitting_words(tokenizer)
    nouns = split_words(kept["nouns"], seed, "nouns")
    names = split_words(kept["names"], seed, "names")
    built: dict[str, dict[str, list[dict]]] = {}
    for task in TASKS:
        if task == "en-ioi":
            cases = ["ABBA", "BABA"]
        elif task == "en-sva-simple":
            cases = list(NUMBERS)
        else:
            cases = [f"{a}_{b}" for a in NUMBERS for b in NUMBERS]
        built[task] = {}
        for split, size in sizes.items():
            rng = random.Random(f"{seed}-{task}-{split}")
            records: list[dict] = []
            seen: set[tuple[str, str]] = set()
            attempts = 0
            while len(records) < size:
                attempts += 1
                if attempts > 100 * size:
                    raise RuntimeError(f"{task}/{split}: only {len(records)} distinct pairs")
                case = cases[len(records) % len(cases)]
                if task == "en-ioi":
                    record = ioi_pair(case, rng, names[split])
                else:
                    record = sva_pair(task, case, rng, nouns[split], kept)
                key = (record["clean_prefix"], record["clean_answer"])
                if key in seen:
                    continue
                seen.add(key)
                records.append(record)
            pairs = tuple(PromptPair(**record) for record in records)
            validate(Task(task, split, pairs, f"{task}/{split}"), tokenizer)
            built[task][split] = records
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "builder": "scripts/build_english_tasks.py",
        "seed": seed,
        "tokenizer": tokenizer_name,
        "sizes": sizes,
        "words": {
            "train_nouns": [sg for sg, _ in nouns["train"]],
            "test_nouns": [sg for sg, _ in nouns["test"]],
            "train_names": names["train"],
            "test_names": names["test"],
            "verbs": [sg for sg, _ in kept["verbs"]],
            "rc_verbs": [sg for sg, _ in kept["rc_verbs"]],
        },
        "dropped": {
            key: [w if isinstance(w, str) else w[0] for w in words]
            for key, words in dropped.items()
        },
    }
    return {"tasks": built, "manifest": manifest}


def render(built: dict) -> dict[str, str]:
    """The files to write, by path relative to the output directory."""
    files = {
        f"{task}/{split}.jsonl": "".join(json.dumps(record) + "\n" for record in records)
        for task, splits in built["tasks"].items()
        for split, records in splits.items()
    }
    files["MANIFEST.json"] = json.dumps(built["manifest"], indent=2) + "\n"
    return files


def load_tokenizer(source: str):
    """Step 1: ``smollm2-135m`` (converted on first use) or a tokenizer directory."""
    from transformers import AutoTokenizer

    if source == "smollm2-135m":
        from circuits.smollm2 import model_dir

        source = str(model_dir())
    return AutoTokenizer.from_pretrained(source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tokenizer", default="smollm2-135m", help="smollm2-135m or a dir")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=200, help="pairs in each train split")
    parser.add_argument("--test", type=int, default=100, help="pairs in each test split")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files in --out, write nothing"
    )
    args = parser.parse_args(argv)

    tokenizer = load_tokenizer(args.tokenizer)
    built = build_tasks(
        tokenizer,
        seed=args.seed,
        sizes={"train": args.train, "test": args.test},
        tokenizer_name=args.tokenizer,
    )
    files = render(built)
    if args.check:
        differ = [
            name
            for name, text in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text() != text
        ]
        for name in differ:
            print(f"differs: {args.out / name}", file=sys.stderr)
        return 1 if differ else 0
    for name, text in files.items():
        path = args.out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for key, words in built["manifest"]["dropped"].items():
        if words:
            print(f"dropped {key}: {', '.join(words)}")
    print(f"wrote {len(files)} files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Build an English text corpus from WordNet 3.0's glosses, for training dictionaries offline.

WordNet (Princeton University, WordNet 3.0 licence: use, copy and redistribute with its
copyright notice) ships with Debian as ``wordnet-base``; ``apt-get install wordnet-base`` puts
its database in ``/usr/share/wordnet``. Each synset's gloss holds a definition and, for about a
third of them, example sentences in quotes ("the teacher lectures every day").

Steps:

1. Read the gloss of every synset in ``data.noun``, ``data.verb``, ``data.adj`` and
   ``data.adv`` (the text after ``|``).
2. Split it into the definition and the quoted examples; each becomes a sentence with its first
   letter capitalised and a full stop at the end (underscores in lemmas become spaces).
3. Shuffle the sentences with the seed and join consecutive ones into documents of about
   ``--words`` words.
4. Write one document per line (the plain-text corpus `circuits train-dictionaries` reads) and
   print the counts.

Usage::

    python scripts/build_english_corpus.py --out out/wordnet.txt
    circuits train-dictionaries --model smollm2-135m --corpus out/wordnet.txt ...
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")
_QUOTED = re.compile(r'"([^"]+)"')


def glosses(root: Path = WORDNET) -> list[str]:
    """Every synset's gloss, in file order."""
    missing = [p for p in PARTS if not (root / f"data.{p}").exists()]
    if missing:
        raise SystemExit(
            f"no WordNet database in {root} (missing data.{', data.'.join(missing)}); "
            "install it with `apt-get install wordnet-base` or pass --wordnet DIR"
        )
    out = []
    for part in PARTS:
        for line in (root / f"data.{part}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header
                continue
            out.append(line.split("|", 1)[1].strip())
    return out


def sentences(gloss: str) -> list[str]:
    """The definition and the examples of one gloss, each as a sentence."""
    examples = _QUOTED.findall(gloss)
    definition = _QUOTED.sub("", gloss).strip(" ;")
    found = []
    for text in (definition, *examples):
        text = " ".join(text.replace("_", " ").split()).strip(" ;,")
        if len(text.split()) < 3:
            continue
        if text[-1] not in ".!?":
            text += "."
        found.append(text[0].upper() + text[1:])
    return found


def documents(texts: list[str], words: int, seed: int) -> list[str]:
    """Seeded shuffle of ``texts``, joined into documents of about ``words`` words each."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    docs, current, count = [], [], 0
    for text in texts:
        current.append(text)
        count += len(text.split())
        if count >= words:
            docs.append(" ".join(current))
            current, count = [], 0
    if current:
        docs.append(" ".join(current))
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the text file to write")
    parser.add_argument("--wordnet", type=Path, default=WORDNET, help="WordNet's dict folder")
    parser.add_argument("--words", type=int, default=60, help="words per document")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    texts = [s for gloss in glosses(args.wordnet) for s in sentences(gloss)]
    docs = documents(texts, args.words, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(doc + "\n" for doc in docs), encoding="utf-8")
    n_words = sum(len(doc.split()) for doc in docs)
    print(f"{len(texts)} sentences, {len(docs)} documents, {n_words} words -> {args.out}")


if __name__ == "__main__":
    main()

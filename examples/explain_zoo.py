"""Explanations of the zoo's known features, scored against hand-written and shuffled ones.

The zoo's grammar gives three features a known meaning (`circuits.zoo.features`): a gendered
pronoun, the ``that`` of a relative clause, a plural noun. For each, the explainer's own
explanation, a hand-written correct one, and the other two features' correct ones (the shuffled
control) are scored by detection and fuzzing (AUROC) and intervention (accuracy):

    python examples/explain_zoo.py                       # SmolLM2-135M explains and scores
    python examples/explain_zoo.py --scorer http://127.0.0.1:8000/v1 --scorer-model smollm2

A scorer that reads explanations well scores the correct row above the shuffled one.
"""

from __future__ import annotations

import argparse
import json
import time

from circuits import load_model
from circuits.chat import open_chat
from circuits.dictionaries import load_dictionaries
from circuits.explain import explain
from circuits.zoo.features import known_features
from circuits.zoo.language import corpus

CORRECT = {
    "pronoun": "the pronouns he, she, his and her",
    "that": "the word that, which starts a relative clause",
    "plural": "plural nouns such as teachers, doctors and dogs",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--explainer", default="smollm2-135m")
    parser.add_argument("--explainer-model", default="default")
    parser.add_argument("--scorer", help="default: the explainer")
    parser.add_argument("--scorer-model", default="default")
    parser.add_argument("--docs", type=int, default=256)
    parser.add_argument("--json", metavar="FILE", help="also write every record here")
    args = parser.parse_args()

    model = load_model("zoo")
    dictionaries = load_dictionaries(model, "zoo")
    docs = corpus(args.docs, seed=1, doc_len=64)
    known = known_features(model, dictionaries, docs[:64])
    nodes = {name: node for name, (node, _) in known.items()}
    explainer = open_chat(args.explainer, model_name=args.explainer_model)
    scorer = open_chat(args.scorer, model_name=args.scorer_model) if args.scorer else explainer

    start = time.perf_counter()
    run = dict(scorer=scorer, cache_dir=None)
    own = explain(model, dictionaries, list(nodes.values()), docs, explainer, **run)
    given = {
        name: explain(
            model,
            dictionaries,
            list(nodes.values()),
            docs,
            explainer,
            explanations=dict.fromkeys(nodes.values(), text),
            **run,
        )  # fmt: skip
        for name, text in CORRECT.items()
    }
    seconds = time.perf_counter() - start

    def cells(scores: list[dict]) -> str:
        mean = lambda key, field: sum(s[key][field] for s in scores) / len(scores)  # noqa: E731
        return (
            f"{mean('detection', 'auroc'):.2f} | {mean('fuzzing', 'auroc'):.2f} | "
            f"{mean('intervention', 'accuracy'):.2f}"
        )

    print(f"explainer {explainer.describe()}, scorer {scorer.describe()}; {seconds:.0f} s\n")
    print("| feature | F1 | explanation | text | detection AUROC | fuzzing AUROC | intervention |")
    print("|---|---:|---|---|---:|---:|---:|")
    for i, (name, node) in enumerate(nodes.items()):
        label = f"{name} (`{node}`) | {known[name][1]:.2f}"
        print(f"| {label} | explainer's | {own[i]['Annotation']!r} | {cells([own[i]['scores']])} |")
        print(f"| | | correct | {CORRECT[name]!r} | {cells([given[name][i]['scores']])} |")
        others = [given[other][i]["scores"] for other in CORRECT if other != name]
        print(f"| | | shuffled (mean of 2) | the others' correct | {cells(others)} |")
    if args.json:
        records = {"own": own, **given}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()

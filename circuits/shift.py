"""SHIFT: remove a classifier's dependence on a spurious attribute by ablating features.

Sparse Feature Circuits (Marks et al., ICLR 2025), Bias in Bios: a linear probe that reads a
model's residual stream is trained where the label (profession) and a spurious attribute (gender)
always agree, so it may rely on either. SHIFT finds the dictionary features the probe depends on,
removes those that encode the spurious attribute, and checks on data where the two disagree.

Steps, in the order the code follows:

1. **Probe.** Logistic regression on ``resid_{layer}`` activations mean-pooled over each text's
   real tokens, trained on a seeded train part of the *ambiguous* texts (label == attribute
   pairing), full batch (L-BFGS, float64), loss = mean binary cross-entropy + ``l2 / 2 * |w|^2``
   (bias not penalised). Class 1 is the label value that sorts last.
2. **Circuit for the probe.** Node effects of every feature and error node at the submodules up to
   and including ``resid_{layer}`` on the metric m = probe logit, with zero-ablation as the
   counterfactual (delta = -clean), by attribution patching (AtP: one forward + one backward per
   batch, gradients passed straight through the dictionaries as in `attribution.splice`), summed
   over positions and averaged over texts (aggregation "sum").
3. **Selection** of the spurious features among the probe's circuit, the ``top`` feature nodes
   by |effect| (error nodes are never selected; they are kept). By default without
   disambiguating data: the user names the spurious concept in words (``spurious="gender: he she
   his her"``) and the concept-token judge (`circuits.concepts`) reads each candidate's
   dashboard over ambiguous training texts (their words, no label) and selects the features
   whose top-activating contexts mostly peak on the concept's tokens. No balanced text is read
   before the selection is made. Or ``selection="labels"``, the rule that reads held-out
   disambiguating labels: select a feature when its text-level activation (mean over real
   tokens) separates the attribute groups by at least ``threshold`` and better than it
   separates the label groups, separation being ``|2 * AUC - 1|`` (0: no information, 1: a
   perfect ranking) on the *selection half* of the balanced texts, where label and attribute
   are independent (a feature that fires for "nurse" and for "she" alike separates both, and is
   kept). Or a file of node names.
4. **Ablate** the selected features (zero-ablation at every position, error terms kept, through
   `circuits.edit.edited`) and evaluate the same probe; then retrain the probe on the ambiguous
   train part with the ablation active.
5. **Report** on the *evaluation half* of the balanced texts, per row: label accuracy, attribute
   accuracy and worst-group accuracy. Attribute ("gender") accuracy follows the paper: the
   accuracy of the label probe's predictions at predicting the attribute, each attribute value
   mapped to the label value it always comes with in the ambiguous texts (e.g. male -> professor);
   0.5 means the probe's output no longer tracks the attribute. Worst-group accuracy is the lowest
   label accuracy over the (label, attribute) groups. Rows: Original; Random (as many random
   features of the same submodules, seeded) and Random (circuit) (as many of the ``top``
   candidates); SHIFT; SHIFT + retrain; with a named concept, two controls: Embed features
   (judge) (as many ``embed`` features chosen by the same judge, and retrained) and Concept tokens
   deleted (the concept's words deleted from every text, nothing ablated; the probe as trained,
   and retrained on the ambiguous texts with the words deleted); Feature skyline (the same
   number of features, from all features of those submodules, that best separate the attribute
   on the balanced selection half, by the same ``|2 * AUC - 1|``); Neuron skyline (the same with
   neurons); Oracle (a probe trained on the balanced selection half, nothing ablated).

The balanced texts are split once (seeded) into the selection half (used by the label rule,
the skylines and the oracle) and the evaluation half (used for every number in the table), so no
reported number is measured on texts that chose the ablation.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from circuits.concepts import Concept, Verdict, delete_concept_tokens, judge_concept_tokens
from circuits.dictionaries import Dictionary
from circuits.dictionaries.base import Identity
from circuits.edit import Ablate, edited
from circuits.graph import node_name, parse_node_name
from circuits.models import Model
from circuits.probes import (
    Probe,
    _binary,
    _classes,
    auc,
    pooled_activations,
    pooled_features,
    probe_effects,
    split_texts,
    train_probe,
)
from circuits.tasks import LabelledText

__all__ = [
    "Candidate",
    "Probe",
    "ShiftReport",
    "Row",
    "auc",
    "evaluate",
    "pooled_activations",
    "pooled_features",
    "probe_effects",
    "select_spurious",
    "shift",
    "split_texts",
    "train_probe",
    "worst_group_accuracy",
]

SCHEMA_VERSION = 1


# ------------------------------------------------------------------------------------------------
# 3. Selection


def _separation(scores: Tensor, labels: Tensor) -> Tensor:
    """``|2 * AUC - 1|`` per column: 0 no information, 1 a perfect ranking either way."""
    return (2 * auc(scores, labels) - 1).abs()


@dataclass(frozen=True)
class Candidate:
    """A feature the automatic rule looked at.

    Attributes:
        node: Its name.
        effect: Its effect on the probe logit.
        attribute_separation: ``|2 * AUC - 1|`` for the attribute groups.
        label_separation: The same for the label groups.
        selected: Whether the rule selected it.
    """

    node: str
    effect: float
    attribute_separation: float
    label_separation: float
    selected: bool


def select_spurious(
    effects: Mapping[str, float],
    features: Mapping[str, Tensor],
    label: Tensor,
    attribute: Tensor,
    *,
    top: int,
    threshold: float,
) -> tuple[list[str], list[Candidate]]:
    """The automatic rule (module docstring, step 3).

    Args:
        effects: ``{node: effect}`` (error nodes are skipped).
        features: ``{submodule: [texts, width]}`` pooled feature activations on labelled texts.
        label, attribute: ``[texts]`` 0/1 labels of those texts.
        top: How many feature nodes, by |effect|, are candidates.
        threshold: Least attribute separation for a selection.

    Returns:
        The selected node names and every candidate with its numbers.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    ranked = sorted(
        (n for n in effects if parse_node_name(n).index is not None),
        key=lambda n: -abs(effects[n]),
    )[:top]
    if not ranked:
        return [], []
    columns = torch.stack(
        [features[parse_node_name(n).submodule][:, parse_node_name(n).index] for n in ranked], 1
    )  # [texts, top]
    attr_sep = _separation(columns, attribute)
    label_sep = _separation(columns, label)
    candidates = []
    for i, n in enumerate(ranked):
        a, lab = float(attr_sep[i]), float(label_sep[i])
        candidates.append(Candidate(n, effects[n], a, lab, a >= threshold and a > lab))
    return [c.node for c in candidates if c.selected], candidates


def _best_separating(features: Mapping[str, Tensor], attribute: Tensor, k: int) -> list[str]:
    """The ``k`` features (over all submodules) that best separate ``attribute``."""
    names, scores = [], []
    for sub, acts in features.items():
        scores.append(_separation(acts, attribute))
        names.extend(node_name(sub, i) for i in range(acts.shape[1]))
    best = torch.cat(scores).topk(min(k, len(names))).indices.tolist()
    return [names[i] for i in best]


def _check_nodes(
    model: Model, dictionaries: Mapping[str, Dictionary], nodes: Sequence[str], allowed: set[str]
) -> list[str]:
    nodes = list(dict.fromkeys(nodes))
    if not nodes:
        raise ValueError(
            "no features to ablate: the selection is empty (give node names, or lower "
            "threshold / raise top for the automatic rule)"
        )
    for n in nodes:
        node = parse_node_name(n)  # raises for a malformed name
        model.submodule(node.submodule)  # raises naming the valid submodules
        if node.index is None or node.position is not None:
            raise ValueError(f"SHIFT ablates features at every position; {n!r} is not one")
        if node.submodule not in allowed:
            raise ValueError(
                f"node {n!r}: submodule {node.submodule} is not attributed (submodules with a "
                f"dictionary up to the probe's layer: {', '.join(sorted(allowed))})"
            )
        if node.index >= dictionaries[node.submodule].width:
            raise ValueError(
                f"node {n!r}: index beyond the {dictionaries[node.submodule].width}-wide "
                f"dictionary of {node.submodule}"
            )
    return nodes


# ------------------------------------------------------------------------------------------------
# 5. Report


def worst_group_accuracy(correct: Tensor, groups: Sequence[Any]) -> float:
    """The lowest accuracy over groups: ``correct [n]`` bools, ``groups`` one key per row."""
    if len(groups) != correct.shape[0] or not len(groups):
        raise ValueError("worst_group_accuracy needs one group per prediction, at least one")
    by_group: dict[Any, list[bool]] = {}
    for ok, g in zip(correct.tolist(), groups, strict=True):
        by_group.setdefault(g, []).append(bool(ok))
    return min(sum(v) / len(v) for v in by_group.values())


@dataclass(frozen=True)
class Row:
    """One line of the table (accuracies in [0, 1], on the balanced evaluation half)."""

    name: str
    label_accuracy: float
    attribute_accuracy: float
    worst_group_accuracy: float
    ablated: int


def evaluate(
    name: str, probe: Probe, x: Tensor, label: Tensor, attribute: Tensor, ablated: int = 0
) -> Row:
    """A `Row`: ``x [n, d_model]``, ``label``/``attribute`` ``[n]`` 0/1 with attribute value 1
    paired with label 1 (so attribute accuracy is ``mean(prediction == attribute)``)."""
    pred = probe.predict(x.double())
    label, attribute = label.long(), attribute.long()
    groups = list(zip(label.tolist(), attribute.tolist(), strict=True))
    return Row(
        name,
        float((pred == label).double().mean()),
        float((pred == attribute).double().mean()),
        worst_group_accuracy(pred == label, groups),
        ablated,
    )


@dataclass(frozen=True, eq=False)
class ShiftReport:
    """What `shift` returns.

    Attributes:
        rows: Original, Random, Random (circuit), SHIFT, SHIFT + retrain, the concept controls
            (Embed features (judge) and + retrain, Concept tokens deleted and + retrain), Feature
            skyline, Neuron skyline, Oracle.
        selected: The ablated feature nodes.
        candidates: The label rule's candidates (empty unless ``selection="labels"``).
        settings: Layer, label/attribute names and values, seed, sizes, method.
        ambiguous_test_accuracy: The original probe's label accuracy on the ambiguous test part.
        verdicts: The concept-token judge's verdicts on the candidates (empty otherwise).
    """

    rows: list[Row]
    selected: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    ambiguous_test_accuracy: float = float("nan")
    verdicts: list[Verdict] = field(default_factory=list)

    def row(self, name: str) -> Row:
        """The row called ``name`` (StopIteration if there is none)."""
        return next(r for r in self.rows if r.name == name)

    def table(self) -> str:
        """The rows as a markdown table, accuracies in percent."""
        label = self.settings.get("label", "label")
        attribute = self.settings.get("attribute", "attribute")
        lines = [
            f"| | ablated | {label} acc ↑ | {attribute} acc ↓ | worst group ↑ |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.name} | {r.ablated} | {100 * r.label_accuracy:.1f} | "
                f"{100 * r.attribute_accuracy:.1f} | {100 * r.worst_group_accuracy:.1f} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with a ``schema_version``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "settings": self.settings,
            "ambiguous_test_accuracy": self.ambiguous_test_accuracy,
            "selected": self.selected,
            "candidates": [vars(c) for c in self.candidates],
            "verdicts": [vars(v) for v in self.verdicts],
            "rows": [vars(r) for r in self.rows],
        }


# ------------------------------------------------------------------------------------------------
# The pipeline


@contextlib.contextmanager
def _ablated(model: Model, dictionaries: Mapping[str, Dictionary], nodes: Sequence[str]):
    if nodes:
        with edited(model, dictionaries, [Ablate(tuple(nodes), how="zero")]):
            yield
    else:
        yield


def _with_texts(texts: Sequence[LabelledText], new: Sequence[str]) -> list[LabelledText]:
    return [LabelledText(t, dict(old.labels)) for old, t in zip(texts, new, strict=True)]


def _judged(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    nodes: Sequence[str],
    concept: Concept,
    texts: Sequence[LabelledText],
    *,
    share: float,
    promoted_top: int,
    batch_size: int,
) -> list[Verdict]:
    """The concept-token judge's verdicts on ``nodes`` from their dashboards over ``texts``
    (their words only: no label is read)."""
    if not nodes:
        return []
    from viz.dashboard import dashboards

    boards = dashboards(
        model, dictionaries, list(nodes), [t.text for t in texts], batch_size=batch_size
    )
    return judge_concept_tokens(boards, concept, share=share, promoted_top=promoted_top)


def shift(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    ambiguous: Sequence[LabelledText],
    balanced: Sequence[LabelledText],
    *,
    layer: int | None = None,
    label: str = "profession",
    attribute: str = "gender",
    spurious: str | Concept | None = None,
    selection: Literal["concept-tokens", "labels"] = "concept-tokens",
    nodes: Sequence[str] | None = None,
    top: int = 1000,
    share: float = 0.5,
    promoted_top: int = 0,
    n_dashboard: int = 512,
    threshold: float = 0.2,
    l2: float = 1e-3,
    train_fraction: float = 0.8,
    n_attribution: int = 256,
    batch_size: int = 64,
    seed: int = 0,
) -> ShiftReport:
    """Run SHIFT (module docstring, steps 1-5) and measure every row of the table.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``; those up to ``resid_{layer}`` are attributed.
        ambiguous: Texts whose ``label`` and ``attribute`` always pair up (probe training).
        balanced: Texts with all four groups (selection half + evaluation half).
        layer: The probe reads ``resid_{layer}``; None: ``n_layers // 2``.
        label, attribute: Label keys of the texts.
        spurious: The spurious concept in words, ``"gender: he she his her"`` (`Concept.parse`):
            what the concept-token judge looks for, and the tokens the deletion control deletes.
        selection: ``"concept-tokens"`` (the judge reads the candidates' dashboards over
            ambiguous training texts; no balanced text is read before the evaluation) or
            ``"labels"`` (the rule that reads the balanced selection half's attribute and label
            labels: held-out disambiguating data). Ignored when ``nodes`` are given.
        nodes: Feature nodes to ablate, chosen by the user.
        top: Candidates: the feature nodes of largest |effect| (the probe's circuit).
        share: The judge's least share of top contexts peaking on a concept token.
        promoted_top: The judge also calls a feature spurious when a concept token is among its
            this many most promoted tokens (0, the default: peaks only; read through the
            unembedding, an early feature's promoted tokens say little about it).
        n_dashboard: Ambiguous training texts the dashboards are computed on.
        threshold: Least attribute separation ``|2 AUC - 1|`` of the ``"labels"`` rule.
        l2: Probe L2 penalty.
        train_fraction: Ambiguous texts used to train (the rest measure the probe).
        n_attribution: Ambiguous training texts used for the node effects.
        batch_size: Texts per forward.
        seed: Seeds every split and the random ablations.

    Raises:
        ValueError: for an unknown layer or selection, labels that do not pair up, unknown or
            malformed node names, an empty selection, or the concept-token judge without a
            concept.
    """
    if selection not in ("concept-tokens", "labels"):
        raise ValueError(f"selection must be 'concept-tokens' or 'labels', got {selection!r}")
    concept = Concept.parse(spurious) if isinstance(spurious, str) else spurious
    if nodes is None and selection == "concept-tokens" and concept is None:
        raise ValueError(
            "the concept-token judge needs the spurious concept in words: "
            "spurious='gender: he she his her' (--spurious), or selection='labels', or nodes"
        )
    layer = model.n_layers // 2 if layer is None else layer
    readout = f"resid_{layer}"
    model.submodule(readout)  # raises for an unknown layer
    order = [sub.name for sub in model.submodules]
    attributed = [n for n in order[: order.index(readout) + 1] if n in dictionaries]
    label_classes = _classes(ambiguous, label)
    pairing = {t.labels[attribute]: t.labels[label] for t in ambiguous}
    if len(pairing) != 2 or set(pairing.values()) != set(label_classes):
        raise ValueError(f"in the ambiguous texts {attribute} must determine {label}: {pairing}")
    attribute_classes = tuple(sorted(pairing, key=lambda a: label_classes.index(pairing[a])))

    def labels_of(texts: Sequence[LabelledText]) -> tuple[Tensor, Tensor]:
        return _binary(texts, label, label_classes), _binary(texts, attribute, attribute_classes)

    def pooled(texts: Sequence[LabelledText]) -> Tensor:
        return pooled_activations(model, texts, layer, batch_size=batch_size).double()

    train, test = split_texts(ambiguous, train_fraction, seed)
    y_train, _ = labels_of(train)
    y_test, _ = labels_of(test)

    # 1. Probe, on the ambiguous texts.
    probe = train_probe(pooled(train), y_train, l2=l2)
    ambiguous_test = float((probe.predict(pooled(test)) == y_test.long()).double().mean())

    # 2. The probe's circuit: candidates by |effect|.
    effects = probe_effects(
        model, dictionaries, train[:n_attribution], probe, layer, batch_size=batch_size
    )
    ranked = sorted((n for n in effects if parse_node_name(n).index is not None),
                    key=lambda n: -abs(effects[n]))  # fmt: skip
    circuit = ranked[:top]

    # 3. Selection. The judge reads dashboards over ambiguous training texts only, in one pass
    # for the candidates and the embed features of the control.
    candidates: list[Candidate] = []
    verdicts: list[Verdict] = []
    judged: dict[str, Verdict] = {}
    by_judge = nodes is None and selection == "concept-tokens"
    embed_ranked = [n for n in ranked if parse_node_name(n).submodule == "embed"]
    if concept is not None:
        wanted = list(dict.fromkeys([*(circuit if by_judge else []), *embed_ranked]))
        judged = {
            v.node: v
            for v in _judged(
                model, dictionaries, wanted, concept, train[:n_dashboard], share=share,
                promoted_top=promoted_top, batch_size=batch_size,
            )
        }  # fmt: skip
    if by_judge:
        verdicts = [judged[n] for n in circuit]
        nodes = [v.node for v in verdicts if v.about]
    select_half, eval_half = split_texts(balanced, 0.5, seed)
    sel_label, sel_attr = labels_of(select_half)
    sel_features = pooled_features(
        model, dictionaries, select_half, attributed, batch_size=batch_size
    )
    if nodes is None:  # the rule that reads held-out disambiguating labels
        nodes, candidates = select_spurious(
            effects, sel_features, sel_label, sel_attr, top=top, threshold=threshold
        )
    nodes = _check_nodes(model, dictionaries, nodes, set(attributed))
    k = len(nodes)

    # 4. Ablate, evaluate, retrain.
    ev_label, ev_attr = labels_of(eval_half)
    x_eval = pooled(eval_half)

    def rows_for(name: str, dicts: Mapping[str, Dictionary], chosen: list[str], retrain: bool):
        with _ablated(model, dicts, chosen):
            x = pooled(eval_half)
            out = [evaluate(name, probe, x, ev_label, ev_attr, len(chosen))]
            if retrain:
                again = train_probe(pooled(train), y_train, l2=l2)
                out.append(evaluate(name + " + retrain", again, x, ev_label, ev_attr, len(chosen)))
        return out

    rng = random.Random(seed)
    everything = [(n, i) for n in attributed for i in range(dictionaries[n].width)]
    random_nodes = [node_name(n, i) for n, i in rng.sample(everything, k)]
    random_circuit = rng.sample(circuit, min(k, len(circuit)))
    rows = [
        evaluate("Original", probe, x_eval, ev_label, ev_attr),
        *rows_for("Random", dictionaries, random_nodes, False),
        *rows_for("Random (circuit)", dictionaries, random_circuit, False),
        *rows_for("SHIFT", dictionaries, nodes, True),
    ]

    # Controls that need the concept: embed features chosen by the judge, tokens deleted.
    embed_nodes = [n for n in embed_ranked if n in judged and judged[n].about][:k]
    if embed_nodes:
        rows += rows_for("Embed features (judge)", dictionaries, embed_nodes, True)
    if concept is not None:
        deleted_train = _with_texts(train, delete_concept_tokens([t.text for t in train], concept))
        deleted_eval = _with_texts(
            eval_half, delete_concept_tokens([t.text for t in eval_half], concept)
        )
        x_deleted = pooled(deleted_eval)
        again = train_probe(pooled(deleted_train), y_train, l2=l2)
        rows += [
            evaluate("Concept tokens deleted", probe, x_deleted, ev_label, ev_attr),
            evaluate("Concept tokens deleted + retrain", again, x_deleted, ev_label, ev_attr),
        ]

    # 5. Skylines and oracle (they read the balanced selection half's labels).
    skyline = _best_separating(sel_features, sel_attr, k)
    neurons = {n: Identity(model.submodule(n).width) for n in attributed}
    neuron_acts = pooled_features(model, neurons, select_half, attributed, batch_size=batch_size)
    neuron_skyline = _best_separating(neuron_acts, sel_attr, k)
    oracle = train_probe(pooled(select_half), sel_label, l2=l2)
    rows += [
        *rows_for("Feature skyline", dictionaries, skyline, False),
        *rows_for("Neuron skyline", neurons, neuron_skyline, False),
        evaluate("Oracle", oracle, x_eval, ev_label, ev_attr),
    ]
    given = verdicts == [] and candidates == []
    settings = {
        "layer": layer,
        "readout": readout,
        "label": label,
        "label_classes": list(label_classes),
        "attribute": attribute,
        "attribute_classes": list(attribute_classes),
        "selection": "given" if given else selection,
        "spurious": None if concept is None else {"name": concept.name, "tokens": concept.tokens},
        "top": top,
        "share": share,
        "promoted_top": promoted_top,
        "threshold": threshold,
        "l2": l2,
        "seed": seed,
        "method": "atp, zero-ablation, aggregation sum",
        "submodules": attributed,
        "n_train": len(train),
        "n_test": len(test),
        "n_attribution": min(n_attribution, len(train)),
        "n_dashboard": min(n_dashboard, len(train)),
        "n_select": len(select_half),
        "n_eval": len(eval_half),
        "embed_nodes": embed_nodes,
        "feature_skyline": skyline,
        "neuron_skyline": neuron_skyline,
    }
    return ShiftReport(rows, nodes, candidates, settings, ambiguous_test, verdicts)

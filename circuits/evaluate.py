"""Faithfulness and completeness of a circuit, curves over circuit sizes, CPR and CMD.

Definitions (Sparse Feature Circuits, Marks et al., ICLR 2025, and their ``ablation.py``):

- The *evaluated* nodes M are every feature and error node, at every position, of the evaluated
  submodules: those with a dictionary (or the ones named), minus the first
  ``first_layers_intact`` layers (``embed`` counts as before layer 0).
- ``m(S)`` is the metric, averaged over all examples, of a run on the clean prompts where every
  evaluated node *not* in S is ablated (`circuits.ablation.run_ablated`); nodes outside the
  evaluated submodules are never touched. ``m(M)`` is the unablated model, ``m(∅)`` ablates
  every evaluated node.
- faithfulness ``F(C) = (m(C) - m(∅)) / (m(M) - m(∅))`` (1 is ideal);
  completeness ``(m(M \\ C) - m(∅)) / (m(M) - m(∅))`` (0 is ideal).

Circuits whose nodes carry positions (``resid_2/17@5``, aggregation ``"none"``) keep each node
only at its position; circuits without positions keep a node at every position (the reference
thresholds ``[pos, width]`` or ``[width]`` effects and masks the same way).

What the reference does and what this module does by default:

- Metric: the reference evaluates ``logit[clean] - logit[patch]``; the default here is
  ``logit_diff = logit[patch] - logit[clean]`` as in discovery. Both ratios are the same, as
  negating every ``m`` leaves them unchanged.
- Ablation: the reference's "mean" is the mean over the patch prompts of the batch at each
  position (``mean(dim=0)`` of ``[batch, pos, width]``) — ``"position-mean"`` here, the default.
  Here the mean is over the patch prompts of *all* examples, so results do not depend on the
  batch size. ``"mean"`` pools positions too; ``"zero"`` and ``"resample"`` (one reference prompt
  per example, seeded, with replacement; the reference draws within each batch) are available.
  Tasks without patch prompts use the clean prompts as the reference, as the reference does.
- Layers, the *protocol*: the reference script ablates every layer by default
  (``--start_layer -1``); the paper's reported setting leaves the first third of the layers
  intact (below layer 2 of 6 on Pythia-70M, below 8 of 26 on Gemma-2-2B). The default here is
  that setting, ``protocol="sfc"``: ``embed`` and layers ``0 .. n_layers // 3 - 1`` are left
  intact. ``protocol="strict"`` evaluates everything with a dictionary; ``first_layers_intact``
  sets the count directly (the protocol is then called ``"custom"`` unless the count is the
  named protocol's). Every `Evaluation` names its protocol.
- Faithfulness is a ratio of means over examples (mean of m, then the ratio), as the reference
  computes it, not a mean of per-example ratios.
- Error nodes are nodes like the others (the reference's ``handle_errors="default"``).

Curves follow the MIB circuit track (Mueller et al., 2025): circuits of the top ``k`` nodes by
``|effect|``, with ``k = int(fraction * N)`` for ``N`` evaluated nodes and fractions
`MIB_FRACTIONS` by default. `cpr` is the trapezoid area under faithfulness over the fraction
axis (linear), `cmd` the trapezoid area under ``|1 - faithfulness|``; MIB integrates exactly so
over its ten fractions 0.001 ... 1 (its log-axis option computes log x but leaves it unused).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from attribution.batches import PairBatch, TaskLike, pair_batches
from attribution.splice import check_submodules
from circuits.ablation import (
    Ablation,
    AblationValues,
    Keep,
    ablation_values,
    complement,
    keep_all,
    keep_nodes,
    keep_none,
    run_ablated,
)
from circuits.dictionaries import Dictionary
from circuits.distributed import all_sum, shard
from circuits.graph import OUTPUT, Circuit, parse_node_name
from circuits.metrics import METRICS, BatchInfo, Metric, get_metric
from circuits.models import Model

__all__ = [
    "MIB_FRACTIONS",
    "PROTOCOLS",
    "CurvePoint",
    "Evaluation",
    "FaithfulnessUndefinedError",
    "Evaluator",
    "cmd",
    "cpr",
    "curve",
    "evaluate",
    "intact_layers",
    "protocol_text",
]

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Fractions of all nodes at which the MIB circuit track evaluates circuits."""

Reference = Literal["patch", "clean"]
Protocol = Literal["sfc", "strict"]
PROTOCOLS: tuple[str, ...] = ("sfc", "strict")
"""Evaluation protocols: ``"sfc"`` leaves ``embed`` and the first ``n_layers // 3`` layers
intact (SFC's reported setting, the default); ``"strict"`` ablates everything with a dictionary."""
MetricLike = str | Callable[[Tensor, BatchInfo], Tensor] | Metric


class FaithfulnessUndefinedError(ValueError):
    """m(M) equals m(∅): ablating every evaluated node does not move the metric."""


@dataclass(frozen=True)
class Evaluation:
    """Faithfulness and completeness of one circuit.

    Attributes:
        faithfulness: ``(m(C) - m(∅)) / (m(M) - m(∅))``.
        completeness: ``(m(M \\ C) - m(∅)) / (m(M) - m(∅))``.
        metric_circuit: ``m(C)``, the mean metric with only the circuit kept.
        metric_complement: ``m(M \\ C)``.
        metric_empty: ``m(∅)``.
        metric_full: ``m(M)``.
        n_nodes: Nodes of the circuit in the evaluated submodules (per position when positioned).
        n_total: Evaluated nodes in all, ``|M|``.
        ablation: The ablation kind.
        metric: The metric's name.
        submodules: The evaluated submodules.
        n_examples: Examples averaged over.
        protocol: ``"sfc"``, ``"strict"`` or ``"custom"`` (see the module docstring).
        first_layers_intact: ``embed`` and layers ``0 .. first_layers_intact - 1`` were left
            intact (0: nothing was).
    """

    faithfulness: float
    completeness: float
    metric_circuit: float
    metric_complement: float
    metric_empty: float
    metric_full: float
    n_nodes: int
    n_total: int
    ablation: str
    metric: str
    submodules: tuple[str, ...]
    n_examples: int
    protocol: str
    first_layers_intact: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        record = asdict(self)
        record["submodules"] = list(self.submodules)
        record["protocol_text"] = self.protocol_text
        return record

    @property
    def protocol_text(self) -> str:
        """One line naming how the circuit was scored, e.g. ``"sfc protocol: position-mean
        ablation, embed and layer 0 intact"``."""
        return protocol_text(self.protocol, self.ablation, self.first_layers_intact)


def protocol_text(protocol: str, ablation: str, first_layers_intact: int) -> str:
    """How a circuit is scored, in one line (see `Evaluation.protocol_text`)."""
    if first_layers_intact == 0:
        intact = "nothing intact"
    elif first_layers_intact == 1:
        intact = "embed and layer 0 intact"
    else:
        intact = f"embed and layers 0-{first_layers_intact - 1} intact"
    return f"{protocol} protocol: {ablation} ablation, {intact}"


def intact_layers(
    model: Model, protocol: Protocol = "sfc", first_layers_intact: int | None = None
) -> tuple[str, int]:
    """``(protocol name, layers left intact)``: the protocol's count, or ``first_layers_intact``
    (named ``"custom"`` when it differs from the protocol's).

    Raises:
        ValueError: an unknown protocol or a negative count.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    default = model.n_layers // 3 if protocol == "sfc" else 0
    if first_layers_intact is None:
        return protocol, default
    if (
        not isinstance(first_layers_intact, int)
        or isinstance(first_layers_intact, bool)
        or first_layers_intact < 0
    ):
        raise ValueError(
            f"first_layers_intact must be a non-negative integer, got {first_layers_intact!r}"
        )
    return (protocol if first_layers_intact == default else "custom"), first_layers_intact


@dataclass(frozen=True)
class CurvePoint:
    """One circuit of a curve: its size and scores.

    Attributes:
        size: Nodes kept (the top ``size`` by ``|effect|``).
        fraction: ``size`` over the number of evaluated nodes (the x axis of CPR / CMD), or the
            requested fraction when the curve was built from fractions.
        faithfulness: F(C).
        completeness: Completeness of C.
        threshold: The node threshold that chose C (``|effect| > threshold``), when the curve
            was built from thresholds; else None.
    """

    size: int
    fraction: float
    faithfulness: float
    completeness: float
    threshold: float | None = None


def _check_fraction_points(points: Sequence[CurvePoint]) -> list[CurvePoint]:
    if len(points) < 2:
        raise ValueError("an area needs a curve of at least two points")
    return sorted(points, key=lambda p: p.fraction)


def cpr(points: Sequence[CurvePoint]) -> float:
    """MIB's CPR: trapezoid area under faithfulness over the fraction axis (higher is better)."""
    pts = _check_fraction_points(points)
    return sum(
        (b.fraction - a.fraction) * (a.faithfulness + b.faithfulness) / 2
        for a, b in zip(pts, pts[1:], strict=False)
    )


def cmd(points: Sequence[CurvePoint]) -> float:
    """MIB's CMD: trapezoid area under ``|1 - faithfulness|`` over the fraction axis (0 best)."""
    pts = _check_fraction_points(points)
    return sum(
        (b.fraction - a.fraction) * (abs(1 - a.faithfulness) + abs(1 - b.faithfulness)) / 2
        for a, b in zip(pts, pts[1:], strict=False)
    )


class Evaluator:
    """Everything that does not depend on the circuit, computed once: batches, ablation values,
    m(M) and m(∅). `evaluate` and `curve` build one; build it yourself to score many circuits.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``.
        task: A `circuits.tasks.Task`, a list of `PromptPair`, or batches of them.
        metric: A shipped metric name or callable; None: ``"logit_diff"`` with patch prompts,
            else ``"answer_logprob"``.
        ablation: ``"position-mean"`` (SFC's mean ablation, default), ``"mean"``, ``"zero"`` or
            ``"resample"``.
        reference: Inputs the ablation values come from: ``"patch"`` (default; the clean prompts
            when the task has none), ``"clean"``, or other prompt pairs (their patch prompts, else
            their clean prompts).
        protocol: ``"sfc"`` (default): leave ``embed`` and the first ``n_layers // 3`` layers
            unablated, as SFC's paper reports; ``"strict"``: ablate everything evaluated.
        first_layers_intact: Leave ``embed`` and layers ``0 .. k-1`` unablated instead of the
            protocol's count.
        submodules: Submodules to evaluate; None for every one with a dictionary.
        batch_size: Examples per batch.
        seed: Seed of the ``resample`` draws.
        keep_clean_logits: Keep the full model's last-position logits ``[batch, vocab]`` of every
            batch in ``infos`` (``BatchInfo.clean_logits``). None: only for metrics that may read
            them (``kl_to_clean`` and callables), so logit differences over many pairs keep no
            per-example vocabulary-wide tensor.

    Raises:
        ValueError: an unknown ablation, reference or protocol, nothing left to evaluate, bad
            prompt pairs.
        FaithfulnessUndefinedError: when m(M) equals m(∅).
    """

    def __init__(
        self,
        model: Model,
        dictionaries: Mapping[str, Dictionary],
        task: TaskLike,
        *,
        metric: MetricLike | None = None,
        ablation: Ablation = "position-mean",
        reference: Reference | TaskLike = "patch",
        protocol: Protocol = "sfc",
        first_layers_intact: int | None = None,
        submodules: Iterable[str] | None = None,
        batch_size: int = 16,
        seed: int = 0,
        keep_clean_logits: bool | None = None,
    ) -> None:
        self.protocol, first_layers_intact = intact_layers(model, protocol, first_layers_intact)
        self.first_layers_intact = first_layers_intact
        candidates = check_submodules(model, dictionaries, submodules)
        self.submodules = tuple(
            name for name in candidates if not _intact(model, name, first_layers_intact)
        )
        if not self.submodules:
            raise ValueError(
                f"nothing to evaluate: first_layers_intact={first_layers_intact} leaves every one "
                f"of {', '.join(candidates)} intact (the model has {model.n_layers} layers)"
            )
        self.model = model
        self.dictionaries = dictionaries
        self.batches: list[PairBatch] = pair_batches(model, task, batch_size=batch_size)
        has_patch = self.batches[0].patch is not None
        self.metric = get_metric(
            metric if metric is not None else ("logit_diff" if has_patch else "answer_logprob")
        )
        self.n_examples = sum(len(b) for b in self.batches)
        self.n_pos = max(b.clean.input_ids.shape[1] for b in self.batches)
        self.ablation = ablation

        if isinstance(reference, str):
            if reference not in ("patch", "clean"):
                raise ValueError(
                    f"reference must be 'patch', 'clean' or prompt pairs, got {reference!r}"
                )
            source = self.batches
            use_clean = reference == "clean"
        else:
            source = pair_batches(model, reference, batch_size=batch_size)
            use_clean = False
        ref_inputs = [b.clean if use_clean or b.patch is None else b.patch for b in source]
        self.values: AblationValues = ablation_values(
            model,
            dictionaries,
            None if ablation == "zero" else ref_inputs,
            ablation,
            submodules=self.submodules,
            seed=seed,
        )

        # m(M): nothing ablated. Its logits also serve as BatchInfo.clean_logits (kl_to_clean).
        if keep_clean_logits is None:
            reads_none = (METRICS["logit_diff"], METRICS["answer_logprob"])
            keep_clean_logits = self.metric.fn not in reads_none
        self.infos: dict[int, BatchInfo] = {}  # this process's batches, by index
        full = []
        everything = keep_all(dictionaries, self.submodules)
        for index, batch in shard(self.batches):
            logits = run_ablated(
                model, dictionaries, batch.clean, everything, self.values, key=index
            )
            info = batch.info.with_clean_logits(logits)
            full.append(self.metric(logits, info))
            self.infos[index] = info if keep_clean_logits else batch.info
        self.metric_full = _mean(full)
        self.metric_empty = self.mean_metric(keep_none(dictionaries, self.submodules))
        if math.isclose(self.metric_full, self.metric_empty, rel_tol=1e-6, abs_tol=1e-9):
            raise FaithfulnessUndefinedError(
                f"faithfulness is undefined: ablating every node of {', '.join(self.submodules)} "
                f"({self.ablation} ablation) leaves the mean {self.metric.name} unchanged "
                f"(m(M) = {self.metric_full:.6g}, m(∅) = {self.metric_empty:.6g}), so there is "
                "no effect for a circuit to recover; use another metric, ablation or task"
            )

    @property
    def n_total(self) -> int:
        """Evaluated nodes ``|M|`` when nodes carry no positions (width + 1 error each)."""
        return sum(self.dictionaries[name].width + 1 for name in self.submodules)

    def mean_metric(self, keep: Mapping[str, Keep]) -> float:
        """``m(S)``: the metric averaged over every example, nodes not kept ablated (on a
        remote model, every batch in one request)."""
        return _mean(self.model.in_session(self._metric_values, keep))

    def _metric_values(self, keep: Mapping[str, Keep]) -> list[torch.Tensor]:
        """``[batch]`` metric values of this process's batches, nodes not kept ablated."""
        values = []
        for index, info in self.infos.items():
            batch = self.batches[index]
            logits = run_ablated(
                self.model, self.dictionaries, batch.clean, keep, self.values, key=index
            )
            values.append(self.metric(logits, info))
        return values

    def keep(self, circuit: Circuit | Iterable[str]) -> dict[str, Keep]:
        """The circuit's masks over the evaluated submodules (nodes elsewhere are checked, then
        dropped)."""
        if isinstance(circuit, str):
            raise TypeError("give a Circuit or a collection of node names, not one string")
        names = list(circuit.graph.nodes) if isinstance(circuit, Circuit) else list(circuit)
        for name in names:
            if name != OUTPUT:
                parse_node_name(name)
        positioned = any("@" in name for name in names)
        return keep_nodes(
            self.model,
            self.dictionaries,
            names,
            submodules=self.submodules,
            n_pos=self.n_pos if positioned else None,
        )

    def ratio(self, metric: float) -> float:
        """``(metric - m(∅)) / (m(M) - m(∅))``: faithfulness of a circuit whose mean metric is
        ``metric`` (completeness for the metric of a complement)."""
        return (metric - self.metric_empty) / (self.metric_full - self.metric_empty)

    def score(self, keep: Mapping[str, Keep]) -> tuple[float, float, float, float]:
        """``(faithfulness, completeness, m(C), m(M \\ C))`` of masks."""
        m_c = self.mean_metric(keep)
        m_rest = self.mean_metric(complement(keep))
        return self.ratio(m_c), self.ratio(m_rest), m_c, m_rest

    def evaluate(self, circuit: Circuit | Iterable[str]) -> Evaluation:
        """Faithfulness and completeness of ``circuit`` (a `Circuit` or node names)."""
        keep = self.keep(circuit)
        faithful, complete, m_c, m_rest = self.score(keep)
        positioned = any(k.positioned for k in keep.values())
        total = self.n_total * (self.n_pos if positioned else 1)
        return Evaluation(
            faithfulness=faithful,
            completeness=complete,
            metric_circuit=m_c,
            metric_complement=m_rest,
            metric_empty=self.metric_empty,
            metric_full=self.metric_full,
            n_nodes=sum(k.count() for k in keep.values()),
            n_total=total,
            ablation=self.ablation,
            metric=self.metric.name,
            submodules=self.submodules,
            n_examples=self.n_examples,
            protocol=self.protocol,
            first_layers_intact=self.first_layers_intact,
        )

    def curve(
        self,
        effects: Mapping[str, float] | Circuit,
        *,
        sizes: Iterable[int] | None = None,
        fractions: Iterable[float] | None = None,
        thresholds: Iterable[float] | None = None,
    ) -> list[CurvePoint]:
        """Faithfulness and completeness of the top-``k`` circuits by ``|effect|``.

        Args:
            effects: ``{node name: effect}`` (e.g. `attribution.NodeEffects.nodes`) or a
                `Circuit` (its node effects). Nodes outside the evaluated submodules are dropped;
                ties keep the earlier node.
            sizes: Circuit sizes ``k``; or
            fractions: fractions of the evaluated nodes, ``k = int(fraction * N)``; or
            thresholds: node thresholds, keeping nodes with ``|effect| > threshold``.
                None of the three: `MIB_FRACTIONS`.

        Returns:
            One `CurvePoint` per size, in the order given.
        """
        if isinstance(effects, Circuit):
            effects = {n: e for n, e in effects.node_effects().items() if n != OUTPUT}
        names = [name for name in effects if name != OUTPUT]
        keep_nodes(self.model, self.dictionaries, names, submodules=())  # check every name
        ranked = {
            name: float(effects[name])
            for name in names
            if parse_node_name(name).submodule in self.submodules
        }
        by_rank = sorted(ranked, key=lambda name: -abs(ranked[name]))  # stable: ties keep order
        positioned = any("@" in name for name in by_rank)
        total = self.n_total * (self.n_pos if positioned else 1)
        if sum(option is not None for option in (sizes, fractions, thresholds)) > 1:
            raise ValueError("give one of sizes, fractions and thresholds")
        plan: list[tuple[int, float | None, float | None]] = []  # (k, fraction, threshold)
        if sizes is not None:
            plan = [(_size(k), None, None) for k in sizes]
        elif thresholds is not None:
            for threshold in thresholds:
                if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                    raise ValueError(f"thresholds must be numbers, got {threshold!r}")
                k = sum(abs(ranked[name]) > threshold for name in by_rank)
                plan.append((k, None, float(threshold)))
        else:
            chosen = MIB_FRACTIONS if fractions is None else tuple(fractions)
            for fraction in chosen:
                if isinstance(fraction, bool) or not (
                    isinstance(fraction, (int, float)) and 0 <= fraction <= 1
                ):
                    raise ValueError(f"fractions must lie in [0, 1], got {fraction!r}")
                plan.append((int(fraction * total), float(fraction), None))
        points = []
        for k, fraction, threshold in plan:
            nodes = by_rank[:k]
            keep = keep_nodes(
                self.model,
                self.dictionaries,
                nodes,
                submodules=self.submodules,
                n_pos=self.n_pos if positioned else None,
            )
            faithful, complete, _, _ = self.score(keep)
            points.append(
                CurvePoint(
                    size=len(nodes),
                    fraction=fraction if fraction is not None else len(nodes) / total,
                    faithfulness=faithful,
                    completeness=complete,
                    threshold=threshold,
                )
            )
        return points


def _mean(values: list[torch.Tensor]) -> float:
    """The mean of per-example metrics ``[batch]`` over every process's batches."""
    local = torch.cat(values).double()
    total, count = all_sum([local.sum(), torch.tensor(float(local.numel()))])
    return float(total / count)


def _intact(model: Model, name: str, first_layers_intact: int) -> bool:
    """Whether ``name`` lies in the first ``first_layers_intact`` layers (``embed`` before 0)."""
    layer = model.submodule(name).layer
    return first_layers_intact > 0 and (layer is None or layer < first_layers_intact)


def _size(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"sizes must be non-negative integers, got {k!r}")
    return k


def evaluate(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task: TaskLike,
    circuit: Circuit | Iterable[str],
    *,
    metric: MetricLike | None = None,
    ablation: Ablation = "position-mean",
    reference: Reference | TaskLike = "patch",
    protocol: Protocol = "sfc",
    first_layers_intact: int | None = None,
    submodules: Iterable[str] | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> Evaluation:
    """Faithfulness and completeness of ``circuit`` on ``task`` (see the module docstring).

    Arguments other than ``circuit`` are those of `Evaluator`.

    Raises:
        ValueError: unknown or malformed node names, nodes of submodules without a dictionary,
            indices beyond a dictionary's width, positions beyond the prompts, nothing to
            evaluate, and what `Evaluator` refuses.
        FaithfulnessUndefinedError: m(M) equals m(∅).
    """
    if isinstance(circuit, str):
        raise TypeError("give a Circuit or a collection of node names, not one string")
    circuit = circuit if isinstance(circuit, Circuit) else list(circuit)
    evaluator = Evaluator(
        model,
        dictionaries,
        task,
        metric=metric,
        ablation=ablation,
        reference=reference,
        protocol=protocol,
        first_layers_intact=first_layers_intact,
        submodules=submodules,
        batch_size=batch_size,
        seed=seed,
    )
    return evaluator.evaluate(circuit)


def curve(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task: TaskLike,
    effects: Mapping[str, float] | Circuit,
    *,
    sizes: Iterable[int] | None = None,
    fractions: Iterable[float] | None = None,
    thresholds: Iterable[float] | None = None,
    metric: MetricLike | None = None,
    ablation: Ablation = "position-mean",
    reference: Reference | TaskLike = "patch",
    protocol: Protocol = "sfc",
    first_layers_intact: int | None = None,
    submodules: Iterable[str] | None = None,
    batch_size: int = 16,
    seed: int = 0,
) -> list[CurvePoint]:
    """Faithfulness and completeness of top-``k`` circuits (`Evaluator.curve`); feed the points
    to `cpr` and `cmd`."""
    evaluator = Evaluator(
        model,
        dictionaries,
        task,
        metric=metric,
        ablation=ablation,
        reference=reference,
        protocol=protocol,
        first_layers_intact=first_layers_intact,
        submodules=submodules,
        batch_size=batch_size,
        seed=seed,
    )
    return evaluator.curve(effects, sizes=sizes, fractions=fractions, thresholds=thresholds)

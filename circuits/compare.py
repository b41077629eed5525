"""Circuit-finding methods head to head: faithfulness and completeness at the same sizes.

For each node set (SAE features; neurons, i.e. identity dictionaries) and each method, circuits of
``k`` nodes for every ``k`` in ``sizes``:

- ``"atp"``, ``"ig"``: node effects (`attribution.node_effects`, summed over positions) once on
  the *finding* prompts, then the top ``k`` nodes by ``|effect|``;
- ``"hard-concrete"``, ``"sigmoid"``: one mask per ``k`` (`masks.train_mask` in target mode,
  trained on the finding prompts, with the evaluation's ablation), its ``k`` binarised nodes.

Every circuit of a node set is scored by one `circuits.evaluate.Evaluator` on the *evaluation*
prompts (held-out ones by default in ``circuits compare``): same batches, ablation, m(M) and
m(∅), so the numbers are comparable across methods. Faithfulness and completeness are SFC's;
CPR and CMD are MIB's trapezoid areas over the fraction axis ``k / N`` (``N`` evaluated nodes of
the node set), here over the span of ``sizes`` only, so they compare methods within a node set,
not feature circuits with neuron circuits (their ``N`` differ). ``smallest_faithful`` is the
smallest ``k`` of ``sizes`` whose circuit reaches faithfulness 0.9.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attribution.batches import TaskLike
from attribution.nodes import node_effects
from circuits.ablation import Ablation
from circuits.dictionaries import Dictionary
from circuits.evaluate import CurvePoint, Evaluator, cmd, cpr
from circuits.models import Model
from circuits.tasks import Task
from masks.train import train_mask

__all__ = ["METHODS", "SIZES", "Comparison", "MethodCurve", "compare"]

METHODS: tuple[str, ...] = ("atp", "ig", "hard-concrete", "sigmoid")
"""Methods `compare` knows: two attribution methods and two mask parametrisations."""
SIZES: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500)
"""Default circuit sizes."""
FAITHFUL = 0.9
"""Faithfulness a circuit must reach to count in ``smallest_faithful``."""


@dataclass(frozen=True)
class MethodCurve:
    """One method's circuits over one node set.

    Attributes:
        nodes: Label of the node set (``"features"``, ``"neurons"``).
        method: One of `METHODS`.
        points: One `CurvePoint` per size (sizes larger than the node set are left out).
        seconds: Wall time of finding the circuits (effects or mask training), scoring excluded.
    """

    nodes: str
    method: str
    points: tuple[CurvePoint, ...]
    seconds: float

    @property
    def cpr(self) -> float | None:
        """MIB's CPR over the sizes (None with fewer than two)."""
        return cpr(self.points) if len(self.points) > 1 else None

    @property
    def cmd(self) -> float | None:
        """MIB's CMD over the sizes (None with fewer than two)."""
        return cmd(self.points) if len(self.points) > 1 else None

    @property
    def smallest_faithful(self) -> int | None:
        """Smallest size whose faithfulness reaches `FAITHFUL`; None if none does."""
        sizes = [p.size for p in self.points if p.faithfulness >= FAITHFUL]
        return min(sizes) if sizes else None


@dataclass(frozen=True)
class Comparison:
    """Every method's curve over every node set, and the setting they were measured in."""

    curves: tuple[MethodCurve, ...]
    sizes: tuple[int, ...]
    settings: dict[str, Any]

    def table(self) -> str:
        """Markdown: faithfulness then completeness per size, CPR, CMD, smallest faithful k."""
        head = " | ".join(f"k={k}" for k in self.sizes)
        lines = [
            f"| nodes | method | {head} | CPR ↑ | CMD ↓ | k for F ≥ {FAITHFUL} | time (s) |",
            "|---|---|" + "---:|" * (len(self.sizes) + 4),
        ]
        for curve in self.curves:
            cells = self._cells(curve, "faithfulness")
            areas = " | ".join("—" if a is None else f"{a:.2e}" for a in (curve.cpr, curve.cmd))
            k = curve.smallest_faithful
            lines.append(
                f"| {curve.nodes} | {curve.method} | {cells} | {areas} | "
                f"{k if k is not None else '—'} | {curve.seconds:.0f} |"
            )
        lines += ["", "Completeness (0 is ideal):", "", f"| nodes | method | {head} |"]
        lines.append("|---|---|" + "---:|" * len(self.sizes))
        for curve in self.curves:
            cells = self._cells(curve, "completeness")
            lines.append(f"| {curve.nodes} | {curve.method} | {cells} |")
        return "\n".join(lines)

    def _cells(self, curve: MethodCurve, key: str) -> str:
        """One table cell per size; "—" past the node set's size."""
        values = [f"{getattr(p, key):.3f}" for p in curve.points]
        return " | ".join(values + ["—"] * (len(self.sizes) - len(values)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "sizes": list(self.sizes),
            "curves": [
                {
                    "nodes": c.nodes,
                    "method": c.method,
                    "cpr": c.cpr,
                    "cmd": c.cmd,
                    "smallest_faithful": c.smallest_faithful,
                    "seconds": c.seconds,
                    "points": [vars(p) for p in c.points],
                }
                for c in self.curves
            ],
        }

    def save(
        self, directory: str | Path, *, title: str, settings: Mapping[str, Any] | None = None
    ) -> dict[str, Path]:
        """Write ``comparison.md`` (``title`` and `table`), ``comparison.json`` (`to_dict`, its
        settings updated with ``settings``) and ``comparison.png`` (`plot`) into ``directory``.

        Returns:
            ``{"table": path, "json": path, "plot": path}``.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        record = self.to_dict()
        record["settings"].update(settings or {})
        files = {
            "table": out / "comparison.md",
            "json": out / "comparison.json",
            "plot": self.plot(out / "comparison.png", title=title),
        }
        files["table"].write_text(f"{title}\n\n{self.table()}\n")
        files["json"].write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        return files

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Faithfulness and completeness against size, one line per (nodes, method)."""
        from viz.plots import plot_curves

        curves = {f"{c.nodes}: {c.method}": c.points for c in self.curves}
        return plot_curves(curves, path, title=title)


def compare(
    model: Model,
    node_sets: Mapping[str, Mapping[str, Dictionary]],
    task: TaskLike,
    *,
    eval_task: TaskLike | None = None,
    methods: Sequence[str] = METHODS,
    sizes: Sequence[int] = SIZES,
    ablation: Ablation = "position-mean",
    ig_steps: int = 10,
    mask_steps: int = 500,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> Comparison:
    """Find circuits of every size with every method over every node set, and score them.

    Args:
        model: The model.
        node_sets: ``{label: {submodule: Dictionary}}``, e.g. ``{"features": saes,
            "neurons": identities}``.
        task: Prompt pairs the circuits are found on (effects, mask training).
        eval_task: Prompt pairs they are scored on; None: ``task``.
        methods: A subset of `METHODS`, in the order the rows should appear.
        sizes: Circuit sizes ``k`` (positive integers, increasing); those larger than a node
            set's number of nodes are skipped for that set.
        ablation: What nodes outside a circuit are set to, in masks and in the evaluation.
        ig_steps: Interpolation steps of ``"ig"``.
        mask_steps: Optimiser steps of each mask.
        batch_size: Prompt pairs per batch.
        seed: Seed of the masks' gates (and of resample ablation).
        progress: Progress bars on stderr.

    Raises:
        ValueError: an unknown method, no node set, sizes that are not increasing positive
            integers, or a node set smaller than every size.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose among {', '.join(METHODS)}")
    if not node_sets:
        raise ValueError("give at least one node set, e.g. {'features': saes}")
    sizes = tuple(sizes)
    if (
        not sizes
        or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in sizes)
        or list(sizes) != sorted(set(sizes))
    ):
        raise ValueError(f"sizes must be increasing positive integers, got {list(sizes)}")
    if not isinstance(task, (Task, Sequence)):
        task = list(task)  # read once per method
    if eval_task is not None and not isinstance(eval_task, (Task, Sequence)):
        eval_task = list(eval_task)  # read once per node set
    curves = []
    totals = {}
    for label, dictionaries in node_sets.items():
        evaluator = Evaluator(
            model,
            dictionaries,
            task if eval_task is None else eval_task,
            ablation=ablation,
            batch_size=batch_size,
            seed=seed,
        )
        totals[label] = evaluator.n_total
        usable = tuple(k for k in sizes if k <= evaluator.n_total)
        if not usable:
            raise ValueError(
                f"every size exceeds the {evaluator.n_total} nodes of node set {label!r}"
            )
        for method in methods:
            start = time.perf_counter()
            if method in ("atp", "ig"):
                effects = node_effects(
                    model,
                    dictionaries,
                    task,
                    method=method,
                    steps=ig_steps,
                    batch_size=batch_size,
                    progress=progress,
                ).nodes()
                seconds = time.perf_counter() - start
                points = evaluator.curve(effects, sizes=usable)
            else:
                kept = [
                    train_mask(
                        model,
                        dictionaries,
                        task,
                        parametrisation=method,  # type: ignore[arg-type]
                        size=k,
                        ablation=ablation,
                        steps=mask_steps,
                        batch_size=batch_size,
                        seed=seed,
                        progress=progress,
                    ).nodes
                    for k in usable
                ]
                seconds = time.perf_counter() - start
                points = [_point(evaluator, nodes) for nodes in kept]
            curves.append(MethodCurve(label, method, tuple(points), seconds))
    settings = {
        "nodes": totals,
        "n_find": _count(task),
        "n_eval": evaluator.n_examples,
        "methods": list(methods),
        "ablation": ablation,
        "ig_steps": ig_steps,
        "mask_steps": mask_steps,
        "batch_size": batch_size,
        "seed": seed,
    }
    return Comparison(tuple(curves), sizes, settings)


def _point(evaluator: Evaluator, nodes: Sequence[str]) -> CurvePoint:
    """Faithfulness and completeness of one node set, as a curve point."""
    result = evaluator.evaluate(nodes)
    return CurvePoint(
        size=result.n_nodes,
        fraction=result.n_nodes / result.n_total,
        faithfulness=result.faithfulness,
        completeness=result.completeness,
    )


def _count(task: Task | Sequence[Any]) -> int:
    """Prompt pairs in a task, a list of pairs or a list of batches."""
    items = task.pairs if isinstance(task, Task) else task
    return sum(len(item) if hasattr(item, "clean") else 1 for item in items)

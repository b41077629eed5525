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

A comparison is made of rows, one per (node set, method, size): a `CurvePoint` and the seconds
its circuit took to find. With ``rows=PATH`` each row is appended to a JSON-lines file as soon as
it is scored (flushed and synced), after a header that records the settings deciding the result;
a later call with the same settings reads those rows back and computes only the missing ones, so
an interrupted run resumes where it stopped (the file: `circuits.rows`). `plan` lists the rows
and how many are done.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from attribution.batches import TaskLike
from attribution.nodes import node_effects
from attribution.splice import check_submodules
from circuits.ablation import Ablation
from circuits.dictionaries import Dictionary
from circuits.evaluate import (
    CurvePoint,
    Evaluator,
    Protocol,
    cmd,
    cpr,
    intact_layers,
    protocol_text,
)
from circuits.files import write_text
from circuits.models import Model, name_or_path
from circuits.rows import Key, Row, _open_rows, _read_rows, _write_line
from circuits.tasks import PromptPair, Task
from masks.train import train_mask

__all__ = ["METHODS", "SIZES", "Comparison", "MethodCurve", "Plan", "Row", "compare", "plan"]

METHODS: tuple[str, ...] = ("atp", "ig", "hard-concrete", "sigmoid")
"""Methods `compare` knows: two attribution methods and two mask parametrisations."""
SIZES: tuple[int, ...] = (5, 10, 20, 50, 100, 200, 500)
"""Default circuit sizes."""
FAITHFUL = 0.9
"""Faithfulness a circuit must reach to count in ``smallest_faithful``."""


@dataclass(frozen=True)
class Plan:
    """The rows a comparison is made of, and those its rows file already holds.

    Attributes:
        keys: Every row's ``(nodes, method, k)`` in table order; sizes larger than a node set
            are left out for that set.
        nodes: ``{label: number of nodes}`` of each node set.
        methods: The methods, in row order.
        sizes: The sizes asked for.
        finished: ``{key: Row}`` read back from the rows file; empty without one.
        settings: What decides the result, as the rows file's header records it.
        rows: The rows file, or None.
    """

    keys: tuple[Key, ...]
    nodes: dict[str, int]
    methods: tuple[str, ...]
    sizes: tuple[int, ...]
    finished: dict[Key, Row]
    settings: dict[str, Any]
    rows: Path | None = None

    @property
    def missing(self) -> tuple[Key, ...]:
        """The rows still to compute, in order."""
        return tuple(key for key in self.keys if key not in self.finished)

    def describe(self) -> str:
        """One line: rows, node sets, methods, sizes, and how many are done."""
        sets = ", ".join(f"{label} ({n} nodes)" for label, n in self.nodes.items())
        skipped = [
            f"{label}: k > {n} left out" for label, n in self.nodes.items() if self.sizes[-1] > n
        ]
        sizes = ", ".join(map(str, self.sizes)) + (f" ({'; '.join(skipped)})" if skipped else "")
        done = (
            f"{len(self.finished)} done in {self.rows}, {len(self.missing)} to compute"
            if self.rows is not None
            else f"{len(self.missing)} to compute"
        )
        return (
            f"{len(self.keys)} rows: node sets {sets}; methods {', '.join(self.methods)}; "
            f"sizes {sizes}; {done}"
        )


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
    """Every method's curve over every node set, and the setting they were measured in.

    Attributes:
        curves: One `MethodCurve` per (node set, method), in row order.
        sizes: The sizes asked for.
        settings: Node counts, prompt pair counts and the options of `compare`.
        computed: Keys of the rows the call that built this computed; the others were read
            back from its rows file. Not part of equality, `to_dict` or the saved files.
    """

    curves: tuple[MethodCurve, ...]
    sizes: tuple[int, ...]
    settings: dict[str, Any]
    computed: tuple[Key, ...] = field(default=(), compare=False)

    @property
    def protocol_text(self) -> str:
        """How every circuit was scored (`circuits.evaluate.Evaluation.protocol_text`)."""
        settings = self.settings
        return protocol_text(
            settings["protocol"], settings["ablation"], settings["first_layers_intact"]
        )

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
            "settings": dict(self.settings),
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
        write_text(files["table"], f"{title}\n\n{self.table()}\n")
        write_text(files["json"], json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        return files

    def plot(self, path: str | Path, *, title: str | None = None) -> Path:
        """Faithfulness and completeness against size, one line per (nodes, method)."""
        from viz.plots import plot_curves

        curves = {f"{c.nodes}: {c.method}": c.points for c in self.curves}
        return plot_curves(curves, path, title=title)


def plan(
    model: Model,
    node_sets: Mapping[str, Mapping[str, Dictionary]],
    task: TaskLike,
    *,
    eval_task: TaskLike | None = None,
    methods: Sequence[str] = METHODS,
    sizes: Sequence[int] = SIZES,
    ablation: Ablation = "position-mean",
    protocol: Protocol = "sfc",
    first_layers_intact: int | None = None,
    ig_steps: int = 10,
    mask_steps: int = 500,
    batch_size: int = 16,
    seed: int = 0,
    model_name: str | None = None,
    rows: str | Path | None = None,
) -> Plan:
    """The rows `compare` would compute with these arguments, and those ``rows`` already holds.

    Takes `compare`'s arguments (less ``progress``) and reads ``rows`` without writing it.

    Raises:
        ValueError: as `compare`, and when ``rows`` was written with other settings or is not
            a rows file.
    """
    return _plan(
        model,
        node_sets,
        task,
        eval_task=eval_task,
        methods=methods,
        sizes=sizes,
        ablation=ablation,
        protocol=protocol,
        first_layers_intact=first_layers_intact,
        ig_steps=ig_steps,
        mask_steps=mask_steps,
        batch_size=batch_size,
        seed=seed,
        model_name=model_name,
        rows=rows,
    )[0]


def compare(
    model: Model,
    node_sets: Mapping[str, Mapping[str, Dictionary]],
    task: TaskLike,
    *,
    eval_task: TaskLike | None = None,
    methods: Sequence[str] = METHODS,
    sizes: Sequence[int] = SIZES,
    ablation: Ablation = "position-mean",
    protocol: Protocol = "sfc",
    first_layers_intact: int | None = None,
    ig_steps: int = 10,
    mask_steps: int = 500,
    batch_size: int = 16,
    seed: int = 0,
    model_name: str | None = None,
    rows: str | Path | None = None,
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
        protocol: The evaluation protocol (`circuits.evaluate.Evaluator`): ``"sfc"`` leaves
            ``embed`` and the first ``n_layers // 3`` layers intact (neither masked nor
            ablated), ``"strict"`` evaluates everything.
        first_layers_intact: The number of intact layers instead of the protocol's.
        ig_steps: Interpolation steps of ``"ig"``.
        mask_steps: Optimiser steps of each mask.
        batch_size: Prompt pairs per batch.
        seed: Seed of the masks' gates (and of resample ablation).
        model_name: How the model is named in the rows file's settings; None: its
            ``name_or_path``.
        rows: A JSON-lines file each finished row is appended to (created with its parent
            directories). The rows it already holds are reused, not recomputed, when its
            header's settings match these; a last line cut short (a killed run) is dropped and
            its row computed again. ``"atp"``/``"ig"`` rows missing some sizes rerun their
            (deterministic) attribution pass and score only the missing sizes. Interrupting
            the call loses only the row in progress. None: nothing is read or written.
        progress: Progress bars on stderr.

    Raises:
        ValueError: an unknown method, no node set, sizes that are not increasing positive
            integers, a node set smaller than every size, or a ``rows`` file written with other
            settings (delete it, or write the rows elsewhere).
    """
    if not isinstance(task, (Task, Sequence)):
        task = list(task)  # read once per method
    if eval_task is not None and not isinstance(eval_task, (Task, Sequence)):
        eval_task = list(eval_task)  # read once per node set
    the_plan, end = _plan(
        model,
        node_sets,
        task,
        eval_task=eval_task,
        methods=methods,
        sizes=sizes,
        ablation=ablation,
        protocol=protocol,
        first_layers_intact=first_layers_intact,
        ig_steps=ig_steps,
        mask_steps=mask_steps,
        batch_size=batch_size,
        seed=seed,
        model_name=model_name,
        rows=rows,
    )
    finished = dict(the_plan.finished)
    computed: list[Key] = []
    handle = None if the_plan.rows is None else _open_rows(the_plan.rows, the_plan.settings, end)
    try:
        for label, dictionaries in node_sets.items():
            evaluator = None
            for method in the_plan.methods:
                missing = [k for (n, m, k) in the_plan.missing if (n, m) == (label, method)]
                if not missing:
                    continue
                if evaluator is None:
                    evaluator = Evaluator(
                        model,
                        dictionaries,
                        task if eval_task is None else eval_task,
                        ablation=ablation,
                        protocol=protocol,
                        first_layers_intact=first_layers_intact,
                        batch_size=batch_size,
                        seed=seed,
                    )
                for row in _rows(
                    model,
                    dictionaries,
                    task,
                    evaluator,
                    label,
                    method,
                    missing,
                    ablation=ablation,
                    protocol=protocol,
                    first_layers_intact=first_layers_intact,
                    ig_steps=ig_steps,
                    mask_steps=mask_steps,
                    batch_size=batch_size,
                    seed=seed,
                    progress=progress,
                ):
                    finished[row.key] = row
                    computed.append(row.key)
                    if handle is not None:
                        _write_line(handle, row.to_dict())
    finally:
        if handle is not None:
            handle.close()
    curves = []
    for label in node_sets:
        for method in the_plan.methods:
            done = [finished[key] for key in the_plan.keys if key[:2] == (label, method)]
            times = [row.seconds for row in done]
            seconds = max(times) if method in ("atp", "ig") else sum(times)
            curves.append(MethodCurve(label, method, tuple(r.point for r in done), seconds))
    protocol, first_layers_intact = intact_layers(model, protocol, first_layers_intact)
    settings = {
        "nodes": the_plan.nodes,
        "n_find": _count(task),
        "n_eval": _count(task if eval_task is None else eval_task),
        "methods": list(the_plan.methods),
        "ablation": ablation,
        "protocol": protocol,
        "first_layers_intact": first_layers_intact,
        "ig_steps": ig_steps,
        "mask_steps": mask_steps,
        "batch_size": batch_size,
        "seed": seed,
    }
    return Comparison(tuple(curves), the_plan.sizes, settings, tuple(computed))


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
    return sum(1 if isinstance(item, PromptPair) else len(item) for item in items)


def _rows(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task: TaskLike,
    evaluator: Evaluator,
    label: str,
    method: str,
    sizes: Sequence[int],
    *,
    ablation: Ablation,
    protocol: Protocol,
    first_layers_intact: int | None,
    ig_steps: int,
    mask_steps: int,
    batch_size: int,
    seed: int,
    progress: bool,
) -> Iterator[Row]:
    """Find and score ``method``'s circuits of ``sizes`` over one node set, yielding each `Row`
    as soon as it is scored."""
    if method in ("atp", "ig"):
        start = time.perf_counter()
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
        for k in sizes:
            yield Row(label, method, k, evaluator.curve(effects, sizes=[k])[0], seconds)
        return
    for k in sizes:
        start = time.perf_counter()
        nodes = train_mask(
            model,
            dictionaries,
            task,
            parametrisation=method,  # type: ignore[arg-type]
            size=k,
            ablation=ablation,
            protocol=protocol,
            first_layers_intact=first_layers_intact,
            steps=mask_steps,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
        ).nodes
        seconds = time.perf_counter() - start
        yield Row(label, method, k, _point(evaluator, nodes), seconds)


def _plan(
    model: Model,
    node_sets: Mapping[str, Mapping[str, Dictionary]],
    task: TaskLike,
    *,
    eval_task: TaskLike | None,
    methods: Sequence[str],
    sizes: Sequence[int],
    ablation: Ablation,
    protocol: Protocol,
    first_layers_intact: int | None,
    ig_steps: int,
    mask_steps: int,
    batch_size: int,
    seed: int,
    model_name: str | None,
    rows: str | Path | None,
) -> tuple[Plan, int]:
    """Check the arguments, list the rows, read ``rows`` back; also return the byte offset
    where its last complete line ends (0 when it has no header yet)."""
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
    totals = {}
    keys: list[Key] = []
    for label, dictionaries in node_sets.items():
        totals[label] = sum(
            dictionaries[name].width + 1 for name in check_submodules(model, dictionaries, None)
        )
        usable = [k for k in sizes if k <= totals[label]]
        if not usable:
            raise ValueError(f"every size exceeds the {totals[label]} nodes of node set {label!r}")
        keys += [(label, method, k) for method in methods for k in usable]
    settings = {
        "find_pairs": _digest(task),
        "eval_pairs": _digest(task if eval_task is None else eval_task),
        "model": model_name if model_name is not None else _model_name(model),
        "dtype": str(model.dtype),
        "node_sets": {label: _fingerprint(d) for label, d in node_sets.items()},
        "methods": list(methods),
        "sizes": list(sizes),
        "ablation": ablation,
        "protocol": protocol,
        "first_layers_intact": first_layers_intact,
        "ig_steps": ig_steps,
        "mask_steps": mask_steps,
        "batch_size": batch_size,
        "seed": seed,
    }
    settings = json.loads(json.dumps(settings))  # as the header reads back
    path = None if rows is None else Path(rows)
    finished, end = ({}, 0) if path is None else _read_rows(path, settings)
    wanted = set(keys)
    finished = {key: row for key, row in finished.items() if key in wanted}
    the_plan = Plan(tuple(keys), totals, tuple(methods), sizes, finished, settings, path)
    return the_plan, end


def _digest(task: TaskLike) -> str:
    """SHA-256 of the prompt pairs' content (and of the batches' boundaries, when given as
    batches)."""
    if isinstance(task, Task) or (
        isinstance(task, Sequence) and all(isinstance(p, PromptPair) for p in task)
    ):
        content: Any = [asdict(p) for p in (task.pairs if isinstance(task, Task) else task)]
    else:
        content = [
            [asdict(p) for p in (item.pairs if isinstance(item, Task) else item)] for item in task
        ]
    text = json.dumps(content, sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _fingerprint(dictionaries: Mapping[str, Dictionary]) -> str:
    """SHA-256 of each dictionary's submodule, class, settings (its repr) and a strided sample
    of at most about 8,192 values of each of its tensors."""
    digest = hashlib.sha256()
    for name in sorted(dictionaries):
        dictionary = dictionaries[name]
        digest.update(f"{name}\n{dictionary!r}\n".encode())
        for key, tensor in dictionary.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].cpu().contiguous()
            digest.update(f"{key} {list(tensor.shape)} {tensor.dtype}\n".encode())
            digest.update(sample.view(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _model_name(model: Model) -> str:
    """The wrapped model's ``name_or_path`` (else its class name)."""
    return name_or_path(model.torch_model) or type(model.torch_model).__name__

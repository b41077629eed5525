"""`discover`: node effects -> kept nodes -> edge effects -> a pruned `circuits.graph.Circuit`.

Sparse Feature Circuits (Marks et al., ICLR 2025), the whole discovery loop in one call:

1. **Node effects** of every feature and error node (`attribution.node_effects`, with ``method``).
2. **Kept nodes**: those with ``|effect| > node_threshold``; with ``top_k``, the ``k`` nodes of
   largest ``|effect|`` instead; with both, the nodes that pass both (the top ``k`` among those
   above the threshold). A node whose effect is exactly zero is never kept. Error nodes are
   nodes like any other.
3. **Edge effects** between the kept nodes (`attribution.edge_effects`, with the left vector that
   matches ``method``: IG mean gradients after ``"ig"`` / ``"ig-joint"``, the clean-input
   gradient after ``"atp"`` / ``"exact"``), including the edges from the last attributed
   submodule into ``y``.
4. **Kept edges**: those with ``|weight| > edge_threshold`` (edges into ``y`` included).
5. **Circuit** with a provenance record (model, dictionaries, task, method, metric, aggregation,
   steps, thresholds, ``top_k``, total effect, package version).
6. **Prune** the nodes without a path to ``y``.

``model`` and ``dictionaries`` are objects (`circuits.models.load_model`,
`circuits.dictionaries.load_dictionaries`); this function never loads anything. Where they came
from is read off the objects (the model's ``name_or_path``; ``"neurons"`` when every dictionary
is an identity, else each submodule's dictionary class and width); a caller that loaded them
from specs (``"zoo"``, a directory) passes those in ``provenance=`` instead, as the
``circuits discover`` command does.

With ``nodes`` (e.g. the nodes a learned mask kept, `masks.mask_circuit`) step 2 keeps exactly
those nodes, whatever their effects, and step 6 is skipped: the circuit is the given node set,
with every kept node's effect and the edges between them.

Nothing above the threshold is not an error: the result is a circuit with only ``y``, and its
summary says so. With ``edges=False`` steps 3, 4 and 6 are skipped: the circuit holds every kept
node and no edge (without edges there is no path to ``y`` to prune by).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from attribution.batches import TaskLike
from attribution.edges import edge_effects
from attribution.nodes import Aggregation, Method, node_effects
from circuits.dictionaries import Dictionary, Identity
from circuits.distributed import world_size
from circuits.graph import OUTPUT, Circuit
from circuits.metrics import BatchInfo, Metric
from circuits.models import Model
from circuits.tasks import Task

__all__ = ["DEFAULT_NODE_THRESHOLD", "discover", "select_nodes"]

DEFAULT_NODE_THRESHOLD = 0.1
"""``node_threshold`` when neither it nor ``top_k`` is given."""


def select_nodes(
    effects: Mapping[str, float], *, threshold: float | None, top_k: int | None
) -> dict[str, float]:
    """The kept nodes of ``{name: effect}``: step 2 of `discover`.

    Args:
        effects: ``{node name: effect}`` in a fixed order (`attribution.NodeEffects.nodes`).
        threshold: Keep ``|effect| > threshold``; None for no threshold.
        top_k: Then keep the ``top_k`` largest ``|effect|`` (ties: the earlier node in
            ``effects``); None for all.

    Returns:
        ``{name: effect}`` of the kept nodes, in the order of ``effects``. Nodes with effect
        exactly zero are never kept.
    """
    kept = {
        name: effect
        for name, effect in effects.items()
        if effect != 0 and (threshold is None or abs(effect) > threshold)
    }
    if top_k is not None and len(kept) > top_k:
        order = {name: i for i, name in enumerate(kept)}
        chosen = sorted(kept, key=lambda name: (-abs(kept[name]), order[name]))[:top_k]
        kept = {name: kept[name] for name in sorted(chosen, key=order.__getitem__)}
    return kept


def discover(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task: TaskLike,
    *,
    method: Method = "ig",
    metric: str | Callable[[torch.Tensor, BatchInfo], torch.Tensor] | Metric | None = None,
    node_threshold: float | None = None,
    edge_threshold: float = 0.01,
    top_k: int | None = None,
    aggregation: Aggregation = "sum",
    steps: int = 10,
    batch_size: int = 16,
    submodules: Iterable[str] | None = None,
    edges: bool = True,
    nodes: Iterable[str] | None = None,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> Circuit:
    """Discover a circuit: node effects, kept nodes, edges between them, pruned to ``y``.

    Args:
        model: The model (`circuits.models.load_model`).
        dictionaries: ``{submodule: Dictionary}`` (`circuits.dictionaries.load_dictionaries`);
            `circuits.dictionaries.Identity` dictionaries give neuron nodes.
        task: A `circuits.tasks.Task` (`circuits.tasks.load_task`) or a list of `PromptPair`.
        method: Node effects by ``"ig"`` (integrated gradients per submodule, SFC's choice),
            ``"atp"``, ``"ig-joint"`` or ``"exact"`` (see `attribution.node_effects`).
        metric: A shipped metric name (``"logit_diff"``, ``"answer_logprob"``,
            ``"kl_to_clean"``) or a callable; None: ``"logit_diff"`` with patch prompts, else
            ``"answer_logprob"``.
        node_threshold: Keep nodes with ``|effect| > node_threshold``. None:
            `DEFAULT_NODE_THRESHOLD` (0.1) without ``top_k``, no threshold with it.
        edge_threshold: Keep edges with ``|weight| > edge_threshold``.
        top_k: Keep the ``top_k`` nodes of largest ``|effect|`` (before pruning); with a
            ``node_threshold`` too, only those of them above it (the intersection).
        aggregation: ``"sum"`` over positions, or ``"none"`` to keep positions (node names
            ``resid_2/17@5``; all prompts must then have the same token length).
        steps: Interpolation steps for ``"ig"`` / ``"ig-joint"`` (nodes and edges).
        batch_size: Examples per batch.
        submodules: Submodules to attribute; None for every one with a dictionary.
        edges: Compute edges and prune; False keeps the kept nodes without edges, unpruned.
        nodes: Keep exactly these node names (thresholds and ``top_k`` are then not allowed)
            and do not prune. Names carry positions (``resid_2/17@5``) exactly when
            ``aggregation`` is ``"none"``.
        progress: Progress bars (tqdm, on stderr) over batches and submodules.
        provenance: Extra provenance keys, recorded over the ones found here (e.g.
            ``{"model": "zoo", "dictionaries": "zoo"}`` for objects loaded from those specs).

    Returns:
        The pruned circuit. Its provenance holds ``model``, ``dictionaries``, ``task`` (the
        task's name, ``"prompt pairs"`` for a plain list), ``task_source`` (its file), ``split``,
        ``n_examples`` (examples used), ``method``, ``metric``, ``aggregation``, ``steps``,
        ``thresholds`` (``{"node", "edge"}``; node None when only ``top_k`` chose), ``top_k``,
        ``total_effect``, ``metric_clean``, ``edges``, ``nodes_kept`` (before pruning),
        ``circuits_version`` and ``created``. ``y`` carries the total effect (0.0 for
        zero-ablation tasks, which have none).

    Raises:
        ValueError: a negative or non-finite threshold, a ``top_k`` that is not a positive
            integer, and everything `attribution.node_effects` / `attribution.edge_effects`
            refuse (unknown method, unusable prompt pairs, ...); ``nodes`` with a threshold or
            ``top_k``, or naming a node that was not attributed.
    """
    if nodes is not None:
        nodes = list(nodes)
        if node_threshold is not None or top_k is not None:
            raise ValueError("give nodes, or node_threshold / top_k to choose them, not both")
    elif node_threshold is None and top_k is None:
        node_threshold = DEFAULT_NODE_THRESHOLD
    _check_threshold(node_threshold, "node_threshold")
    _check_threshold(edge_threshold, "edge_threshold")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")

    if not isinstance(task, (Task, Sequence)):
        task = list(task)  # an iterable of batches is read twice (nodes, then edges)

    # 1. Node effects.
    effects = node_effects(
        model,
        dictionaries,
        task,
        method=method,
        metric=metric,
        aggregation=aggregation,
        steps=steps,
        batch_size=batch_size,
        submodules=submodules,
        progress=progress,
    )

    # 2. Kept nodes.
    if nodes is None:
        kept = select_nodes(effects.nodes(), threshold=node_threshold, top_k=top_k)
    else:
        kept = _given_nodes(effects.nodes(), nodes, aggregation)

    # 3-4. Edges between kept nodes, above the edge threshold.
    weights: dict[tuple[str, str], float] = {}
    if edges and kept:
        found = edge_effects(
            model,
            dictionaries,
            task,
            kept,
            effects=effects,
            metric=metric,
            batch_size=batch_size,
            progress=progress,
        )
        weights = {pair: w for pair, w in found.items() if abs(w) > edge_threshold}

    # 5. Circuit with provenance.
    record = {
        "model": _model_name(model),
        "dictionaries": _dictionaries_name(dictionaries, effects.submodules),
        **_task_record(task),
        **effects.provenance(),
        "thresholds": {"node": node_threshold, "edge": edge_threshold},
        "top_k": top_k,
        "edges": edges,
        "nodes_kept": len(kept),
        "processes": world_size(),
        **(provenance or {}),
    }
    total = effects.total_effect
    circuit = Circuit.from_effects(
        {**kept, OUTPUT: total if total is not None else 0.0},
        weights,
        record,
        node_kind={
            name: "neuron" if isinstance(dictionaries[name], Identity) else "feature"
            for name in effects.submodules
        },
    )

    # 6. Prune to the nodes with a path to y.
    return circuit.prune() if edges and nodes is None else circuit


def _given_nodes(
    effects: Mapping[str, float], nodes: Sequence[str], aggregation: str
) -> dict[str, float]:
    """``{name: effect}`` of ``nodes``, in the order of ``effects``."""
    wanted = set(nodes)
    unknown = sorted(wanted - set(effects))
    if unknown:
        hint = (
            "; node names carry positions (resid_2/17@5) exactly when aggregation is 'none'"
            if any(("@" in name) != (aggregation == "none") for name in unknown)
            else ""
        )
        raise ValueError(
            f"{len(unknown)} given node(s) were not attributed, e.g. {unknown[:3]}{hint}"
        )
    return {name: effect for name, effect in effects.items() if name in wanted}


def _check_threshold(value: float | None, what: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")


def _model_name(model: Model) -> str:
    """The model's ``name_or_path`` (hub name or directory), else its architecture's name."""
    torch_model = model.torch_model
    name = getattr(torch_model, "name_or_path", "") or getattr(
        getattr(torch_model, "config", None), "_name_or_path", ""
    )
    return str(name) if name else model.architecture.name


def _dictionaries_name(
    dictionaries: Mapping[str, Dictionary], submodules: Iterable[str]
) -> str | dict[str, str]:
    """``"neurons"`` when every attributed dictionary is an identity, else ``{sub: "SAE(2048)"}``
    (class and width)."""
    used = {name: dictionaries[name] for name in submodules}
    if all(isinstance(d, Identity) for d in used.values()):
        return "neurons"
    return {name: f"{type(d).__name__}({d.width})" for name, d in used.items()}


def _task_record(task: TaskLike) -> dict[str, Any]:
    """``{"task", "task_source", "split"}``: a `Task`'s name, file and split."""
    if isinstance(task, Task):
        return {"task": task.name, "task_source": task.source, "split": task.split}
    return {"task": "prompt pairs", "task_source": "given", "split": None}

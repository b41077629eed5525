"""A learned mask as a full `circuits.graph.Circuit`: node effects and the edges between kept nodes.

A mask says which nodes to keep, not how much each matters or how they connect. `mask_circuit`
gives the kept nodes the same attributes as a discovered circuit's: it calls
`attribution.discover` with ``nodes=`` the mask's nodes, so

1. every node's effect comes from `attribution.node_effects` (``method``, IG by default) with the
   metric the mask was trained on (``"logit-diff"``: `circuits.metrics.logit_diff`; ``"kl"``:
   ``kl_to_clean``), summed over positions, or per position for a per-position mask;
2. edges between the kept nodes (and into ``y``) are SFC's edge effects
   (`attribution.edge_effects`), the definition every discovered circuit uses;
3. nothing is pruned: the circuit holds exactly the mask's nodes, the set its faithfulness was
   measured on.

The provenance gains a ``"mask"`` record: parametrisation, objective, ablation, candidates,
expected size and faithfulness of the binarised mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attribution.batches import TaskLike
from attribution.discover import discover
from attribution.nodes import Method
from circuits.dictionaries import Dictionary
from circuits.graph import Circuit
from circuits.models import Model
from masks.train import MaskResult

__all__ = ["mask_circuit"]

_METRICS = {"logit-diff": "logit_diff", "kl": "kl_to_clean"}


def mask_circuit(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task: TaskLike,
    mask: MaskResult,
    *,
    method: Method = "ig",
    steps: int = 10,
    edge_threshold: float = 0.01,
    batch_size: int = 16,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> Circuit:
    """The circuit of ``mask``'s kept nodes, with their effects and the edges between them.

    Args:
        model: The model the mask was trained on.
        dictionaries: Its dictionaries.
        task: Prompt pairs for the effects (usually the ones the mask was trained on).
        mask: A `masks.train.MaskResult`.
        method: Node effects by ``"ig"``, ``"atp"``, ``"ig-joint"`` or ``"exact"``.
        steps: Interpolation steps of IG (nodes and edges).
        edge_threshold: Keep edges with ``|weight| > edge_threshold``.
        batch_size: Examples per batch.
        progress: Progress bars.
        provenance: Extra provenance keys (e.g. the specs the model was loaded from).

    Returns:
        An unpruned `Circuit` whose nodes are exactly ``mask.nodes`` (plus ``y``).
    """
    record = {
        "mask": {
            "parametrisation": mask.parametrisation,
            "objective": mask.objective,
            "ablation": mask.ablation,
            "positions": mask.positions,
            "candidates": mask.n_candidates,
            "expected_size": mask.expected_size,
            "faithfulness": mask.faithfulness,
            "steps": len(mask.loss),
        },
        **(provenance or {}),
    }
    return discover(
        model,
        dictionaries,
        task,
        method=method,
        metric=_METRICS[mask.objective],
        edge_threshold=edge_threshold,
        aggregation="none" if mask.positions else "sum",
        steps=steps,
        batch_size=batch_size,
        submodules=mask.submodules,
        nodes=mask.nodes,
        progress=progress,
        provenance=record,
    )

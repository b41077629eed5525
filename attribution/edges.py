"""Edge effects between kept nodes, from one forward and batched Jacobian products.

Sparse Feature Circuits (Marks et al., ICLR 2025) defines the effect of an upstream node ``u`` on
the metric ``m`` through a downstream node ``d`` as

    IE(u -> d) = dm/dd . dd/du . (u_patch - u_clean)

``dm/dd`` is ``d``'s gradient (the left vector), ``u_patch - u_clean`` is ``u``'s delta, and
``dd/du`` is the Jacobian at the clean input with every attributed submodule between ``u`` and
``d`` held fixed (stop-gradient). Nodes are dictionary features and error terms
(`attribution.splice`); an error node's ``[d_model]`` delta and gradient are contracted over
``d_model``, and edges out of and into error nodes get their real values.

Wiring. Upstream of an attributed submodule ``d`` are the attributed submodules before it, back to
and including the nearest attributed ``resid_*`` or ``embed``, except ``attn_i -> mlp_i`` in
parallel-attention models (`wiring`). With every submodule attributed this is SFC's table: per
layer ``mlp_i -> resid_i``, ``attn_i -> resid_i``, ``attn_i -> mlp_i`` (sequential blocks only),
``resid_{i-1} -> mlp_i``, ``resid_{i-1} -> attn_i``, ``resid_{i-1} -> resid_i``, with ``embed`` as
``resid_{-1}``. The last attributed submodule feeds ``y`` with edge weight = its node effect.

Steps, per batch of prompt pairs:

1. **Held-fixed forward** of the clean prompts, one nnsight trace. At every attributed submodule
   ``s`` in forward order: read ``x_s``, still attached to the graph of the leaves upstream; split
   it, ``f_s = encode(x_s)``, ``e_s = x_s - decode(f_s)``, attached too; and write back ``x_s``
   itself plus zeros whose gradient reaches only DETACHED leaves ``f~_s`` (the kept feature
   columns) and ``e~_s``. The graph of ``(f_d, e_d)`` therefore reaches exactly the leaves of the
   submodules that feed ``d`` without passing another attributed submodule, whose outputs are cut
   leaves: the wiring above with the intermediates held fixed. ``resid_{i-1} -> resid_i`` goes
   through the skip connection only; in a sequential block ``resid_{i-1} -> mlp_i`` sees
   ``attn_i`` held fixed. Every Jacobian comes from this one forward.
2. **Deltas**: one patch forward without gradients (zero-ablation without patch prompts:
   delta = -clean).
3. **Left vectors**. ``gradient="atp"``: the metric's total derivative at the clean input, the
   gradient attribution patching uses (the same numbers as `attribution.atp`), read off the graph
   of step 1: the metric's backward gives each leaf's direct gradient, then a sweep over the
   submodules in reverse order passes each submodule's finished gradient (its error leaf's,
   which is the gradient at its activation) to the earlier leaves by one vector-Jacobian product
   through ``x_s``; one backward in all. ``"ig"`` / ``"ig-joint"``: the integrated-gradients mean
   gradient of each downstream submodule (`attribution.ig`), while ``dd/du`` stays the Jacobian
   at the clean input. That is what the reference implementation does for edges when its node
   effects come from IG, so the edges match IG node effects.
4. **Edges into each downstream submodule** ``d``, between kept nodes only, by one of two exact
   routes with the same numbers:

   - ``vjp``: the left vector restricted to one kept downstream node is a cotangent on ``f_d``;
     ``chunk_size`` of them go through one batched backward
     (``torch.autograd.grad(..., is_grads_batched=True)``) to every upstream leaf at once, and are
     contracted with the upstream deltas at the kept upstream nodes right away. Cost grows with
     the kept downstream nodes.
   - ``jvp``: the delta restricted to one kept upstream node is a tangent. ``J t`` is the gradient
     of ``(J^T c) . t`` with respect to the cotangent ``c``: one ``create_graph`` backward builds
     ``J^T c``, then each chunk of tangents is one batched backward, contracted with the left
     vector at the kept downstream features. Cost grows with the kept upstream nodes.

   ``direction="auto"`` takes ``jvp`` for ``d``'s features when its upstream submodules keep
   fewer nodes altogether than ``d`` keeps features (one product costs about the same either way),
   else ``vjp``. Error nodes of ``d`` (one, or one per kept position) always go by ``vjp``. Where
   the backward cannot itself be differentiated (PyTorch's fused CPU attention kernel, i.e. edges
   into ``attn_*``), ``jvp`` falls back to ``vjp`` for that submodule.
5. **Aggregate** as SFC's ``get_circuit`` does. ``"sum"``: each example's edge summed over both
   ends' positions, then the mean over examples. ``"none"``: positions kept, ``u@q -> d@p``
   averaged over examples; pairs with ``q > p`` are left out (attention carries earlier positions
   to later ones, every other connection stays within a position; the reference's dense blocks
   hold every pair, and ``q > p`` is exactly zero there). Sums accumulate over batches and are
   divided by the number of examples once, so uneven batches weigh each example the same.

Kept nodes. ``resid_2/17`` (``"sum"``) is feature 17 at every position of every example;
``resid_2/17@5`` (``"none"``) is feature 17 at position 5 of every example. The reference
thresholds node effects per (example, position) before aggregating; here the nodes are the
aggregated ones a circuit shows (`attribution.NodeEffects.nodes`).

Cost per batch (``"atp"``): one clean forward that keeps its graph, one patch forward without
gradients, one backward (in pieces), and per downstream submodule ``ceil(n / chunk_size)``
batched backwards with ``n = min(kept upstream nodes, kept downstream features)`` plus one for
its error nodes (``jvp`` adds one ``create_graph`` backward). Each of these runs only between
``d`` and its upstream leaves, about one block, never the whole model. Only kept feature columns
are leaves and, for the shipped SAE kinds, only kept columns of the downstream encoder are
differentiated, so a product's cost does not grow with the dictionary width (except through an
error node, whose Jacobian involves the whole dictionary). ``"ig"`` adds ``steps`` forward and
backward rows per example and downstream submodule (``"ig-joint"``: ``steps`` in all). The
reference runs one forward per submodule pair and one backward through the model per kept
(example, position, feature).

Memory: a batched product holds ``chunk_size x batch x pos x m`` values per feature leaf and
``chunk_size x batch x pos x d_model`` per error leaf it reaches; no dense
``[nodes x batch x pos x width]`` block beyond one chunk is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from attribution.batches import PairBatch, TaskLike, pair_batches
from attribution.effects import NodeEffects
from attribution.ig import mean_gradients
from attribution.kept import NodeSpec, _contract, _Kept, _kept_nodes, _names_of
from attribution.nodes import AGGREGATIONS, Aggregation, _check_equal_lengths
from attribution.passes import (
    _decoder_rows,
    _direct,
    _edges_jvp,
    _edges_vjp,
    _held_fixed,
    _kept_encoder,
    _NoDoubleBackward,
    _pack,
    _total,
)
from attribution.splice import Values, check_submodules, patch_side
from circuits.dictionaries import Dictionary
from circuits.distributed import all_sum, shard
from circuits.graph import OUTPUT
from circuits.metrics import METRICS, BatchInfo, Metric, get_metric
from circuits.models import Model

__all__ = ["Direction", "Gradient", "edge_effects", "wiring"]

Gradient = Literal["atp", "ig", "ig-joint"]
"""Which left vector ``dm/dd``: the clean-input gradient, or an IG mean gradient."""
Direction = Literal["auto", "vjp", "jvp"]
"""How Jacobians are applied: per downstream node (``vjp``), per upstream node (``jvp``)."""

GRADIENTS = ("atp", "ig", "ig-joint")
DIRECTIONS = ("auto", "vjp", "jvp")
_GRADIENT_OF_METHOD = {"atp": "atp", "exact": "atp", "ig": "ig", "ig-joint": "ig-joint"}


# ------------------------------------------------------------------------------------------------
# Wiring and kept nodes


def wiring(model: Model, submodules: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The upstream submodules of each attributed submodule, and of the output node ``y``.

    Args:
        model: The model (its submodule kinds and ``parallel_attn``).
        submodules: The attributed submodules, in forward order.

    Returns:
        ``{downstream: (upstream, ...)}`` in forward order, with key `OUTPUT` (``"y"``) last: the
        attributed submodules before ``downstream``, back to and including the nearest attributed
        ``resid_*`` or ``embed``, without ``attn_i`` for ``mlp_i`` in parallel-attention models.
    """
    kinds = {sub.name: sub for sub in model.submodules}
    out: dict[str, tuple[str, ...]] = {}
    for position, down in enumerate([*submodules, OUTPUT]):
        upstream = []
        for up in reversed(submodules[:position]):
            same_block_attn = (
                down != OUTPUT
                and kinds[up].kind == "attn"
                and kinds[down].kind == "mlp"
                and kinds[up].layer == kinds[down].layer
            )
            if not (model.parallel_attn and same_block_attn):
                upstream.append(up)
            if kinds[up].kind in ("resid", "embed"):
                break
        out[down] = tuple(reversed(upstream))
    return out


# ------------------------------------------------------------------------------------------------
# One batch


@dataclass(frozen=True, eq=False)
class _BatchEdges:
    """Edge sums over one batch's examples.

    Attributes:
        edges: ``{(up, down): [n_down_kept, n_up_kept]}``.
        output: ``{up: [n_up_kept]}`` for the edges into ``y``.
    """

    edges: dict[tuple[str, str], Tensor]
    output: dict[str, Tensor]


def _batch_edges(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: PairBatch,
    *,
    metric: Metric,
    names: Sequence[str],
    wires: Mapping[str, tuple[str, ...]],
    kept: Mapping[str, _Kept],
    gradient: Gradient,
    steps: int,
    chunk_size: int | None,
    direction: Direction,
    rows: Mapping[str, Tensor],
    encoders: Mapping[str, Callable[[Tensor, Tensor], Tensor] | None],
    no_double_backward: set[str],
) -> _BatchEdges:
    # 1. Held-fixed forward.
    splits, logits = _held_fixed(model, dictionaries, batch.clean, names, kept, rows, encoders)
    info = batch.info.with_clean_logits(logits)
    metric_clean = metric(logits, info)
    clean = {name: splits[name].clean for name in names}
    mask = batch.mask.to(logits.device)[:, :, None]  # [batch, pos, 1]

    def at_kept(name: str, values: Values) -> Values:
        """Kept feature columns only, zero at padding: ``[batch, pos, m]`` / ``[.., d_model]``."""
        features = values.features[..., kept[name].columns.to(mask.device)]
        return Values(
            features * mask.to(features.dtype), values.error * mask.to(values.error.dtype)
        )

    # 2. Deltas.
    patch, _ = patch_side(model, dictionaries, batch, names, metric, info, clean)
    delta = {
        name: at_kept(
            name,
            Values(
                patch[name].features - clean[name].features, patch[name].error - clean[name].error
            ),
        )
        for name in names
    }
    # 3. Left vectors, zero at padding.
    with torch.enable_grad():
        direct = _direct(splits, metric_clean, names)
        if gradient == "atp":
            left = _pack(_total(splits, direct, names), names)
        else:
            targets = [
                name
                for name in names
                if len(kept[name])
                and (name == names[-1] or any(len(kept[up]) for up in wires[name]))
            ]
            left = mean_gradients(
                model,
                dictionaries,
                batch.clean,
                {name: clean[name] for name in names},
                patch,
                info,
                metric,
                steps=steps,
                targets=targets,
                joint=gradient == "ig-joint",
            )
            left = {name: at_kept(name, grad) for name, grad in left.items()}
    direct = _pack(direct, names)
    left = {n: Values(*(t * mask.to(t.dtype) for t in g)) for n, g in left.items()}

    # 4. Edges into each downstream submodule: its features in the cheaper direction, its
    # error nodes (one, or one per kept position) always by vector-Jacobian products.
    edges: dict[tuple[str, str], Tensor] = {}
    with torch.enable_grad():
        for down in names:
            ups = [up for up in wires[down] if len(kept[up])]
            if not len(kept[down]) or not ups:
                continue
            n_features = kept[down].n_features
            n_up = sum(len(kept[up]) for up in ups)
            use_jvp = n_features > 0 and (
                direction == "jvp" or (direction == "auto" and n_up < n_features)
            )
            args = (down, ups, splits, kept, left[down], delta, chunk_size)
            into_features = None
            if use_jvp and down not in no_double_backward:
                try:
                    into_features = _edges_jvp(*args)
                except _NoDoubleBackward as error:
                    no_double_backward.add(down)
                    if direction == "jvp":
                        warnings.warn(
                            f"edges into {down}: the model's backward is not twice "
                            f"differentiable here ({error}); using vector-Jacobian products",
                            stacklevel=4,
                        )
            if into_features is None:
                into_features = _edges_vjp(*args, rows=(0, n_features))
            into_errors = _edges_vjp(*args, rows=(n_features, len(kept[down])))
            for up in ups:
                edges[(up, down)] = torch.cat([into_features[up], into_errors[up]])

    # Edges into y: the last submodule's node effects; direct effects for other feeders.
    output = {}
    for up in wires[OUTPUT]:
        if not len(kept[up]):
            continue
        grad = left[up] if up == names[-1] else Values(*(t * mask.to(t.dtype) for t in direct[up]))
        output[up] = _contract(kept[up], Values(*(t[None] for t in grad)), delta[up])[0]
    return _BatchEdges(edges, output)


# ------------------------------------------------------------------------------------------------
# The entry point


def edge_effects(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task_or_batches: TaskLike,
    nodes: NodeSpec,
    *,
    effects: NodeEffects | None = None,
    metric: str | Callable[[Tensor, BatchInfo], Tensor] | Metric | None = None,
    aggregation: Aggregation | None = None,
    gradient: Gradient | None = None,
    steps: int | None = None,
    submodules: Iterable[str] | None = None,
    batch_size: int = 16,
    chunk_size: int | None = 64,
    direction: Direction = "auto",
    progress: bool = True,
) -> dict[tuple[str, str], float]:
    """Effects of the edges between kept nodes (SFC's definition; see the module docstring).

    Args:
        model: The model (`circuits.models.load_model`).
        dictionaries: ``{submodule: Dictionary}``; widths may differ between submodules.
        task_or_batches: A `circuits.tasks.Task`, a list of `PromptPair`, or an iterable of
            batches, as for `attribution.node_effects`.
        nodes: The kept nodes: node names (``"resid_2/17"``, ``"mlp_0/ε"``; with ``"@<position>"``
            for aggregation ``"none"``; ``"y"`` is ignored), as a collection or as the keys of
            ``{name: effect}`` such as ``effects.nodes(threshold=0.1)``; or
            ``{submodule: indices}`` where an index is a feature index, ``"ε"``, ``"17@5"``-style
            text or an ``(index, position)`` pair.
        effects: The node effects the nodes were chosen from. When given, ``aggregation``,
            ``gradient`` (``"ig"`` / ``"ig-joint"`` after IG node effects, else ``"atp"``: exact
            patching has no gradient), ``steps``, ``submodules`` and ``metric`` default to what it
            records, so the edges match those nodes.
        metric: A shipped metric name or a callable ``(logits_last [batch, vocab], info) ->
            [batch]``; None: ``effects.metric`` (which must then be a shipped one), else
            ``"logit_diff"`` with patch prompts and ``"answer_logprob"`` without.
        aggregation: ``"sum"`` (default): each edge summed over upstream and downstream positions,
            averaged over examples. ``"none"``: positions kept, ``u@q -> d@p`` for ``q <= p``,
            averaged over examples (all prompts must have the same token length).
        gradient: The left vector ``dm/dd``: ``"atp"`` (default; the gradient at the clean input),
            ``"ig"`` or ``"ig-joint"`` (the IG mean gradient of the downstream submodule, with
            ``steps`` steps).
        steps: IG steps (default 10).
        submodules: The attributed submodules: each is split into features and error and held
            fixed between the ends of the edges around it. None: ``effects.submodules``, else
            every submodule with a dictionary.
        batch_size: Examples per batch.
        chunk_size: Vectors per batched Jacobian product (memory grows linearly with it; see the
            module docstring); None puts all of a submodule's kept nodes in one product.
        direction: ``"vjp"`` (one product per kept downstream node), ``"jvp"`` (one per kept
            upstream node) or ``"auto"`` (the fewer of the two, per downstream submodule).
        progress: Show a progress bar over batches.

    Returns:
        ``{(upstream name, downstream name): weight}`` averaged over examples, for every wired
        pair of kept nodes whose weight is not exactly zero (pairs the model does not connect,
        e.g. different positions outside attention, weigh exactly zero), plus
        ``(node, "y")`` for the kept nodes of the last attributed submodule: their node effects
        (with the left vector in use). Were the last attributed submodule not a residual, the
        other submodules wired to ``y`` get their direct effect there (clean-input gradient with
        the later attributed submodules held fixed, times the delta). The names are those of
        `circuits.graph`; `circuits.graph.Circuit.from_effects` takes the mapping as it is.

    Raises:
        ValueError: an unknown aggregation, gradient or direction; a malformed node name, a
            submodule the model lacks, a node in a submodule that is not attributed (no
            dictionary), an index beyond the dictionary's width, a position missing or present
            against the aggregation or beyond the prompts; a bad ``chunk_size``; options that
            contradict ``effects``.
        circuits.tasks.TaskError: unusable prompt pairs.
    """
    # Options, with defaults from the node effects.
    if effects is not None:
        aggregation = _agree(aggregation, effects.aggregation, "aggregation")
        if effects.method not in _GRADIENT_OF_METHOD:
            raise ValueError(f"unknown node-effect method {effects.method!r}")
        gradient = gradient if gradient is not None else _GRADIENT_OF_METHOD[effects.method]
        steps = steps if steps is not None else effects.steps
        if submodules is None:
            submodules = effects.submodules
    aggregation = aggregation if aggregation is not None else "sum"
    gradient = gradient if gradient is not None else "atp"
    steps = steps if steps is not None else 10
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    if gradient not in GRADIENTS:
        raise ValueError(f"unknown gradient {gradient!r}; choose one of {', '.join(GRADIENTS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {', '.join(DIRECTIONS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if chunk_size is not None and (
        not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    names = check_submodules(model, dictionaries, submodules)
    positions = aggregation == "none"
    kept = _kept_nodes(_names_of(nodes), names, dictionaries, model, positions)
    wires = wiring(model, names)
    with torch.no_grad():
        rows = {
            name: _decoder_rows(dictionaries[name], kept[name].columns, model.device, model.dtype)
            for name in names
        }
        encoders = {name: _kept_encoder(dictionaries[name], kept[name].columns) for name in names}

    # Batches and metric.
    batches = pair_batches(model, task_or_batches, batch_size=batch_size)
    has_patch = batches[0].patch is not None
    if metric is None and effects is not None:
        if effects.metric not in METRICS:
            raise ValueError(
                f"the node effects were computed with metric {effects.metric!r}, which is not a "
                "shipped one; pass the same callable as metric="
            )
        metric = effects.metric
    checked = get_metric(
        metric if metric is not None else ("logit_diff" if has_patch else "answer_logprob")
    )
    if positions:
        _check_equal_lengths(batches)
        length = batches[0].clean.input_ids.shape[1]
        for record in kept.values():
            for name, position in zip(record.names, _positions_of(record), strict=True):
                if position >= length:
                    raise ValueError(
                        f"node {name!r}: the prompts have {length} tokens "
                        f"(positions 0..{length - 1})"
                    )

    # Per batch, summed over examples.
    sums: dict[tuple[str, str], Tensor] = {}  # {(up, down): [n_down, n_up]}
    into_y: dict[str, Tensor] = {}  # {up: [n_up]}
    count, no_double_backward = 0, set()
    for _, batch in tqdm(shard(batches), desc="edge effects", disable=not progress):
        found = model.in_session(
            _batch_edges,
            model,
            dictionaries,
            batch,
            metric=checked,
            names=names,
            wires=wires,
            kept=kept,
            gradient=gradient,
            steps=steps,
            chunk_size=chunk_size,
            direction=direction,
            rows=rows,
            encoders=encoders,
            no_double_backward=no_double_backward,
        )
        for key, block in found.edges.items():
            sums[key] = sums[key] + block if key in sums else block
        for key, block in found.output.items():
            into_y[key] = into_y[key] + block if key in into_y else block
        count += len(batch)
    keys, ys = sorted(sums), sorted(into_y)
    *blocks, total = all_sum(
        [*(sums[k] for k in keys), *(into_y[k] for k in ys), torch.tensor(float(count))]
    )
    sums = dict(zip(keys, blocks[: len(keys)], strict=True))
    into_y = dict(zip(ys, blocks[len(keys) :], strict=True))
    count = int(total.item())

    # Names out.
    out: dict[tuple[str, str], float] = {}
    for (up, down), block in sums.items():
        mean = (block / count).cpu()  # [n_down, n_up]
        keep = mean != 0
        if positions:
            down_pos = torch.tensor(_positions_of(kept[down]), dtype=torch.long)
            up_pos = torch.tensor(_positions_of(kept[up]), dtype=torch.long)
            keep &= up_pos[None, :] <= down_pos[:, None]
        down_rows, up_rows = keep.nonzero(as_tuple=True)
        pairs = zip(down_rows.tolist(), up_rows.tolist(), mean[keep].tolist(), strict=True)
        for i, j, weight in pairs:
            out[(kept[up].names[j], kept[down].names[i])] = weight
    for up, block in into_y.items():
        for name, weight in zip(kept[up].names, (block / count).tolist(), strict=True):
            out[(name, OUTPUT)] = weight
    return out


def _agree(given, recorded, what: str):
    if given is not None and given != recorded:
        raise ValueError(
            f"{what}={given!r} contradicts the node effects given, computed with {what}="
            f"{recorded!r}"
        )
    return recorded


def _positions_of(kept: _Kept) -> list[int]:
    """Each kept row's position (``"none"`` aggregation), in row order."""
    return [*kept.feature_position.tolist(), *kept.error_position.tolist()]

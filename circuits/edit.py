"""Edited models: run (score, trace, generate) a model with some of its nodes changed.

An edit is a small frozen record naming nodes (``resid_2/17``, ``mlp_0/ε``, optionally
``@pos``; see `circuits.graph`):

- `Ablate`: set nodes to their ablation value, ``"zero"`` or ``"mean"``, with the values and
  node masks of the ablation engine (`circuits.ablation.ablation_values`,
  `circuits.ablation.keep_nodes`);
- `Clamp`: set one feature's activation to a fixed value;
- `Steer`: add ``scale`` times one feature's decoder direction, optionally only where the feature
  fires.

`edited` applies a list of edits inside a ``with`` block:

    with edited(model, dictionaries, [Ablate(["resid_1/3", "mlp_0/ε"]), Steer("resid_0/5", 4.0)]):
        logits = model.forward(batch)                       # one forward
        tokens = model.generate(batch, max_new_tokens=5)    # every new position too
        with model.trace(batch): ...                        # any trace, any toolkit method

The edits are one nnsight edit of the model's envoy (``model.lm.edit``), replayed on every
forward that goes through nnsight, locally or remotely. Steps, at each edited submodule, in
forward order (`circuits.models.Model.read` / ``write``):

1. ``f = encode(x)`` ``[batch, pos, width]`` and ``e = x - decode(f)`` ``[batch, pos, d_model]``.
2. ``f' = where(set, value, f)`` for ablated and clamped features; ``e' = where(set, value, e)``
   for ablated error nodes. Later edits of the same node win.
3. ``x' = x + (decode(f') - decode(f)) + (e' - e) + sum of steering vectors``; the feature
   terms are those of `circuits.ablation.run_ablated`, so an ablation here gives its numbers.
4. Positions where nothing changed keep ``x`` itself, bit for bit.

Edits without a position apply at every position of every call, including the positions
`generate` adds one at a time. Edits with ``@pos`` apply at that absolute token position; the
offset of a call that continues a key/value cache is the length of that cache (`_offset`).

Leaving the block drops the edit, also when the body raises, so the model computes exactly what
it computed before. Nothing on the torch model is replaced, patched or hooked.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from nnsight.intervention.iterator import Iterations
from torch import Tensor

from circuits.ablation import AblationValues, ablation_values, keep_nodes
from circuits.dictionaries import Dictionary
from circuits.graph import OUTPUT, Circuit, parse_node_name
from circuits.models import Model

__all__ = ["Ablate", "Clamp", "Steer", "Edit", "edited", "read_nodes", "next_token_change"]


# ------------------------------------------------------------------------------------------------
# Edit records


@dataclass(frozen=True, eq=False)
class Ablate:
    """Set nodes to their ablation value.

    Attributes:
        nodes: Node names, features and error nodes, all with ``@pos`` or none.
        how: ``"zero"`` or ``"mean"``.
        values: From `circuits.ablation.ablation_values` with the same ``how``; needed for
            ``"mean"``, computed here for ``"zero"`` when None.
    """

    nodes: tuple[str, ...]
    how: Literal["zero", "mean"] = "zero"
    values: AblationValues | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.nodes, str):
            raise TypeError("Ablate takes a collection of node names, not one string")
        object.__setattr__(self, "nodes", tuple(self.nodes))
        if not self.nodes:
            raise ValueError("Ablate needs at least one node name")
        if self.how not in ("zero", "mean"):
            raise ValueError(f"Ablate.how must be 'zero' or 'mean', got {self.how!r}")
        if self.values is not None and self.values.how != self.how:
            raise ValueError(
                f"Ablate(how={self.how!r}) was given {self.values.how!r} ablation values"
            )
        if self.how == "mean" and self.values is None:
            raise ValueError(
                "mean ablation needs values: Ablate(nodes, how='mean', "
                "values=ablation_values(model, dictionaries, reference, 'mean'))"
            )


@dataclass(frozen=True)
class Clamp:
    """Set one feature's activation to ``value`` (a feature node, not an error node)."""

    node: str
    value: float


@dataclass(frozen=True)
class Steer:
    """Add ``scale`` times a feature's decoder direction ``decode(onehot) - decode(0)``.

    Attributes:
        node: A feature node.
        scale: The multiple of the direction added.
        only_where_active: Add it only at positions where the feature fires (``f > 0`` in the
            unedited activation).
    """

    node: str
    scale: float
    only_where_active: bool = False


Edit = Ablate | Clamp | Steer


# ------------------------------------------------------------------------------------------------
# One submodule's edits, compiled to tensors


@dataclass
class _Set:
    """Set the nodes where ``mask`` is True to ``values``.

    ``mask``: features ``[width]`` or ``[pos, width]``; error ``[]`` or ``[pos]``.
    ``values``: ``[width]`` for features, ``[d_model]`` for the error.
    """

    error: bool
    mask: Tensor
    values: Tensor
    positioned: bool


@dataclass
class _Add:
    """Add ``delta [d_model]``, where feature ``index`` fires when ``only_where_active``, at
    ``position`` only when it is not None."""

    index: int
    delta: Tensor
    only_where_active: bool
    position: int | None


@dataclass
class _Plan:
    """The edits of one submodule, in the order given."""

    dictionary: Dictionary
    sets: list[_Set] = field(default_factory=list)
    adds: list[_Add] = field(default_factory=list)


def _rows(t: Tensor, offset: int, n_pos: int) -> Tensor:
    """Rows ``offset .. offset + n_pos`` of a per-position mask, False beyond its end."""
    rows = t[offset : offset + n_pos]
    if rows.shape[0] < n_pos:
        rows = torch.cat([rows, rows.new_zeros(n_pos - rows.shape[0], *rows.shape[1:])])
    return rows


def _feature_node(
    model: Model, dictionaries: Mapping[str, Dictionary], name: str, what: str
) -> tuple[str, int, int | None]:
    """``(submodule, index, position)`` of a feature node, checked against the dictionaries."""
    node = parse_node_name(name)
    if node.index is None:
        raise ValueError(f"{what} needs a feature node, got {name!r}")
    keep_nodes(model, dictionaries, [name], submodules=[])  # checks submodule, dictionary, width
    return node.submodule, node.index, node.position


def _plans(
    model: Model, dictionaries: Mapping[str, Dictionary], edits: Sequence[Edit]
) -> dict[str, _Plan]:
    """Compile ``edits`` into one `_Plan` per edited submodule."""
    device, dtype = model.device, model.dtype
    plans: dict[str, _Plan] = {}

    def plan(sub: str) -> _Plan:
        if sub not in plans:
            plans[sub] = _Plan(dictionaries[sub])
        return plans[sub]

    for edit in edits:
        if isinstance(edit, Ablate):
            subs = sorted({parse_node_name(n).submodule for n in edit.nodes})
            masks = keep_nodes(model, dictionaries, edit.nodes, submodules=subs)  # named: True
            values = edit.values
            if values is None:
                values = ablation_values(model, dictionaries, None, "zero", submodules=subs)
            for sub in subs:
                if sub not in values.values:
                    raise ValueError(
                        f"the {edit.how} ablation values cover {', '.join(values.submodules)}, "
                        f"not {sub}; compute them with submodules including {sub!r}"
                    )
                f_abl, e_abl = values.values[sub]  # [width], [d_model]
                mask = masks[sub]
                positioned = mask.positioned
                if bool(mask.features.any()):
                    plan(sub).sets.append(
                        _Set(False, mask.features.to(device), f_abl.to(device, dtype), positioned)
                    )
                if bool(mask.error.any()):
                    plan(sub).sets.append(
                        _Set(True, mask.error.to(device), e_abl.to(device, dtype), positioned)
                    )
        elif isinstance(edit, Clamp):
            sub, index, position = _feature_node(model, dictionaries, edit.node, "Clamp")
            width = dictionaries[sub].width
            rows = () if position is None else (position + 1,)
            mask = torch.zeros(*rows, width, dtype=torch.bool, device=device)
            mask[(*(() if position is None else (position,)), index)] = True
            value = torch.full((width,), float(edit.value), dtype=dtype, device=device)
            plan(sub).sets.append(_Set(False, mask, value, position is not None))
        elif isinstance(edit, Steer):
            sub, index, position = _feature_node(model, dictionaries, edit.node, "Steer")
            d = dictionaries[sub]
            with torch.no_grad():
                zero = torch.zeros(1, 1, d.width, dtype=dtype, device=device)
                unit = zero.clone()
                unit[..., index] = 1
                direction = (d.decode(unit) - d.decode(zero))[0, 0]  # [d_model]
            delta = float(edit.scale) * direction
            plan(sub).adds.append(_Add(index, delta, bool(edit.only_where_active), position))
        else:
            raise TypeError(
                f"an edit is an Ablate, Clamp or Steer, got {type(edit).__name__}: {edit!r}"
            )
    return plans


def _apply(plan: _Plan, x: Tensor, offset: int) -> Tensor:
    """The edited activation ``[batch, pos, d_model]`` (see the module docstring, steps 1-4)."""
    d = plan.dictionary
    n_pos = x.shape[1]
    f = d.encode(x)  # [batch, pos, width]
    x_hat = d.decode(f)  # [batch, pos, d_model]
    new = x
    changed = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)  # [batch, pos]

    feature_sets = [s for s in plan.sets if not s.error]
    if feature_sets:
        f_new = f
        for s in feature_sets:
            mask = _rows(s.mask, offset, n_pos) if s.positioned else s.mask  # [(pos,) width]
            f_new = torch.where(mask, s.values.to(f.dtype), f_new)
        new = new + (d.decode(f_new) - x_hat)
        changed |= (f_new != f).any(dim=-1)
    error_sets = [s for s in plan.sets if s.error]
    if error_sets:
        e = x - x_hat  # [batch, pos, d_model]
        e_new = e
        for s in error_sets:
            mask = _rows(s.mask, offset, n_pos) if s.positioned else s.mask  # [(pos)]
            e_new = torch.where(mask[..., None], s.values.to(e.dtype), e_new)
        new = new + (e_new - e)
        changed |= (e_new != e).any(dim=-1)
    for add in plan.adds:
        where = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # [batch, pos]
        if add.position is not None:
            at = torch.zeros(n_pos, dtype=torch.bool, device=x.device)
            if offset <= add.position < offset + n_pos:
                at[add.position - offset] = True
            where = where & at
        if add.only_where_active:
            where = where & (f[..., add.index] > 0)
        new = torch.where(where[..., None], new + add.delta.to(x.dtype), new)
        changed |= where
    return torch.where(changed[..., None], new, x)


def _offset(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """Tokens already in the key/value cache that a forward call continues (0 without one).

    The cache is recognised by its type, `transformers.Cache`, whatever the argument is called
    (``past_key_values`` before transformers 5.24, ``cache`` since), and its length is read
    through the public ``Cache.get_seq_length``, which counts every token seen, also for
    sliding-window layers that keep only the last few.
    """
    from transformers import Cache

    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return int(value.get_seq_length())
    return 0


# ------------------------------------------------------------------------------------------------
# The context


def _install(model: Model, plans: Mapping[str, _Plan], order: Sequence[str]) -> None:
    """Store the edits on the model's nnsight envoy: at every forward (each generation step
    too), read the cache offset, then edit each submodule of ``order`` in forward order."""
    with model.lm.edit(inplace=True):
        for _ in Iterations()[:]:
            args, kwargs = model.lm.inputs
            offset = _offset(args, kwargs)
            for name in order:
                model.write(name, _apply(plans[name], model.read(name), offset))


@contextlib.contextmanager
def edited(
    model: Model, dictionaries: Mapping[str, Dictionary], edits: Iterable[Edit]
) -> Iterator[Model]:
    """Apply ``edits`` to every forward of ``model`` inside the ``with`` block.

    The edits are an nnsight edit of ``model.lm``: `Model.forward`, `Model.generate` (every
    step), `Model.trace` and so every method of the toolkit see them, wherever the model runs
    (``remote``; the edit travels with each request). A trace's own reads of an edited
    submodule see the edited activation. Calling ``model.torch_model`` directly bypasses them.
    On leaving the block (also by an exception) the edit is dropped and the model computes
    exactly what it computed before.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``; each edited submodule needs one.
        edits: `Ablate`, `Clamp` and `Steer` records, applied in order (a later edit of the same
            node overrides an earlier one; steering adds on top).

    Yields:
        ``model`` itself.

    Raises:
        ValueError: for no edits, a malformed or unknown node name, a submodule without a
            dictionary, a feature index beyond its dictionary, an error node given to `Clamp` or
            `Steer`, or ablation values that miss a submodule.
    """
    edits = list(edits)
    if not edits:
        raise ValueError("no edits given; pass Ablate, Clamp or Steer records")
    plans = _plans(model, dictionaries, edits)
    order = [sub.name for sub in model.submodules if sub.name in plans]
    before = list(model.lm._edits)
    try:
        _install(model, plans, order)
        with warnings.catch_warnings():
            # The edit loops over every forward of a run; nnsight warns when a run ends
            # before the loop's next step, which is how every run ends.
            warnings.filterwarnings("ignore", message=".*was never reached: the loop asked")
            yield model
    finally:
        model.lm._edits = before


# ------------------------------------------------------------------------------------------------
# Helpers for the command line


def read_nodes(path: str | os.PathLike) -> list[str]:
    """Node names from a file: a circuit JSON or a directory holding ``circuit.json`` (every node
    but ``y``), or text with one name per line, blank lines and ``#`` comments ignored.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a malformed name or a file that names no node.
    """
    path = Path(path)
    text = "" if path.is_dir() else path.read_text(encoding="utf-8")
    if path.is_dir() or text.lstrip().startswith("{"):
        names = [name for name in Circuit.load(path).graph if name != OUTPUT]
    else:
        names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        names = [name for name in names if name]
        for name in names:
            parse_node_name(name)
    if not names:
        raise ValueError(f"{path} names no node")
    return names


def next_token_change(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    prompt: str,
    edits: Sequence[Edit],
    *,
    top: int = 10,
) -> dict[str, Any]:
    """Next-token probabilities after ``prompt`` without and with ``edits``.

    Returns:
        A plain dict: ``prompt``, ``before`` and ``after`` (the ``top`` tokens of each run, each
        ``{"token", "id", "before", "after", "change"}``) and ``total_variation`` (half the L1
        distance between the two distributions).
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    batch = model.tokenize([prompt])
    n_tokens = batch.input_ids.shape[1]
    unknown = model.tokenizer.unk_token_id
    if unknown is not None and bool((batch.input_ids == unknown).any()):
        raise ValueError(
            f"{prompt!r} has words the tokenizer does not know (read as "
            f"{model.tokenizer.unk_token!r}); the edit would be measured on another prompt"
        )
    for edit in edits:
        for name in edit.nodes if isinstance(edit, Ablate) else [edit.node]:
            position = parse_node_name(name).position
            if position is not None and position >= n_tokens:
                raise ValueError(
                    f"node {name} is at position {position}, but {prompt!r} has {n_tokens} "
                    f"tokens (positions 0-{n_tokens - 1})"
                )
    with torch.no_grad():
        before = batch.at_last(model.forward(batch))[0].double().softmax(-1)  # [vocab]
        with edited(model, dictionaries, edits):
            after = batch.at_last(model.forward(batch))[0].double().softmax(-1)  # [vocab]

    def rows(p: Tensor) -> list[dict[str, Any]]:
        ids = p.topk(min(top, p.shape[0])).indices.tolist()
        return [
            {
                "token": model.tokenizer.decode([i]),
                "id": i,
                "before": float(before[i]),
                "after": float(after[i]),
                "change": float(after[i] - before[i]),
            }
            for i in ids
        ]

    return {
        "prompt": prompt,
        "before": rows(before),
        "after": rows(after),
        "total_variation": float((after - before).abs().sum() / 2),
    }

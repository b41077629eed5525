"""Run a model with some of its nodes ablated: the one ablation engine of this toolkit.

Nodes are those of Sparse Feature Circuits (Marks et al., ICLR 2025): at a submodule with a
dictionary the activation ``x [batch, pos, d_model]`` splits into features ``f = encode(x)``
``[batch, pos, width]`` and an error ``e = x - decode(f)`` ``[batch, pos, d_model]``; every feature
and the error are nodes, at every position (or per position, ``resid_2/17@5``). Neurons are the
features of an `circuits.dictionaries.Identity` dictionary.

Steps:

1. **Ablation values** (`ablation_values`): what an ablated node is set to.

   - ``"zero"``: 0 for every feature and for the error (so ``x' = decode(0) = b_dec`` when all of
     a submodule is ablated, as in the reference code).
   - ``"mean"``: the node's mean over every real token of a reference set of inputs
     (``[width]`` features, ``[d_model]`` error), the same at every position.
   - ``"position-mean"``: the mean at each position over the reference inputs that have a real
     token there (``[pos, width]``, ``[pos, d_model]``). This is what SFC's reference code calls
     mean ablation (``x.mean(dim=0)`` over the patch batch keeps the position axis).
   - ``"resample"``: the node's value on another input: each row of a batch takes every node of
     one reference row drawn uniformly (seeded) among the reference prompts at least as long.
     The draw depends only on ``(seed, key)`` (see `run_ablated`), so a circuit and its
     complement, evaluated on the same batch, see the same resampled inputs.

2. **Which nodes are kept** (`keep_nodes`, `Keep`): boolean masks per submodule, ``[width]`` /
   ``[]`` (all positions) or ``[pos, width]`` / ``[pos]`` (per position), built from node names;
   `complement` flips them.

3. **The ablated run** (`run_ablated`): one nnsight trace. At each evaluated submodule, in forward
   order, ``f' = where(keep, f, f_abl)`` and ``e' = where(keep_error, e, e_abl)``; the activation
   written back is ``x + (decode(f') - decode(f)) + (e' - e)``, which is SFC's
   ``decode(f') + e'`` up to float rounding, and *exactly* ``x`` where nothing changes. A
   submodule with every node kept is not read or written at all, so ablating nothing reproduces
   the model's logits bit for bit.

Everything runs without gradients. Shapes follow the model's dtype and device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from attribution.splice import Values, check_submodules, run_spliced, take_batch
from circuits.dictionaries import Dictionary
from circuits.distributed import all_sum, shard
from circuits.graph import OUTPUT, parse_node_name
from circuits.models import Batch, Model

__all__ = [
    "ABLATIONS",
    "Ablation",
    "AblationValues",
    "Keep",
    "ablation_values",
    "complement",
    "concat_batches",
    "keep_all",
    "keep_none",
    "keep_nodes",
    "run_ablated",
]

Ablation = Literal["mean", "zero", "position-mean", "resample"]
ABLATIONS: tuple[str, ...] = ("mean", "zero", "position-mean", "resample")
"""Every ablation kind, as `ablation_values` accepts them."""


class Keep(NamedTuple):
    """Which nodes of one submodule keep their own value (True) rather than being ablated.

    Either both masks have a position axis or neither does:
    ``features [width]`` and ``error []`` apply at every position;
    ``features [pos, width]`` and ``error [pos]`` apply per position.
    """

    features: Tensor  # bool [width] or [pos, width]
    error: Tensor  # bool [] or [pos]

    @property
    def positioned(self) -> bool:
        """Whether the masks have a position axis."""
        return self.error.ndim == 1

    def all(self) -> bool:
        """Whether every node is kept (nothing to ablate here)."""
        return bool(self.features.all()) and bool(self.error.all())

    def count(self) -> int:
        """Number of kept nodes (per position when positioned)."""
        return int(self.features.sum()) + int(self.error.sum())

    def at(self, n_pos: int) -> Keep:
        """The masks for a batch ``n_pos`` tokens wide: positioned masks cut or padded with False
        (positions beyond the masks are ablated); unpositioned masks as they are."""
        if not self.positioned:
            return self
        have = self.error.shape[0]
        if have >= n_pos:
            return Keep(self.features[:n_pos], self.error[:n_pos])
        pad = n_pos - have
        features = torch.cat([self.features, self.features.new_zeros(pad, self.features.shape[1])])
        return Keep(features, torch.cat([self.error, self.error.new_zeros(pad)]))


def keep_all(dictionaries: Mapping[str, Dictionary], submodules: Iterable[str]) -> dict[str, Keep]:
    """Masks that keep every node of ``submodules`` (ablate nothing)."""
    return {
        name: Keep(
            torch.ones(dictionaries[name].width, dtype=torch.bool), torch.ones((), dtype=torch.bool)
        )
        for name in submodules
    }


def keep_none(dictionaries: Mapping[str, Dictionary], submodules: Iterable[str]) -> dict[str, Keep]:
    """Masks that keep no node of ``submodules`` (ablate everything)."""
    return complement(keep_all(dictionaries, submodules))


def complement(keep: Mapping[str, Keep]) -> dict[str, Keep]:
    """Flip every mask: kept nodes become ablated and the other way round (``M \\ C``)."""
    return {name: Keep(~k.features, ~k.error) for name, k in keep.items()}


def keep_nodes(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    nodes: Iterable[str],
    *,
    submodules: Iterable[str],
    n_pos: int | None = None,
) -> dict[str, Keep]:
    """Masks keeping exactly the named nodes in each of ``submodules``.

    Args:
        model: The model (to check submodule names).
        dictionaries: ``{submodule: Dictionary}`` (to check widths).
        nodes: Node names (``resid_2/17``, ``mlp_0/ε``, with ``@pos`` or without; ``y`` is
            ignored). Names with positions give positioned masks, else masks for all positions.
        submodules: The evaluated submodules: masks are returned for these. Valid nodes of other
            submodules with a dictionary are dropped (they are not evaluated, e.g. left intact).
        n_pos: Width of the positioned masks; None: one past the largest position named.

    Raises:
        ValueError: for a malformed name, a submodule the model lacks or that has no dictionary, an
            index beyond its dictionary's width, a position ``>= n_pos``, or a mix of names with
            and without positions.
    """
    parsed = [parse_node_name(name) for name in nodes if name != OUTPUT]
    for node in parsed:
        model.submodule(node.submodule)  # raises ValueError naming the valid submodules
        if node.submodule not in dictionaries:
            raise ValueError(
                f"node {node.name!r}: no dictionary for submodule {node.submodule!r}; "
                f"dictionaries are given for {', '.join(dictionaries) or 'no submodule'}"
            )
        width = dictionaries[node.submodule].width
        if node.index is not None and node.index >= width:
            raise ValueError(
                f"node {node.name!r}: index {node.index} is out of range for the "
                f"{node.submodule} dictionary of width {width} (indices 0..{width - 1})"
            )
    positioned = {node.position is not None for node in parsed}
    if len(positioned) > 1:
        raise ValueError("either every node has a position ('@<pos>') or none does")
    with_pos = positioned == {True}
    if with_pos:
        largest = max(node.position for node in parsed)
        if n_pos is None:
            n_pos = largest + 1
        elif largest >= n_pos:
            raise ValueError(
                f"node position {largest} is beyond the prompts, which are at most {n_pos} "
                "tokens long"
            )
    subs = list(submodules)
    keep: dict[str, Keep] = {}
    for name in subs:
        width = dictionaries[name].width
        if n_pos is not None and with_pos:
            keep[name] = Keep(
                torch.zeros(n_pos, width, dtype=torch.bool), torch.zeros(n_pos, dtype=torch.bool)
            )
        else:
            keep[name] = Keep(
                torch.zeros(width, dtype=torch.bool), torch.zeros((), dtype=torch.bool)
            )
    for node in parsed:
        if node.submodule not in keep:
            continue
        mask = keep[node.submodule]
        where = () if node.position is None else (node.position,)
        if node.index is None:
            mask.error[where] = True
        else:
            mask.features[(*where, node.index)] = True
    return keep


# ------------------------------------------------------------------------------------------------
# Ablation values


@dataclass(frozen=True, eq=False)
class AblationValues:
    """What ablated nodes are set to, per submodule.

    Attributes:
        how: The ablation kind (see the module docstring).
        submodules: The submodules these values cover, in forward order.
        values: ``{submodule: Values}``: ``zero`` / ``mean``: ``[width]`` features and
            ``[d_model]`` error; ``position-mean``: ``[pos, width]`` and ``[pos, d_model]``;
            empty for ``resample``.
        counts: ``position-mean``: ``[pos]`` number of reference prompts with a real token at each
            position; None otherwise.
        reference: ``resample``: the reference prompts, one `Batch`; None otherwise.
        seed: Seed of the resampling draws.
    """

    how: Ablation
    submodules: tuple[str, ...]
    values: dict[str, Values] = field(default_factory=dict)
    counts: Tensor | None = None
    reference: Batch | None = None
    seed: int = 0

    def for_batch(
        self,
        model: Model,
        dictionaries: Mapping[str, Dictionary],
        batch: Batch,
        *,
        key: int = 0,
    ) -> dict[str, Values]:
        """Ablation values for ``batch``, broadcastable to ``[batch, pos, width]`` /
        ``[batch, pos, d_model]``.

        Args:
            key: For ``resample``: which draw (the same key gives the same rows).

        Raises:
            ValueError: for ``position-mean`` when ``batch`` has real tokens at positions no
                reference prompt reaches; for ``resample`` when no reference prompt is as long as
                some prompt of ``batch``.
        """
        n_pos = batch.input_ids.shape[1]
        if self.how in ("zero", "mean"):
            return dict(self.values)
        if self.how == "position-mean":
            assert self.counts is not None
            real = batch.attention_mask.bool().any(dim=0)  # [pos]
            have = torch.zeros(n_pos, dtype=torch.bool)
            width = min(n_pos, self.counts.shape[0])
            have[:width] = self.counts[:width] > 0
            missing = (real & ~have).nonzero().flatten().tolist()
            if missing:
                raise ValueError(
                    f"position-mean ablation has no reference prompt reaching position(s) "
                    f"{missing}; give reference prompts at least as long as the evaluated ones"
                )
            out = {}
            for name, (f, e) in self.values.items():
                out[name] = Values(_fit_positions(f, n_pos), _fit_positions(e, n_pos))
            return out
        if self.how == "resample":
            assert self.reference is not None
            rows = self.draw(batch, key=key)
            sample = take_batch(self.reference, rows)
            run = run_spliced(model, dictionaries, sample, split=self.submodules)
            return {
                name: Values(
                    _fit_positions(v.features, n_pos, axis=1),
                    _fit_positions(v.error, n_pos, axis=1),
                )
                for name, v in run.values.items()
            }
        raise AssertionError(self.how)

    def draw(self, batch: Batch, *, key: int = 0) -> Tensor:
        """``[batch]`` reference rows for ``resample``: for each prompt, one reference prompt at
        least as long, drawn uniformly with a generator seeded by ``(seed, key)``."""
        assert self.reference is not None
        generator = torch.Generator().manual_seed((self.seed % 2**31) * 2**32 + key % 2**32)
        ref_last = self.reference.last.cpu()
        rows = []
        for last in batch.last.cpu().tolist():
            candidates = (ref_last >= last).nonzero().flatten()
            if candidates.numel() == 0:
                raise ValueError(
                    f"resample ablation: no reference prompt is {last + 1} tokens long or longer"
                )
            pick = torch.randint(candidates.numel(), (1,), generator=generator)
            rows.append(candidates[pick])
        return torch.cat(rows)


def _fit_positions(t: Tensor, n_pos: int, axis: int = 0) -> Tensor:
    """``t`` cut to ``n_pos`` positions along ``axis``, or padded with zeros to reach it (such
    positions hold padding only; `AblationValues.for_batch` checks that)."""
    have = t.shape[axis]
    if have >= n_pos:
        return t.narrow(axis, 0, n_pos)
    shape = list(t.shape)
    shape[axis] = n_pos - have
    return torch.cat([t, t.new_zeros(shape)], dim=axis)


def concat_batches(batches: Iterable[Batch], pad_id: int = 0) -> Batch:
    """One `Batch` holding every row of ``batches``, right-padded to the widest."""
    batches = list(batches)
    if not batches:
        raise ValueError("no reference batches given")
    width = max(b.input_ids.shape[1] for b in batches)

    def pad(t: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Batch(
        input_ids=torch.cat([pad(b.input_ids.cpu(), pad_id) for b in batches]),
        attention_mask=torch.cat([pad(b.attention_mask.cpu(), 0) for b in batches]),
        last=torch.cat([b.last.cpu() for b in batches]),
    )


def ablation_values(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    reference: Batch | Iterable[Batch] | None,
    how: Ablation = "mean",
    *,
    submodules: Iterable[str] | None = None,
    seed: int = 0,
) -> AblationValues:
    """Compute what ablated nodes are set to.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``.
        reference: The reference inputs (SFC: the patch prompts): one `Batch` or several. Not
            needed (may be None) for ``"zero"``.
        how: ``"mean"``, ``"zero"``, ``"position-mean"`` or ``"resample"``.
        submodules: The submodules to cover; None for every one with a dictionary.
        seed: Seed of the ``resample`` draws.

    Raises:
        ValueError: for an unknown ``how``, a reference without real tokens, missing reference
            inputs, or what `attribution.check_submodules` refuses.
    """
    if how not in ABLATIONS:
        raise ValueError(f"unknown ablation {how!r}; choose one of {', '.join(ABLATIONS)}")
    subs = tuple(check_submodules(model, dictionaries, submodules))
    if how == "zero":
        values = {}
        for name in subs:
            d = dictionaries[name]
            like = next(iter(d.parameters()), None)
            dtype = like.dtype if like is not None else model.dtype
            device = like.device if like is not None else model.device
            values[name] = Values(
                torch.zeros(d.width, dtype=dtype, device=device),
                torch.zeros(d.d_model, dtype=dtype, device=device),
            )
        return AblationValues(how, subs, values)
    if reference is None:
        raise ValueError(f"{how} ablation needs reference inputs")
    batches = [reference] if isinstance(reference, Batch) else list(reference)
    if not batches:
        raise ValueError(f"{how} ablation needs reference inputs; none were given")
    if how == "resample":
        return AblationValues(how, subs, reference=concat_batches(batches), seed=int(seed))

    positional = how == "position-mean"
    n_pos = max(b.input_ids.shape[1] for b in batches) if positional else 1
    sums: dict[str, list[Tensor]] = {}  # float64 [pos, width] and [pos, d_model]; pos 1 for mean
    counts = torch.zeros(n_pos, dtype=torch.float64)  # real tokens per position (or in all)
    for _, batch in shard(batches):
        run = run_spliced(model, dictionaries, batch, split=subs)
        mask = batch.attention_mask.to(torch.float64).cpu()  # [batch, pos]
        width = batch.input_ids.shape[1] if positional else 1
        counts[:width] += mask.sum(dim=0) if positional else mask.sum()
        for name, (f, e) in run.values.items():
            real = batch.attention_mask.to(f.device, torch.float64)[..., None]  # [batch, pos, 1]
            parts = [(f.double() * real).sum(dim=0), (e.double() * real).sum(dim=0)]  # [pos, ..]
            if not positional:
                parts = [part.sum(dim=0, keepdim=True) for part in parts]  # [1, ...]
            if name not in sums:
                sums[name] = [
                    torch.zeros(n_pos, p.shape[-1], dtype=torch.float64, device=p.device)
                    for p in parts
                ]
            for total, part in zip(sums[name], parts, strict=True):
                total[:width] += part
    names = list(sums)
    counts, *totals = all_sum([counts, *(t for name in names for t in sums[name])])
    sums = {name: totals[2 * i : 2 * i + 2] for i, name in enumerate(names)}
    if counts.sum() == 0:
        raise ValueError(f"{how} ablation: the reference inputs hold no real tokens")
    values = {}
    for name, (f_sum, e_sum) in sums.items():
        denom = counts.clamp(min=1).to(f_sum.device)[:, None]
        f_mean, e_mean = f_sum / denom, e_sum / denom  # [pos, width], [pos, d_model]
        if not positional:
            f_mean, e_mean = f_mean[0], e_mean[0]  # [width], [d_model]
        param = next(iter(dictionaries[name].parameters()), None)
        dtype = param.dtype if param is not None else model.dtype
        values[name] = Values(f_mean.to(dtype), e_mean.to(dtype))
    return AblationValues(how, subs, values, counts=counts if positional else None)


# ------------------------------------------------------------------------------------------------
# The ablated run


def mix(
    dictionary: Dictionary,
    x: Tensor,
    gate_features: Tensor,
    gate_error: Tensor,
    features_ablated: Tensor,
    error_ablated: Tensor,
) -> Tensor:
    """``x`` with every feature set to ``g·f + (1 - g)·f_abl`` and the error to
    ``g_e·e + (1 - g_e)·e_abl``: the one formula behind ablation (0/1 gates) and learned masks
    (gates in ``[0, 1]``, differentiable).

    Written as ``x + (decode(f') - decode(f)) + (1 - g_e)·(e_abl - e)``, so a gate of 1 leaves its
    node's contribution exactly as it was and a gate of 0 gives exactly the ablation value.

    Args:
        dictionary: The submodule's dictionary.
        x: ``[batch, pos, d_model]`` the activation.
        gate_features: ``[width]`` or ``[pos, width]`` (bool or float).
        gate_error: ``[]`` or ``[pos]`` (bool or float).
        features_ablated: ``[width]`` or ``[batch, pos, width]`` ablation values.
        error_ablated: ``[d_model]`` or ``[batch, pos, d_model]`` ablation values.
    """
    f = dictionary.encode(x)  # [batch, pos, width]
    x_hat = dictionary.decode(f)  # [batch, pos, d_model]
    new = x
    if gate_features.dtype != torch.bool or not bool(gate_features.all()):
        g = gate_features.to(device=f.device, dtype=f.dtype)
        f_new = g * f + (1 - g) * features_ablated.to(f.dtype)
        new = new + (dictionary.decode(f_new) - x_hat)
    if gate_error.dtype != torch.bool or not bool(gate_error.all()):
        g_e = gate_error.to(device=x.device, dtype=x.dtype)[..., None]  # [1] or [pos, 1]
        new = new + (1 - g_e) * (error_ablated.to(x.dtype) - (x - x_hat))
    return new


def run_ablated(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: Batch,
    keep: Mapping[str, Keep] | Iterable[str],
    values: AblationValues,
    *,
    submodules: Iterable[str] | None = None,
    key: int = 0,
) -> Tensor:
    """Run ``batch`` with every node not kept replaced by its ablation value.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``.
        batch: ``input_ids [batch, pos]``.
        keep: ``{submodule: Keep}`` masks (an evaluated submodule missing here has every node
            ablated), or node names to keep (see `keep_nodes`).
        values: From `ablation_values`; it fixes which submodules can be ablated.
        submodules: The evaluated submodules (a subset of ``values.submodules``); None for all of
            ``values.submodules``. Other submodules run untouched.
        key: Which resampling draw (``resample`` only): same key, same reference rows.

    Returns:
        ``[batch, vocab]`` logits at each prompt's last position.
    """
    subs = list(values.submodules) if submodules is None else list(submodules)
    outside = [name for name in subs if name not in values.submodules]
    if outside:
        raise ValueError(
            f"no ablation values for submodule(s) {outside}; the values cover "
            f"{', '.join(values.submodules)}"
        )
    n_pos = batch.input_ids.shape[1]
    if isinstance(keep, str):
        raise TypeError("keep takes masks or a collection of node names, not one string")
    if not isinstance(keep, Mapping):
        keep = keep_nodes(model, dictionaries, keep, submodules=subs)  # cut to n_pos below
    masks: dict[str, Keep] = {}
    for name in subs:
        k = keep.get(name)
        if k is None:
            k = keep_none(dictionaries, [name])[name]
        k = k.at(n_pos)
        if not k.all():
            masks[name] = k
    ablated = {}
    if masks:
        every = values.for_batch(model, dictionaries, batch, key=key)
        ablated = {name: every[name] for name in masks}
    order = [sub.name for sub in model.submodules if sub.name in masks]
    with torch.no_grad():
        with model.trace(batch):
            for name in order:
                dictionary = dictionaries[name]
                k = masks[name]
                f_abl, e_abl = ablated[name]
                x = model.read(name)  # [batch, pos, d_model]
                model.write(name, mix(dictionary, x, k.features, k.error, f_abl, e_abl))
            logits = batch.at_last(model.read_logits()).save()  # [batch, vocab]
    return logits

"""The passes behind `attribution.edges.edge_effects`, steps 1, 3 and 4 of its docstring: the
held-fixed forward, the left vectors, and the batched Jacobian products (VJP or JVP) into one
downstream submodule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import nnsight
import torch
from torch import Tensor

from attribution.kept import _contract, _Kept, _select, _zeros
from attribution.splice import Values
from circuits.dictionaries import (
    SAE,
    BatchTopK,
    Dictionary,
    GatedSAE,
    Identity,
    JumpReLU,
    ReLU,
    TopK,
)
from circuits.models import Model

# ------------------------------------------------------------------------------------------------
# Step 1: the held-fixed forward


def _decoder_rows(
    dictionary: Dictionary, columns: Tensor, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """``[m, d_model]``: each kept feature's decoder direction, ``decode(one-hot) - decode(0)``.

    Decoders are affine (every dictionary here is: ``f @ W_dec + b_dec``, or the identity), so
    this is the decoder's Jacobian at the kept columns, read off in chunks of 256 features.

    Raises:
        ValueError: when doubling a one-hot input does not double its effect (a decoder that is
            not affine).
    """
    zero = dictionary.decode(torch.zeros(1, dictionary.width, device=device, dtype=dtype))
    rows = []
    for lo, hi in _chunks(len(columns), 256):
        one_hot = torch.zeros(hi - lo, dictionary.width, device=device, dtype=dtype)
        one_hot[torch.arange(hi - lo, device=device), columns[lo:hi].to(device)] = 1
        moved = dictionary.decode(one_hot) - zero  # [chunk, d_model]
        doubled = dictionary.decode(2 * one_hot) - zero
        scale = float(moved.abs().max()) if moved.numel() else 0.0
        if not torch.allclose(doubled, 2 * moved, rtol=1e-3, atol=1e-4 * max(scale, 1e-30)):
            raise ValueError(
                f"{type(dictionary).__name__}.decode is not affine; edge effects need decoders "
                "of the form f @ W_dec + b_dec"
            )
        rows.append(moved)
    if not rows:
        return zero.new_zeros(0, dictionary.d_model)
    return torch.cat(rows)


def _kept_encoder(
    dictionary: Dictionary, columns: Tensor
) -> Callable[[Tensor, Tensor], Tensor] | None:
    """``(x, f) -> encode(x)[..., columns]`` computed on the kept columns only, or None.

    Where a shipped dictionary's features are column-wise functions of ``x @ W_enc`` (ReLU,
    JumpReLU, BatchTopK and gated SAEs; TopK with its selection taken from the full features
    ``f`` as a constant, which is what its gradient does), the kept features and their Jacobian
    cost ``m`` columns instead of the dictionary's width. None for any other dictionary: the
    caller then slices the full ``encode``.
    """
    kind = type(dictionary)
    device = next(iter(dictionary.buffers()), next(iter(dictionary.parameters()), None))
    columns = columns if device is None else columns.to(device.device)
    if kind is Identity:
        return lambda x, f: x[..., columns]
    if kind is GatedSAE:
        w_enc = dictionary.W_enc[:, columns]  # [d_model, m]
        b_gate, b_mag = dictionary.b_gate[columns], dictionary.b_mag[columns]
        scale = dictionary.r_mag[columns].exp()

        def gated(x: Tensor, f: Tensor) -> Tensor:
            x = x - dictionary.b_dec if dictionary.apply_b_dec_to_input else x
            pi = x @ w_enc  # [batch, pos, m]
            return (pi + b_gate > 0) * (scale * pi + b_mag).relu()

        return gated
    if kind is not SAE:
        return None
    w_enc, b_enc = dictionary.W_enc[:, columns], dictionary.b_enc[columns]
    activation = dictionary.activation

    def pre(x: Tensor) -> Tensor:
        x = x - dictionary.b_dec if dictionary.apply_b_dec_to_input else x
        return x @ w_enc + b_enc  # [batch, pos, m]

    if type(activation) is ReLU:
        return lambda x, f: pre(x).relu()
    if type(activation) is JumpReLU:
        threshold = activation.threshold[columns]
        return lambda x, f: (p := pre(x)).relu() * (p > threshold)
    if type(activation) is BatchTopK:
        return lambda x, f: (a := pre(x).relu()) * (a > activation.threshold)
    if type(activation) is TopK:
        return lambda x, f: pre(x).relu() * (f[..., columns] != 0)
    return None


class _Split(NamedTuple):
    """A submodule in the held-fixed graph."""

    x: Tensor  # [batch, pos, d_model], attached to the leaves upstream
    attached: Values  # encode(x) at the kept columns, x - decode(encode(x)): attached
    leaves: Values  # the same values as detached gradient leaves, which feed downstream
    clean: Values  # every feature and the error, detached: [batch, pos, width/d_model]


def _held_fixed(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch,
    names: Sequence[str],
    kept: Mapping[str, _Kept],
    rows: Mapping[str, Tensor],
    encoders: Mapping[str, Callable[[Tensor, Tensor], Tensor] | None] | None = None,
) -> tuple[dict[str, _Split], Tensor]:
    """One clean forward building the held-fixed graph; ``({name: _Split}, [batch, vocab])``.

    Only the kept feature columns become leaves (``[batch, pos, m]``); the activation written
    back is ``x`` itself, plus ``(f~ - f~.detach()) @ rows + (e~ - e~.detach())``, zeros whose
    gradient reaches the leaves and nothing upstream.
    """
    splits: dict[str, _Split] = {}
    with torch.enable_grad():
        with model.trace(batch):
            for name in names:
                dictionary = dictionaries[name]
                x = model.read(name)  # [batch, pos, d_model]
                f = dictionary.encode(x)  # [batch, pos, width]
                e = x - dictionary.decode(f)  # [batch, pos, d_model]
                columns = kept[name].columns.to(f.device)
                f_kept = f[..., columns]  # [batch, pos, m]
                cheap = None if encoders is None else encoders[name]
                if cheap is not None:
                    narrow = cheap(x, f.detach())  # the same values, m columns of Jacobian
                    if torch.allclose(narrow, f_kept, rtol=1e-4, atol=1e-6):
                        f_kept = narrow
                f_leaf = f_kept.detach().requires_grad_(True)
                e_leaf = e.detach().requires_grad_(True)
                moved = (f_leaf - f_leaf.detach()) @ rows[name]  # [batch, pos, d_model]
                model.write(name, x.detach() + moved + (e_leaf - e_leaf.detach()))
                splits[name] = _Split(
                    x, Values(f_kept, e), Values(f_leaf, e_leaf), Values(f.detach(), e.detach())
                )
            logits = batch.at_last(model.read_logits()).save()  # [batch, vocab]
            nnsight.save(splits)
    return splits, logits


def _grad(outputs, inputs, grad_outputs, **kwargs) -> list[Tensor | None]:
    return list(
        torch.autograd.grad(
            outputs,
            inputs,
            grad_outputs=grad_outputs,
            allow_unused=True,
            retain_graph=True,
            **kwargs,
        )
    )


# ------------------------------------------------------------------------------------------------
# Step 3: left vectors


def _direct(splits: Mapping[str, _Split], metric_values: Tensor, names: Sequence[str]) -> list:
    """Each leaf's direct metric gradient (through no other attributed submodule), in the order
    ``f~, e~`` per submodule of ``names``: one backward of the metric."""
    leaves = [t for name in names for t in splits[name].leaves]
    grads = _grad(metric_values.sum(), leaves, None)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads, strict=True)]


def _total(splits: Mapping[str, _Split], direct: list, names: Sequence[str]) -> list:
    """Each leaf's total metric gradient (the AtP gradient), from the direct ones.

    Going backwards over submodules, a submodule's total gradient is complete once every later
    submodule has been visited; its error leaf's gradient is the gradient at its activation, and
    one vector-Jacobian product through ``x_s`` passes it on to every earlier leaf. Altogether
    this is one backward through the model, in pieces.
    """
    leaves = [t for name in names for t in splits[name].leaves]
    total = list(direct)
    for i in reversed(range(1, len(names))):
        x = splits[names[i]].x
        if not x.requires_grad:
            continue
        for k, g in enumerate(_grad(x, leaves[: 2 * i], total[2 * i + 1])):
            if g is not None:
                total[k] = total[k] + g
    return total


def _pack(grads: list, names: Sequence[str]) -> dict[str, Values]:
    return {name: Values(grads[2 * i], grads[2 * i + 1]) for i, name in enumerate(names)}


# ------------------------------------------------------------------------------------------------
# Step 4: edges into one downstream submodule


def _chunks(n: int, size: int | None) -> Iterable[tuple[int, int]]:
    size = n if size is None else size
    return ((lo, min(lo + size, n)) for lo in range(0, n, size))


def _edges_vjp(
    down: str,
    ups: Sequence[str],
    splits: Mapping[str, _Split],
    kept: Mapping[str, _Kept],
    left: Values,
    delta: Mapping[str, Values],
    chunk_size: int | None,
    rows: tuple[int, int],
) -> dict[str, Tensor]:
    """``{up: [hi - lo, n_up]}``: edges into kept rows ``rows = (lo, hi)`` of ``down``, one
    batched backward per chunk of them.

    ``rows`` lie all among the features or all among the error nodes, so a chunk differentiates
    only ``f_d`` (``m`` columns) or only ``e_d`` (through the whole dictionary, but for few rows).
    """
    lo, hi = rows
    errors = lo >= kept[down].n_features
    output = splits[down].attached[1 if errors else 0]
    leaves = [t for up in ups for t in splits[up].leaves]
    blocks = {up: [] for up in ups}
    for a, b in _chunks(hi - lo, chunk_size):
        n = b - a
        cotangent = Values(
            None if errors else left.features.new_zeros(n, *left.features.shape),
            left.error.new_zeros(n, *left.error.shape) if errors else None,
        )  # [n, batch, pos, m] or [n, batch, pos, d_model]
        _select(kept[down], left, lo + a, lo + b, cotangent, 0)
        grads = _grad(output, leaves, cotangent[1 if errors else 0], is_grads_batched=True)
        for i, up in enumerate(ups):
            batched = Values(
                *(
                    g if g is not None else t.new_zeros(n, *t.shape)
                    for g, t in zip(grads[2 * i : 2 * i + 2], delta[up], strict=True)
                )
            )
            blocks[up].append(_contract(kept[up], batched, delta[up]))  # [n, n_up]
    return {
        up: torch.cat(parts) if parts else left.features.new_zeros(0, len(kept[up])).float()
        for up, parts in blocks.items()
    }


class _NoDoubleBackward(RuntimeError):
    """The model's backward cannot itself be differentiated here."""


def _edges_jvp(
    down: str,
    ups: Sequence[str],
    splits: Mapping[str, _Split],
    kept: Mapping[str, _Kept],
    left: Values,
    delta: Mapping[str, Values],
    chunk_size: int | None,
) -> dict[str, Tensor]:
    """``{up: [n_features_down, n_up]}``: edges into the kept features of ``down``, one batched
    Jacobian-vector product per chunk of kept upstream nodes.

    The product ``J t`` is the gradient of ``(J^T c) . t`` with respect to the cotangent ``c``:
    one ``create_graph`` backward builds ``J^T c`` for every upstream leaf, then each chunk of
    tangents (upstream deltas restricted to one node each) is one batched backward.
    """
    f_down = splits[down].attached.features  # [batch, pos, m]
    cotangent = torch.zeros_like(f_down).requires_grad_(True)
    leaves = [(up, k, t) for up in ups for k, t in enumerate(splits[up].leaves)]
    vjps = _grad(f_down, [t for _, _, t in leaves], cotangent, create_graph=True)
    reached = [  # (up, 0 for features / 1 for the error, J^T c) for leaves f_down depends on
        (up, k, vjp)
        for (up, k, _), vjp in zip(leaves, vjps, strict=True)
        if vjp is not None and vjp.requires_grad
    ]
    starts, total = {}, 0  # upstream rows: ups in order, each its kept rows
    for up in ups:
        starts[up], total = total, total + len(kept[up])
    n_down = kept[down].n_features
    columns = {up: [] for up in ups}
    for lo, hi in _chunks(total, chunk_size):
        tangents = {}
        for up in ups:
            a, b = max(lo, starts[up]), min(hi, starts[up] + len(kept[up]))
            if a < b:
                tangent = _zeros(hi - lo, delta[up])
                _select(kept[up], delta[up], a - starts[up], b - starts[up], tangent, a - lo)
                tangents[up] = tangent
        used = [(up, k, vjp) for up, k, vjp in reached if up in tangents]
        block = left.features.new_zeros(n_down, hi - lo, dtype=torch.float32)
        if used:
            try:
                (jvp,) = _grad(
                    [vjp for _, _, vjp in used],
                    cotangent,
                    [tangents[up][k] for up, k, _ in used],
                    is_grads_batched=True,
                )
            except RuntimeError as error:
                if "not implemented" in str(error):
                    raise _NoDoubleBackward(str(error)) from error
                raise
            if jvp is not None:  # [n, batch, pos, m]
                block = _contract(kept[down], Values(jvp, None), left).T  # [n_down, n]
        for up in tangents:
            a, b = max(lo, starts[up]), min(hi, starts[up] + len(kept[up]))
            columns[up].append(block[:, a - lo : b - lo])
    return {up: torch.cat(parts, dim=1) for up, parts in columns.items()}

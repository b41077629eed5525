"""Learn a binary mask over nodes (features, neurons, error terms) that keeps the model's behaviour.

Masked-out nodes take their ablation value exactly as in the ablation engine
(`circuits.ablation.run_ablated`), but through a differentiable gate ``g ∈ [0, 1]``:
``f' = g f + (1 - g) f_abl`` for features (``= f_abl + g (f - f_abl)``, written so that ``g = 1``
gives ``f`` and ``g = 0`` gives ``f_abl`` bit for bit) and ``e' = e_abl + g (e - e_abl)`` for
errors; the activation written back is ``x + (decode(f') - decode(f)) + (e' - e)``, the engine's
formula. With 0/1 gates the run is the engine's run.

Methods: subnetwork probing / Edge Pruning (hard-concrete gates, Louizos et al., ICLR 2018;
Bhaskar et al., 2024, for the target warm-up and the binarisation at a target size) and masks over
SAE latents (sigmoid gates with an annealed temperature, continuous sparsification, Savarese et
al., 2020). See `masks.gates` for the gates themselves.

Steps (`train_mask`):

1. **Set up** (`circuits.evaluate.Evaluator`): tokenised prompt pairs, ablation values from the
   patch prompts (the clean prompts for a task without them; any kind of the ablation engine,
   position-mean by default as in `circuits.evaluate`), the full model's last-position logits on
   every batch (the targets), m(M) and m(∅), and the candidate nodes: every feature and error
   node of the evaluated submodules, shared across positions or one per position. With
   ``keep_errors=True`` error nodes are not candidates; they keep their own value.
2. **Gates**: logits ``θ`` over the candidates, drawn uniformly in ``[2, 4]`` with ``seed`` (every
   node starts kept; the spread keeps alike nodes from moving in lockstep).
3. **Train** for ``steps`` Adam steps (``betas = (0.9, 0.9)``), cycling through the batches in
   order. Adam's second-moment memory is short (PyTorch's default β2 is 0.999), so a gate's
   step size follows the size term once the large early task gradients have passed. Measured
   on the zoo's 26,637 SAE nodes (sva-rc, 64 train pairs, ``k = 500``, 500 steps, scored on them):
   faithfulness 0.892 (sigmoid) and 0.814 (hard-concrete) with 0.9 (``circuits mask --task
   sva-rc --split train --size 500 [--parametrisation sigmoid]``), 0.755 and 0.809 with ``_BETAS``
   set to 0.999; at 200 steps with 0.999 the sigmoid mask's expected size collapsed to 9.
   Each step: sigmoid gates set their temperature ``T`` (`masks.gates.SigmoidGates.anneal`: 1
   until step ``ramp``, then geometric up to 200 at the last step); gates are drawn
   (``gates(training=True)``); the clean batch runs with them (one nnsight trace, `run_gated`);
   the loss is ``task + size term`` with

   - task: ``"logit-diff"``: mean over prompts of ``|LD_masked - LD_full|``,
     ``LD = logit[patch answer] - logit[clean answer]``; ``"kl"``: mean over prompts of
     ``KL(p_full || p_masked)`` at the last position; either divided by ``|m(M) - m(∅)|``, the
     effect of ablating everything, so the task term is about 1 for an empty mask and 0 for a
     faithful one on any model (and the default penalties mean the same on every model);
   - size term, penalty mode (``size=None``, ``ramp = 0``): ``penalty * s``, with
     ``s = expected_size()`` (hard-concrete: expected L0; sigmoid: ``Σ g``);
   - size term, target mode (``size=k``): ``penalty * ((s - t) / t)²`` towards a target ``t``
     that falls geometrically from ``N`` (the number of candidates) to ``k`` over the first
     ``ramp = 0.3 * steps`` steps and then stays at ``k`` (Edge Pruning's target warm-up; a
     fixed quadratic rather than learned Lagrange multipliers, whose integral term winds up
     during the warm-up and overshoots). The gap is relative to the target, so the pull is the
     same for ``k = 5`` of 68 candidates and ``k = 500`` of 27,000, and a mask 10 % off its
     target pays ``penalty / 100`` whatever ``k`` is.

   The bar shows the loss, the expected size and ``faith``, the batch's faithfulness with the
   drawn gates, ``(mean m(masked) - m(∅)) / (m(M) - m(∅))`` with the whole task's m(M) and m(∅)
   (an estimate while training; step 5 scores the binarised mask on every batch).
   Model and dictionary weights are frozen throughout (their ``requires_grad`` is restored after).
   With ``checkpoint`` the state (θ, optimiser, noise generator, history) is saved every
   ``checkpoint_every`` steps and at the end, and a run finding the file resumes from it (the
   file records the settings, the data and hashes of the model's and dictionaries' weights, and
   is refused for others). Ctrl-C ends the current step, saves and raises
   `circuits.runs.Interrupted`.
4. **Binarise**: ``θ > 0`` in penalty mode; the ``k`` largest ``θ`` in target mode (a threshold
   chosen to match ``k``).
5. **Score** the binarised mask: faithfulness ``(m(C) - m(∅)) / (m(M) - m(∅))`` with the same
   ablation and `circuits.metrics` ``logit_diff`` (``"logit-diff"``) or ``kl_to_clean``
   (``"kl"``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from attribution.batches import TaskLike
from attribution.splice import Values
from circuits.ablation import ABLATIONS, Ablation, mix
from circuits.dictionaries import Dictionary
from circuits.evaluate import Evaluator, Protocol
from circuits.files import replacing
from circuits.graph import ERROR, node_name
from circuits.metrics import BatchInfo, MetricError, kl_to_clean, logit_diff
from circuits.models import Batch, Model, tensors_sha256
from circuits.runs import Interrupted, read_checkpoint, stop_requests
from masks.gates import Gates, HardConcreteGates, SigmoidGates

__all__ = ["PARAMETRISATIONS", "MaskResult", "run_gated", "train_mask"]

Parametrisation = Literal["hard-concrete", "sigmoid"]
Objective = Literal["logit-diff", "kl"]
PARAMETRISATIONS: dict[str, type[Gates]] = {
    "hard-concrete": HardConcreteGates,
    "sigmoid": SigmoidGates,
}
"""Gate parametrisations by name."""
_OBJECTIVES = ("logit-diff", "kl")
_SCHEMA = 1
_INIT = 3.0
_RAMP = 0.3  # target mode: the target falls from N to k over this fraction of the steps
_BETAS = (0.9, 0.9)  # Adam; see step 3 of the module docstring


@dataclass(frozen=True, eq=False)
class MaskResult:
    """A trained mask.

    Attributes:
        nodes: Kept node names (binarised mask; plus every error node when errors were kept).
        expected_size: Final expected number of kept candidates (``expected_size()``).
        faithfulness: ``(m(C) - m(∅)) / (m(M) - m(∅))`` of ``nodes``.
        loss: Total loss at every step.
        sizes: Expected size at every step.
        logits: ``[n]`` final gate logits θ over the candidates.
        n_candidates: Number of candidate nodes ``N``.
        parametrisation: ``"hard-concrete"`` or ``"sigmoid"``.
        objective: ``"logit-diff"`` or ``"kl"``.
        ablation: The ablation kind of masked-out nodes.
        submodules: The masked submodules.
        positions: One gate per node and position (names carry ``@pos``).
        protocol: The evaluation protocol ``faithfulness`` was measured under
            (`circuits.evaluate.Evaluation.protocol_text`).
    """

    nodes: tuple[str, ...]
    expected_size: float
    faithfulness: float
    loss: tuple[float, ...]
    sizes: tuple[float, ...]
    logits: Tensor
    n_candidates: int
    parametrisation: str
    objective: str
    ablation: str
    submodules: tuple[str, ...]
    positions: bool = False
    protocol: str = ""


class _Block(NamedTuple):
    """Where one submodule's gates lie in the flat logits."""

    submodule: str
    start: int
    features: tuple[int, ...]  # (width,) or (pos, width)
    error: tuple[int, ...] | None  # () or (pos,); None when errors are kept


def _layout(
    dictionaries: Mapping[str, Dictionary],
    submodules: Iterable[str],
    n_pos: int | None,
    keep_errors: bool,
) -> list[_Block]:
    blocks, start = [], 0
    for name in submodules:
        width = dictionaries[name].width
        features = (width,) if n_pos is None else (n_pos, width)
        error = None if keep_errors else (() if n_pos is None else (n_pos,))
        blocks.append(_Block(name, start, features, error))
        start += _numel(features) + (0 if error is None else _numel(error))
    return blocks


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _split_gates(flat: Tensor, blocks: list[_Block]) -> dict[str, tuple[Tensor, Tensor]]:
    """``{submodule: (features [width] | [pos, width], error [] | [pos])}`` from ``flat [n]``."""
    out = {}
    for block in blocks:
        n_f = _numel(block.features)
        features = flat[block.start : block.start + n_f].reshape(block.features)
        if block.error is None:
            error = flat.new_ones(block.features[:-1])
        else:
            error = flat[block.start + n_f : block.start + n_f + _numel(block.error)]
            error = error.reshape(block.error)
        out[block.submodule] = (features, error)
    return out


def _names(kept: Tensor, blocks: list[_Block], n_pos: int | None) -> list[str]:
    """Node names of the True entries of ``kept [n]``, plus every kept-error node."""
    names = []
    for block in blocks:
        n_f = _numel(block.features)
        features = kept[block.start : block.start + n_f].reshape(block.features)
        for index in features.nonzero().tolist():
            if n_pos is None:
                names.append(node_name(block.submodule, index[0]))
            else:
                names.append(node_name(block.submodule, index[1], index[0]))
        if block.error is None:
            positions = [None] if n_pos is None else list(range(n_pos))
            names += [node_name(block.submodule, ERROR, p) for p in positions]
        else:
            error = kept[block.start + n_f : block.start + n_f + _numel(block.error)]
            if n_pos is None:
                names += [node_name(block.submodule, ERROR)] if bool(error[0]) else []
            else:
                names += [
                    node_name(block.submodule, ERROR, p) for p in error.nonzero().flatten().tolist()
                ]
    return names


def run_gated(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    batch: Batch,
    gates: Mapping[str, tuple[Tensor, Tensor]],
    values: Mapping[str, Values],
) -> Tensor:
    """Run ``batch`` with every node of the gated submodules set to ``g·own + (1 - g)·ablated``.

    Gradients follow the caller's grad mode and reach the gates.

    Args:
        model: The model.
        dictionaries: ``{submodule: Dictionary}``.
        batch: ``input_ids [batch, pos]``.
        gates: ``{submodule: (features, error)}``, in ``[0, 1]``: ``[width]`` and ``[]`` for all
            positions, or ``[pos, width]`` and ``[pos]`` per position (at least as many
            positions as ``batch``; extra ones are cut).
        values: ``{submodule: Values}`` ablation values for this batch, broadcastable to
            ``[batch, pos, width]`` / ``[batch, pos, d_model]``
            (`circuits.ablation.AblationValues.for_batch`).

    Returns:
        ``[batch, vocab]`` logits at each prompt's last position.
    """
    n_pos = batch.input_ids.shape[1]
    order = [sub.name for sub in model.submodules if sub.name in gates]
    with model.trace(batch):
        for name in order:
            dictionary = dictionaries[name]
            g_f, g_e = gates[name]
            if g_e.ndim == 1:
                g_f, g_e = g_f[:n_pos], g_e[:n_pos]  # [pos, width], [pos]
            f_abl, e_abl = values[name]
            x = model.read(name)  # [batch, pos, d_model]
            model.write(name, mix(dictionary, x, g_f, g_e, f_abl, e_abl))
        logits = batch.at_last(model.read_logits()).save()  # [batch, vocab]
    return logits


@contextmanager
def _frozen(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Turn off ``requires_grad`` of every parameter of ``modules``; restore it after."""
    params = [p for module in modules for p in module.parameters()]
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def _task_loss(logits: Tensor, info: BatchInfo, objective: str) -> Tensor:
    """``[]`` mean over prompts of ``|LD - LD_full|`` or of ``KL(p_full || p)``."""
    if objective == "kl":
        return kl_to_clean(logits, info).mean()
    assert info.clean_logits is not None
    return (logit_diff(logits, info) - logit_diff(info.clean_logits, info)).abs().mean()


def _fingerprint(evaluator: Evaluator) -> str:
    """A hash of the tokenised prompts and answers, so a checkpoint is not resumed on other data."""
    digest = hashlib.sha256()
    for batch in evaluator.batches:
        parts = [batch.clean.input_ids, batch.info.clean_answer]
        if batch.patch is not None and batch.info.patch_answer is not None:
            parts += [batch.patch.input_ids, batch.info.patch_answer]
        for part in parts:
            digest.update(part.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _save_checkpoint(path: Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    with replacing(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, config: str) -> dict:
    state = read_checkpoint(path, "train_mask")
    if not isinstance(state, dict) or state.get("schema") != _SCHEMA:
        raise ValueError(f"{path} is not a mask checkpoint of schema {_SCHEMA}")
    if state["config"] != config:
        saved, now = json.loads(state["config"]), json.loads(config)
        changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        raise ValueError(
            f"{path} holds a mask run with other settings ({', '.join(changed)} differ); delete "
            "it or pass another checkpoint path"
        )
    return state


def train_mask(
    model: Model,
    dictionaries: Mapping[str, Dictionary],
    task: TaskLike,
    *,
    parametrisation: Parametrisation = "hard-concrete",
    size: int | None = None,
    penalty: float | None = None,
    objective: Objective = "logit-diff",
    ablation: Ablation = "position-mean",
    keep_errors: bool = False,
    positions: bool = False,
    protocol: Protocol = "sfc",
    first_layers_intact: int | None = None,
    submodules: Iterable[str] | None = None,
    steps: int = 500,
    lr: float = 0.1,
    batch_size: int = 16,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    progress: bool = True,
) -> MaskResult:
    """Learn which nodes to keep (see the module docstring for the steps and the loss).

    Args:
        model: The model (frozen while training).
        dictionaries: ``{submodule: Dictionary}`` (frozen while training).
        task: A `circuits.tasks.Task`, a list of `PromptPair`, or batches of them.
        parametrisation: ``"hard-concrete"`` or ``"sigmoid"`` (`masks.gates`).
        size: Target number of kept candidates ``k``; None: penalty mode.
        penalty: Weight of the size term: ``λ`` of ``λ · expected size`` (penalty mode; None:
            0.01) or ``μ`` of ``μ ((s - t) / t)²`` (target mode; None: 100).
        objective: ``"logit-diff"`` (needs patch prompts) or ``"kl"``.
        ablation: What masked-out nodes are set to (`circuits.ablation`): ``"position-mean"``
            (SFC's mean ablation), ``"mean"``, ``"zero"`` or ``"resample"``; means and samples
            come from the patch prompts (the clean prompts for a task without them).
        keep_errors: Error nodes are not masked (they keep their own value and are listed among
            the kept nodes).
        positions: One gate per node and position (names ``resid_1/3@4``) instead of one shared
            across positions.
        protocol: ``"sfc"`` (default): ``embed`` and the first ``n_layers // 3`` layers are not
            masked (kept whole), as `circuits.evaluate.Evaluator` leaves them intact;
            ``"strict"``: every submodule is masked.
        first_layers_intact: Leave ``embed`` and layers ``0 .. k-1`` unmasked instead of the
            protocol's count.
        submodules: Submodules to mask; None for every one with a dictionary.
        steps: Optimiser steps (one batch each).
        lr: Adam learning rate of θ.
        batch_size: Prompts per batch.
        seed: Seed of the gates' noise.
        checkpoint: File to save the training state to and resume from; None: no checkpoint.
        checkpoint_every: Save every this many steps (and at the end).
        progress: Show a tqdm bar with the loss and the expected size.

    Raises:
        ValueError: an unknown parametrisation, objective or ablation; a size outside
            ``1 .. N``; non-positive steps, lr or checkpoint_every; a negative penalty;
            ``"logit-diff"`` on a task without patch prompts; a checkpoint from other settings;
            and what `circuits.evaluate.Evaluator` refuses; a remote model.
    """
    if model.remote:
        raise ValueError(
            "mask training takes an optimiser step on its gates after every forward and "
            f"backward, which a remote model (remote={model.remote!r}) would send back without "
            "their gradients; train the mask on a model loaded without remote"
        )
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(
            f"unknown parametrisation {parametrisation!r}; choose one of "
            f"{', '.join(PARAMETRISATIONS)}"
        )
    if objective not in _OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(_OBJECTIVES)}")
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")
    for value, what in ((steps, "steps"), (checkpoint_every, "checkpoint_every")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if penalty is None:
        penalty = 1e-2 if size is None else 100.0
    if not penalty >= 0:
        raise ValueError(f"penalty must be non-negative, got {penalty!r}")

    # 1. Set up: batches, ablation values, full-model logits (in evaluator.infos), candidates.
    try:
        evaluator = Evaluator(
            model,
            dictionaries,
            task,
            metric="kl_to_clean" if objective == "kl" else "logit_diff",
            ablation=ablation,
            protocol=protocol,
            first_layers_intact=first_layers_intact,
            submodules=submodules,
            batch_size=batch_size,
            seed=seed,
            keep_clean_logits=True,  # the logit-difference objective reads them
        )
    except MetricError as error:
        if objective == "logit-diff" and "patch" in str(error):
            raise ValueError(
                "objective 'logit-diff' needs patch prompts; this task has none, use objective='kl'"
            ) from error
        raise
    scale = abs(evaluator.metric_full - evaluator.metric_empty)  # > 0: Evaluator checks it
    n_pos = evaluator.n_pos if positions else None
    blocks = _layout(dictionaries, evaluator.submodules, n_pos, keep_errors)
    last = blocks[-1]
    n = last.start + _numel(last.features) + (0 if last.error is None else _numel(last.error))
    if size is not None and (
        not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= n
    ):
        raise ValueError(f"size must be an integer in 1..{n} (the number of nodes), got {size!r}")

    # 2. Gates.
    gates = PARAMETRISATIONS[parametrisation](n, init=_INIT, seed=seed)
    gates.to(model.device)
    optimizer = torch.optim.Adam(gates.parameters(), lr=lr, betas=_BETAS)
    history: list[float] = []
    sizes: list[float] = []
    start = 0
    config = json.dumps(
        {
            "parametrisation": parametrisation,
            "size": size,
            "penalty": penalty,
            "objective": objective,
            "ablation": ablation,
            "keep_errors": keep_errors,
            "positions": positions,
            "submodules": list(evaluator.submodules),
            "n": n,
            "steps": steps,
            "lr": lr,
            "batch_size": batch_size,
            "seed": seed,
            "data": _fingerprint(evaluator),
            "model": model.fingerprint(),
            "dictionaries": {
                sub: tensors_sha256(dictionaries[sub].state_dict().values())
                for sub in evaluator.submodules
            },
        },
        sort_keys=True,
    )
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and path.exists():
        state = _load_checkpoint(path, config)
        with torch.no_grad():
            gates.logits.copy_(state["logits"])
        optimizer.load_state_dict(state["optimizer"])
        gates.generator.set_state(state["generator"])
        history = [float(v) for v in state["loss"]]
        sizes = [float(v) for v in state["sizes"]]
        start = int(state["step"])

    def save(step: int) -> None:
        assert path is not None
        state = {
            "schema": _SCHEMA,
            "config": config,
            "step": step,
            "logits": gates.logits.detach().cpu().clone(),
            "optimizer": optimizer.state_dict(),
            "generator": gates.generator.get_state(),
            "loss": torch.tensor(history, dtype=torch.float64),
            "sizes": torch.tensor(sizes, dtype=torch.float64),
        }
        _save_checkpoint(path, state)

    # 3. Train.
    ramp = 0 if size is None else int(_RAMP * steps)
    modules = [model.torch_model, *dictionaries.values()]
    bar = tqdm(total=steps, initial=start, disable=not progress, desc=f"mask ({parametrisation})")
    with _frozen(modules), torch.enable_grad(), bar, stop_requests() as stop_requested:
        for step in range(start, steps):
            index = step % len(evaluator.batches)
            batch, info = evaluator.batches[index], evaluator.infos[index]
            if isinstance(gates, SigmoidGates):
                gates.anneal(step, steps, start=ramp)
            drawn = _split_gates(gates.gates(True), blocks)
            values = evaluator.values.for_batch(model, dictionaries, batch.clean, key=index)
            logits = run_gated(model, dictionaries, batch.clean, drawn, values)
            task_loss = _task_loss(logits, info, objective) / scale
            faith = evaluator.ratio(float(evaluator.metric(logits.detach(), info).mean()))
            expected = gates.expected_size()
            if size is None:
                loss = task_loss + penalty * expected
            else:
                target = n * (size / n) ** min(1.0, step / max(ramp, 1))
                gap = (expected - target) / target
                loss = task_loss + penalty * gap**2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            sizes.append(float(expected.detach()))
            bar.update(1)
            bar.set_postfix(
                loss=f"{history[-1]:.4g}", size=f"{sizes[-1]:.1f}", faith=f"{faith:.3f}"
            )
            stopping = stop_requested()
            due = (step + 1) % checkpoint_every == 0 or step + 1 == steps
            if path is not None and (due or stopping):
                save(step + 1)
            if stopping:
                where = f"saved to {path}; rerun to resume" if path else "no checkpoint"
                raise Interrupted(f"mask training stopped after step {step + 1} ({where})")

    # 4. Binarise.
    theta = gates.logits.detach()
    if size is None:
        kept = gates.binary()
    else:
        kept = torch.zeros(n, dtype=torch.bool, device=theta.device)
        kept[theta.topk(size).indices] = True
    names = _names(kept.cpu(), blocks, n_pos)

    # 5. Score.
    with torch.no_grad():
        if isinstance(gates, SigmoidGates):
            gates.anneal(steps - 1, steps, start=ramp)
        final_size = float(gates.expected_size())
    evaluation = evaluator.evaluate(names)
    return MaskResult(
        nodes=tuple(names),
        expected_size=final_size,
        faithfulness=evaluation.faithfulness,
        loss=tuple(history),
        sizes=tuple(sizes),
        logits=theta.cpu().clone(),
        n_candidates=n,
        parametrisation=parametrisation,
        objective=objective,
        ablation=ablation,
        submodules=tuple(evaluator.submodules),
        positions=positions,
        protocol=evaluation.protocol_text,
    )

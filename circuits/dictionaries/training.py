"""Train sparse autoencoders on a model's activations: ``train_dictionaries``.

The recipe is the k-sparse autoencoder of Gao et al. 2024 ("Scaling and evaluating sparse
autoencoders"), with BatchTopK (Bussmann et al. 2024), ReLU + L1 and JumpReLU (Rajamanoharan et
al. 2024) as alternatives. Each SAE reads activations ``x [tokens, d_model]``:

    f = activation((x - b_dec) @ W_enc + b_enc)        # [tokens, width]
    x_hat = f @ W_dec + b_dec                          # [tokens, d_model]

with unit-norm rows of ``W_dec [width, d_model]``. The trained weights are exactly an ``SAE``
with a ``TopK``, ``BatchTopK``, ``ReLU`` or ``JumpReLU`` activation, saved by ``save_dictionary``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import count, islice
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from circuits.dictionaries.base import SAE
from circuits.dictionaries.formats import PathLike, save_dictionary
from circuits.dictionaries.mapping import sfc_directory_name
from circuits.dictionaries.trainee import Activation, _lr_factor, _Trainee
from circuits.distributed import all_sum, gathered, rank, world_size
from circuits.files import replacing, write_text
from circuits.runs import Interrupted, read_checkpoint, stop_requests

__all__ = ["train_dictionaries", "TrainedDictionary"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"
SCHEMA_VERSION = 1
_ZOO_CHUNK = 256  # documents per call of the zoo's corpus generator
_DEFAULT_SPARSITY = {"relu": 1.0, "jumprelu": 0.1}


class TrainedDictionary(NamedTuple):
    """One trained SAE: the dictionary (reading raw activations), its metrics and its folder."""

    dictionary: SAE
    metrics: dict[str, Any]
    path: Path


# ------------------------------------------------------------------------------------------------
# Documents and activations


class _Corpus:
    """Documents; the first ``n_heldout`` are held out, the rest cycle for training."""

    def __init__(self, source: Sequence[str] | PathLike, n_heldout: int, seed: int):
        self.source, self.seed, self.docs = source, seed, None
        n: int | None = None
        if isinstance(source, str) and source == "zoo":
            self.fingerprint = f"zoo:{seed}"
        elif isinstance(source, (str, os.PathLike)):
            self.source = Path(source)
            if not self.source.is_file():
                raise FileNotFoundError(
                    f'no corpus file at {self.source}; pass texts, a .txt / .jsonl file or "zoo"'
                )
            n = sum(1 for _ in self._read(0))
            self.fingerprint = f"{self.source.resolve()}:{self.source.stat().st_size}"
        else:
            if not all(isinstance(d, str) for d in source):
                raise TypeError("corpus must be a list of strings, a file path or 'zoo'")
            self.docs = [d for d in source if d.strip()]
            n = len(self.docs)
            self.fingerprint = hashlib.sha256("\0".join(self.docs).encode()).hexdigest()
        if n == 0:
            raise ValueError("the corpus is empty: it holds no non-blank document")
        if n is not None and n <= n_heldout:
            raise ValueError(
                f"the corpus has {n} documents, all held out for evaluation (eval_docs="
                f"{n_heldout}); give more documents or a smaller eval_docs"
            )
        self.n_heldout, self.n_train = n_heldout, None if n is None else n - n_heldout
        self.heldout = list(islice(self._read(0), n_heldout))

    def _read(self, start: int) -> Iterator[str]:
        """Documents from index ``start`` on (without end for the zoo)."""
        if self.docs is not None:
            yield from islice(self.docs, start, None)
        elif isinstance(self.source, Path):
            yield from islice(_read_file(self.source), start, None)
        else:
            from circuits.zoo import language

            chunk, offset = divmod(start, _ZOO_CHUNK)
            for c in count(chunk):
                yield from language.corpus(_ZOO_CHUNK, seed=self.seed * 1_000_003 + c)[offset:]
                offset = 0

    def training(self, start: int) -> Iterator[str]:
        """Training documents from the ``start``-th on, cycling without end."""
        if self.n_train is None:
            yield from self._read(self.n_heldout + start)
            return
        start %= self.n_train
        while True:
            yield from islice(self._read(self.n_heldout + start), self.n_train - start)
            start = 0


def _read_file(path: Path) -> Iterator[str]:
    """Non-blank documents of a file: one per line, or the "text" of each line of a .jsonl."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if text and path.suffix == ".jsonl":
                try:
                    text = json.loads(line)["text"]
                except (ValueError, TypeError, KeyError):
                    text = None
                if not isinstance(text, str):
                    raise ValueError(f'{path}:{number}: not a JSON object with a "text" string')
            if text.strip():
                yield text


def _kept(batch: Any, skip_positions: int) -> Tensor:
    """``[batch, pos]`` bool: real tokens at position ``skip_positions`` or later of their text."""
    real = batch.attention_mask.bool()
    return real & (real.cumsum(1) > skip_positions)


def _first_norm_ratio(act: Tensor, attention_mask: Tensor) -> float:
    """Mean norm of the first tokens of ``act [batch, pos, d]`` over the median of the others'."""
    norms = act.float().norm(dim=-1)  # [batch, pos]
    later = norms[:, 1:][attention_mask[:, 1:].bool().to(norms.device)]
    return (norms[:, 0].mean() / later.median()).item() if later.numel() else 1.0


def _tokenize(model: Any, texts: list[str], context_length: int | None) -> Any:
    """A `Batch` of ``texts`` cut to ``context_length`` tokens."""
    return model.tokenize(texts, max_tokens=context_length)


def _read(model: Any, batch: Any, names: Sequence[str]) -> dict[str, Tensor]:
    """Activations ``{name: [batch, pos, width]}`` of ``names`` (forward order), one forward
    that stops after the last of them (the layers above it and the unembedding never run)."""
    import nnsight

    with torch.no_grad():
        with model.trace(batch) as tracer:
            saved = nnsight.save({name: model.read(name) for name in names})
            tracer.stop()
    return saved


class _Buffer:
    """Activations of every trained submodule at the same tokens, shuffled, refilled when used.

    Fill ``i`` runs forwards over the next training documents until it holds at least
    ``buffer_tokens`` tokens (real ones from position ``skip_positions`` on), then serves
    ``batch_size`` rows at a time in an order drawn from a generator seeded by ``(seed, i)``.
    A fill is thus fixed by its index and first document, all a checkpoint needs to rebuild it.
    """

    def __init__(self, model: Any, names: list[str], corpus: _Corpus, options: Mapping):
        self.model, self.names, self.corpus, self.o = model, names, corpus, options
        self.first_norm_ratio: dict[str, float] = {}  # of a fill's first forward

    def load(self, fill: int, position: int, offset: int = 0) -> None:
        """Fill number ``fill`` from training document ``position``; skip ``offset`` batches.

        In a distributed run the processes read the next ``world_size`` text batches at once,
        one each, and every process keeps the same ones, in order, that one process would.
        """
        o, docs = self.o, self.corpus.training(position)
        parts: dict[str, list[Tensor]] = {name: [] for name in self.names}
        n = used = 0
        while n < o["buffer_tokens"]:
            texts = [list(islice(docs, o["text_batch_size"])) for _ in range(world_size())]
            for batch_texts, (acts, ratios) in zip(
                texts,
                gathered(self._forward(texts[rank()], first=not n and rank() == 0)),
                strict=True,
            ):
                if n >= o["buffer_tokens"]:
                    break
                for name, act in acts.items():
                    parts[name].append(act.to(self.model.device_of(name)))
                if not n:
                    self.first_norm_ratio = ratios
                n, used = n + len(acts[self.names[0]]), used + len(batch_texts)
                if used >= (self.corpus.n_train or math.inf) and n < o["batch_size"]:
                    raise ValueError(
                        f"the corpus's {self.corpus.n_train} training documents hold {n} tokens, "
                        f"fewer than one batch (batch_size={o['batch_size']}); give more text"
                    )
        self.acts = {name: torch.cat(p) for name, p in parts.items()}  # {name: [n, width]}
        generator = torch.Generator().manual_seed(o["seed"] * 1_000_003 + fill)
        self.order = torch.randperm(n, generator=generator)  # [n]
        self.fill, self.position, self.next_position = fill, position, position + used
        self.offset, self.n_batches = offset, n // o["batch_size"]

    def _forward(
        self, texts: list[str], *, first: bool
    ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """``({name: [kept tokens, width]}, {name: first-token norm ratio})`` of one text
        batch, the ratios only for a fill's ``first`` batch (else ``{}``); on the CPU in a
        distributed run, for gathering."""
        o = self.o
        batch = _tokenize(self.model, texts, o["context_length"])
        keep = _kept(batch, o["skip_positions"])
        acts, ratios = {}, {}
        for name, act in _read(self.model, batch, self.names).items():
            acts[name] = act[keep.to(act.device)]
            if first:
                ratios[name] = _first_norm_ratio(act, batch.attention_mask)
            if world_size() > 1:
                acts[name] = acts[name].cpu()
        return acts, ratios

    def next(self) -> dict[str, Tensor]:
        """The next batch ``{name: [batch_size, width]}``, refilling when the fill is used up."""
        if self.offset == self.n_batches:
            self.load(self.fill + 1, self.next_position)
        size = self.o["batch_size"]
        rows = self.order[self.offset * size : (self.offset + 1) * size]
        self.offset += 1
        return {name: a[rows.to(a.device)] for name, a in self.acts.items()}


# ------------------------------------------------------------------------------------------------
# Evaluation on held-out text


class _FromPosition(torch.nn.Module):
    """``sae`` applied to ``x [batch, pos, d]`` from position ``skip`` on; earlier ones kept."""

    def __init__(self, sae: SAE, skip: int):
        super().__init__()
        self.sae, self.skip = sae, skip

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x[:, : self.skip], self.sae(x[:, self.skip :])], 1)


@torch.no_grad()
def _evaluate(model, saes: Mapping[str, SAE], corpus: _Corpus, task, options: Mapping) -> dict:
    """Metrics per SAE on the held-out documents' tokens from position ``skip_positions`` on.

    Variance explained ``1 - Σ‖x - x_hat‖² / Σ‖x - mean(x)‖²``, mean L0, the fraction of
    features that never fire, and mean next-token cross-entropy (nats) with the SAE spliced in
    minus without; given a task, its accuracy with and without the SAE. Spliced in, an SAE
    replaces the activation from position ``skip_positions`` on and leaves the positions before.
    """
    from circuits.zoo.card import cross_entropy, spliced_logits, task_scores

    skip = options["skip_positions"]
    spliced = {
        name: _FromPosition(copy.deepcopy(sae).to(dtype=model.dtype), skip)
        for name, sae in saes.items()
    }
    # Sums over this process's share of the held-out batches, all float64 [] but x [d_model]
    # and fired [width] (how many tokens each feature fired on); then summed over processes.
    sums = {
        name: {
            "err": torch.zeros((), dtype=torch.float64),
            "x2": torch.zeros((), dtype=torch.float64),
            "x": torch.zeros(sae.d_model, dtype=torch.float64),
            "l0": torch.zeros((), dtype=torch.float64),
            "ce": torch.zeros((), dtype=torch.float64),
            "fired": torch.zeros(sae.width, dtype=torch.float64),
        }
        for name, sae in saes.items()
    }
    counts = torch.zeros(3, dtype=torch.float64)  # clean cross-entropy sum, targets, tokens
    starts = range(0, len(corpus.heldout), options["text_batch_size"])
    for start in starts[rank() :: world_size()]:
        texts = corpus.heldout[start : start + options["text_batch_size"]]
        batch = _tokenize(model, texts, options["context_length"])
        n_targets = int(batch.attention_mask[:, 1:].sum())
        n_tokens = int(_kept(batch, skip).sum())
        if n_targets:
            counts[0] += cross_entropy(spliced_logits(model, batch), batch) * n_targets
        counts[1:] += torch.tensor([n_targets, n_tokens], dtype=torch.float64)
        for name, act in _read(model, batch, list(saes)).items():
            sae, s = saes[name], sums[name]
            x = act[_kept(batch, skip).to(act.device)].to(sae.W_enc)  # [tokens, d]
            f = sae.encode(x)  # [tokens, width]
            s["err"] += (x - sae.decode(f)).double().pow(2).sum().cpu()
            s["x2"] += x.double().pow(2).sum().cpu()
            s["x"] += x.double().sum(0).cpu()
            s["l0"] += (f > 0).sum().cpu()
            s["fired"] += (f > 0).sum(0).cpu()
            if n_targets:
                logits = spliced_logits(model, batch, name, spliced[name])
                s["ce"] += cross_entropy(logits, batch) * n_targets
    keys = [(name, key) for name in sums for key in sums[name]]
    summed = all_sum([counts, *(sums[name][key] for name, key in keys)])
    clean, targets, tokens = summed[0].tolist()
    for (name, key), total in zip(keys, summed[1:], strict=True):
        sums[name][key] = total
    sums = {
        name: {key: v.item() if v.ndim == 0 else v for key, v in s.items()}
        for name, s in sums.items()
    }
    metrics, accuracy = {}, None if task is None else task_scores(model, task)[0]
    for name, s in sums.items():
        fvu = s["err"] / (s["x2"] - s["x"].pow(2).sum().item() / tokens)
        metrics[name] = {
            "eval_tokens": int(tokens),
            "variance_explained": 1 - fvu,
            "fvu": fvu,
            "l0": s["l0"] / tokens,
            "dead_fraction": 1 - (s["fired"] > 0).float().mean().item(),
            "ce_clean": clean / targets if targets else None,
            "ce_spliced": s["ce"] / targets if targets else None,
            "delta_ce": (s["ce"] - clean) / targets if targets else None,
            "task": None if task is None else task.name,
            "task_accuracy": accuracy,
            "task_accuracy_spliced": None
            if task is None
            else task_scores(model, task, name, spliced[name])[0],
        }
    return metrics


# ------------------------------------------------------------------------------------------------
# The public function


def _per_submodule(value: Any, names: Sequence[str], what: str) -> dict[str, int]:
    """``{name: value}`` from one value or a mapping naming exactly ``names``; positive ints."""
    if isinstance(value, Mapping):
        unknown, missing = set(value) - set(names), [n for n in names if n not in value]
        if unknown or missing:
            raise ValueError(
                f"the {what} mapping must name exactly the trained submodules {list(names)}; "
                f"unknown: {sorted(unknown)}, missing: {missing}"
            )
    out = {n: value[n] if isinstance(value, Mapping) else value for n in names}
    for name, v in out.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{what} for {name} must be a positive integer, got {v!r}")
    return out


def train_dictionaries(
    model: Any,
    corpus: Sequence[str] | PathLike | Literal["zoo"],
    out_dir: PathLike,
    *,
    submodules: Sequence[str] | None = None,
    activation: Activation = "topk",
    width: int | Mapping[str, int] = 4096,
    k: int | Mapping[str, int] = 32,
    steps: int = 5000,
    batch_size: int = 4096,
    lr: float | None = None,
    sparsity_coefficient: float | None = None,
    auxk_alpha: float = 1 / 32,
    k_aux: int | None = None,
    dead_after: int = 1_000_000,
    buffer_tokens: int = 2**16,
    text_batch_size: int = 32,
    context_length: int | None = 128,
    skip_positions: int = 0,
    eval_docs: int = 64,
    task: Any = None,
    checkpoint_every: int | None = 500,
    resume: bool = True,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
) -> dict[str, TrainedDictionary]:
    """Train one sparse autoencoder per submodule of ``model`` on activations of ``corpus``.

    Steps:

    1. Hold out the first ``eval_docs`` documents; cycle through the others in order.
    2. Fill a buffer: forwards over ``text_batch_size`` documents at a time (cut to
       ``context_length`` tokens) read all trained submodules at once, keeping each real token's
       activation, until ``buffer_tokens`` tokens ``[tokens, width]`` are held per submodule;
       serve shuffled batches of ``batch_size`` rows, refill when used up.
    3. From the first fill, per submodule: a scale ``s`` with E‖x / s‖² = d_model, and b_dec at
       the geometric median of ``x / s``. Decoder rows start as random unit vectors, the
       encoder as the decoder's transpose.
    4. Every step trains every SAE on its batch (reconstruction plus AuxK or a sparsity penalty,
       decoder-parallel gradient removed, rows renormalised) with Adam, linear warm-up and decay.
    5. Every ``checkpoint_every`` steps write ``out_dir/checkpoint.pt`` atomically; a later call
       with the same arguments resumes there and ends with the weights of an uninterrupted run.
    6. Fold ``s`` into the weights so the saved SAE reads raw activations; save each with
       ``save_dictionary`` in its Sparse Feature Circuits folder (``embed/``,
       ``attn_out_layer{i}/``, ...), where ``load_dictionaries(model, out_dir)`` finds it, with
       ``metrics.json`` measured on the held-out documents: variance explained, L0, dead
       fraction, ΔCE in nats (SAE spliced in minus clean), and ``task`` accuracy if given.
       Remove the checkpoint.

    Args:
        model: a `circuits.models.Model` from ``load_model``.
        corpus: a list of texts; a plain-text file (one document per line) or a ``.jsonl``
            file (a "text" field per line); or ``"zoo"`` (``circuits.zoo.language.corpus``,
            generated as needed). Blank documents are skipped.
        out_dir: the output folder.
        submodules: names to train (``embed``, ``attn_i``, ``mlp_i``, ``resid_i``); default all.
        activation: ``"topk"`` (k per token), ``"batchtopk"`` (k·tokens per batch in training, a
            learned threshold at inference), ``"relu"`` (L1 penalty) or ``"jumprelu"`` (a
            learned threshold per feature, straight-through estimator, L0 penalty).
        width: dictionary size: one value, or ``{submodule: width}``.
        k: active latents per token (TopK, BatchTopK): one value, or ``{submodule: k}``.
        steps: optimiser steps; each SAE sees ``batch_size`` tokens per step.
        batch_size: tokens per step.
        lr: Adam's learning rate; by default ``2e-4 / sqrt(width / 2**14)`` (Gao et al.).
        sparsity_coefficient: λ of the L1 (ReLU; default 1.0) or L0 (JumpReLU; default 0.1)
            penalty, on normalised activations.
        auxk_alpha: weight α of the AuxK loss (TopK, BatchTopK); 0 turns it off.
        k_aux: dead latents AuxK uses per token; default ``d_model // 2``.
        dead_after: tokens without firing after which a latent counts as dead.
        buffer_tokens: tokens held per submodule between refills.
        text_batch_size: documents per forward.
        context_length: tokens kept per document (None keeps all).
        skip_positions: leave out each document's first ``skip_positions`` tokens from training
            and the metrics. Models without a BOS token often make the first token an attention
            sink whose residual norm is 100 times the others' (SmolLM2 from layer 14 on); it
            then sets the scale and the variance, and the other tokens are barely
            reconstructed. Training warns when it sees one.
        eval_docs: documents held out for the metrics.
        task: a `circuits.tasks.Task` with patch prompts, scored with each SAE spliced in.
        checkpoint_every: steps between checkpoints (None: none).
        resume: continue from ``out_dir/checkpoint.pt`` where there is one.
        seed: seeds the initialisation, the shuffling and the zoo corpus.
        progress: show a progress bar (mean loss, FVU, L0 and dead fraction over the SAEs).
        callback: called after each step as ``callback(step, {submodule: statistics})``.

    Returns:
        ``{submodule: TrainedDictionary}`` in the model's order, on its device and dtype.

    Raises:
        ValueError: an empty corpus or one shorter than a batch, an unknown submodule,
            ``width < 1``, ``k > width``, another bad option, or a checkpoint written with
            other arguments.
    """
    if activation not in ("topk", "batchtopk", "relu", "jumprelu"):
        raise ValueError(f"activation must be topk, batchtopk, relu or jumprelu: {activation!r}")
    for what, v in (("steps", steps), ("batch_size", batch_size), ("eval_docs", eval_docs)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be a positive integer, got {v!r}")
    if not isinstance(skip_positions, int) or skip_positions < 0:
        raise ValueError(f"skip_positions must be a non-negative integer, got {skip_positions!r}")
    if buffer_tokens < batch_size:
        raise ValueError(f"buffer_tokens={buffer_tokens} is below batch_size={batch_size}")
    if task is not None and not task.has_patch:
        raise ValueError(f"task {task.name!r} has no patch prompts to score accuracy with")
    valid = [s.name for s in model.submodules]
    wanted = valid if submodules is None else list(submodules)
    if not wanted or any(n not in valid for n in wanted):
        unknown = [n for n in wanted if n not in valid]
        raise ValueError(f"unknown submodule(s) {unknown}; valid names: {valid}")
    names = [n for n in valid if n in set(wanted)]  # forward order, once each
    widths, ks = _per_submodule(width, names, "width"), _per_submodule(k, names, "k")
    for name in names:
        if activation in ("topk", "batchtopk") and ks[name] > widths[name]:
            raise ValueError(f"k={ks[name]} exceeds width={widths[name]} for {name}")
    data = _Corpus(corpus, eval_docs, seed)
    if sparsity_coefficient is None:
        sparsity_coefficient = _DEFAULT_SPARSITY.get(activation, 0.0)
    options = {
        "submodules": names, "activation": activation, "widths": widths, "ks": ks,
        "steps": steps, "batch_size": batch_size, "lr": lr, "sparsity": sparsity_coefficient,
        "auxk_alpha": auxk_alpha, "k_aux": k_aux, "dead_after": dead_after,
        "buffer_tokens": buffer_tokens, "text_batch_size": text_batch_size,
        "context_length": context_length, "skip_positions": skip_positions,
        "eval_docs": eval_docs, "seed": seed,
        "corpus": data.fingerprint, "model": model.fingerprint(),
    }  # fmt: skip

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, state = out / CHECKPOINT, None
    if resume and checkpoint.is_file():
        state = read_checkpoint(checkpoint, "train_dictionaries")
        saved = json.loads(state["options"])
        if saved != options:
            differ = ", ".join(key for key in options if saved.get(key) != options[key])
            raise ValueError(
                f"{checkpoint} was written with other arguments ({differ}); pass the same ones "
                f"to continue, or resume=False to start again"
            )
    buffer = _Buffer(model, names, data, options)
    if state is None:
        buffer.load(0, 0)
        sinks = {n: r for n, r in buffer.first_norm_ratio.items() if r > 10}
        if sinks and not skip_positions:
            worst = max(sinks, key=sinks.get)
            warnings.warn(
                f"the first token's activation norm is {sinks[worst]:.0f} times the others' at "
                f"{worst} (and {len(sinks) - 1} more submodule(s)): an attention sink that will "
                "set the SAEs' scale and variance; pass skip_positions=1 (--skip-positions 1) to "
                "train on the other tokens",
                stacklevel=2,
            )
    else:
        buffer.load(int(state["fill"]), int(state["position"]), int(state["offset"]))
    generator = torch.Generator().manual_seed(seed)
    trainees: dict[str, _Trainee] = {}
    for name in names:
        d_model = model.submodule(name).width
        trainees[name] = _Trainee(
            d_model, widths[name], activation=activation, k=ks[name],
            lr=lr if lr is not None else 2e-4 / math.sqrt(widths[name] / 2**14),
            sparsity=sparsity_coefficient, auxk_alpha=auxk_alpha,
            k_aux=k_aux if k_aux is not None else max(1, d_model // 2),
            dead_after=dead_after, generator=generator,
        ).to(buffer.acts[name].device)  # fmt: skip
        if state is None:
            trainees[name].initialise(buffer.acts[name][buffer.order.to(buffer.acts[name].device)])
        else:
            trainees[name].load_state_dict(state["trainees"][name])
            trainees[name].optimizer.load_state_dict(state["optimizers"][name])
    step = 0 if state is None else int(state["step"])

    from tqdm.auto import tqdm

    bar = tqdm(total=steps, initial=step, desc="train SAEs", disable=not progress)
    with stop_requests() as stop_requested:
        while step < steps:
            batch, factor = buffer.next(), _lr_factor(step, steps)
            stats = {
                name: t.step(
                    batch[name].float() / t.scale,  # [batch_size, d_model]
                    factor,
                    learn_threshold=step >= min(1000, steps // 2),
                )
                for name, t in trainees.items()
            }
            step += 1
            # Every process stops at the same step, where any of them was asked to.
            stopping = bool(all_sum([torch.tensor(float(stop_requested()))])[0])
            due = checkpoint_every and step % checkpoint_every == 0
            if (due or stopping) and step < steps:
                state = {
                    "schema_version": SCHEMA_VERSION, "options": json.dumps(options), "step": step,
                    "fill": buffer.fill, "position": buffer.position, "offset": buffer.offset,
                    "trainees": {n: t.state_dict() for n, t in trainees.items()},
                    "optimizers": {n: t.optimizer.state_dict() for n, t in trainees.items()},
                }  # fmt: skip
                with replacing(checkpoint) as tmp:
                    torch.save(state, tmp)
            if callback is not None or step % 10 == 0 or step == steps:
                floats = {n: {key: v.item() for key, v in s.items()} for n, s in stats.items()}
                means = {
                    key: sum(s[key] for s in floats.values()) / len(names)
                    for key in stats[names[0]]
                }
                bar.set_postfix({key: f"{v:.3g}" for key, v in means.items()}, refresh=False)
                if callback is not None:
                    callback(step, floats)
            bar.update(1)
            if stopping and step < steps:
                raise Interrupted(
                    f"dictionary training stopped after step {step}; saved to {checkpoint}, "
                    "rerun the same command to resume"
                )
    bar.close()

    saes = {name: t.export().to(t.scale.device) for name, t in trainees.items()}
    metrics = _evaluate(model, saes, data, task, options)
    results = {}
    for name, sae in saes.items():
        sub, t = model.submodule(name), trainees[name]
        folder = save_dictionary(sae, out / sfc_directory_name(sub.kind, sub.layer))
        record = {
            "schema_version": SCHEMA_VERSION, "submodule": name, "activation": activation,
            "width": widths[name], "k": ks[name] if activation in ("topk", "batchtopk") else None,
            "steps": steps, "tokens": steps * batch_size, "scale": t.scale.item(),
            "skip_positions": skip_positions,
            "dead_fraction_train": (t.since_fired >= dead_after).float().mean().item(),
            **metrics[name],
        }  # fmt: skip
        text = json.dumps(record, indent=2) + "\n"
        write_text(folder / METRICS, text)
        results[name] = TrainedDictionary(sae.to(dtype=model.dtype), record, folder)
    checkpoint.unlink(missing_ok=True)
    return results

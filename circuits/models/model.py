"""`Model`: a language model wrapped in nnsight, its submodules addressed by name.

See `circuits.models` for the names and how reads and writes find an activation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import nnsight
import torch

if TYPE_CHECKING:
    from nnsight.intervention.envoy import Envoy


from circuits.models.families import Architecture, Site

T = TypeVar("T")


@dataclass(frozen=True)
class Submodule:
    """A named place in the model whose activation methods read, split and edit.

    Attributes:
        name: ``embed``, ``attn_{i}``, ``mlp_{i}`` or ``resid_{i}``.
        kind: ``embed``, ``attn``, ``mlp`` or ``resid``.
        layer: The block index, or None for ``embed``.
        width: The activation's last dimension: d_model, except where a site reads something
            else (Gemma-2's attention is the input of ``o_proj``, num_heads * head_dim wide).
    """

    name: str
    kind: Literal["embed", "attn", "mlp", "resid"]
    layer: int | None
    width: int


@dataclass(frozen=True)
class Batch:
    """Tokenized prompts, padded on the right.

    Attributes:
        input_ids: ``[batch, pos]`` token ids; padding positions hold the pad id.
        attention_mask: ``[batch, pos]``, 1 for real tokens and 0 for padding.
        last: ``[batch]`` index of each prompt's last real token.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    last: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def at_last(self, values: torch.Tensor) -> torch.Tensor:
        """Pick each prompt's last real position: ``[batch, pos, ...]`` -> ``[batch, ...]``.

        Works on plain tensors and on values read inside a trace (logits, activations).
        """
        rows = torch.arange(values.shape[0], device=values.device)
        return values[rows, self.last.to(values.device)]


def _first(value: Any, where: str) -> torch.Tensor:
    """The activation in a module's output: the tensor itself, or a tuple's first element."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(
        f"{where} is a {type(value).__name__}, not a tensor or a tuple starting with one; "
        "register an Architecture whose Site points at a module that returns the activation"
    )


def _replace_first(old: Any, new: torch.Tensor) -> Any:
    """``old`` with its activation swapped for ``new``, keeping a tuple's other elements."""
    if isinstance(old, torch.Tensor):
        return new
    return type(old)((new, *old[1:])) if isinstance(old, list) else (new, *old[1:])


def _attribute_path(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """Follow a dotted attribute path (getattr, so wrapped modules that forward attributes work)."""
    module: Any = root
    for part in path.split("."):
        try:
            module = getattr(module, part)
        except AttributeError:
            raise AttributeError(
                f"{type(root).__name__} has no module at {path!r} (no attribute {part!r} on "
                f"{type(module).__name__}); the Architecture row does not match this model"
            ) from None
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{path!r} is a {type(module).__name__}, not a torch module")
    return module


class Model:
    """A language model wrapped in nnsight, with submodules addressed by name.

    Build one with `load_model`. Methods in this toolkit take a `Model` and never reach into the
    architecture themselves.

    Attributes:
        lm: The nnsight envoy wrapping the model (``lm.trace``, ``lm.output``, ...).
        torch_model: The wrapped ``torch.nn.Module`` itself (Hugging Face model or
            HookedTransformer). Calling it directly bypasses nnsight: it runs here, and the
            edits of `circuits.edit.edited` do not apply.
        tokenizer: The tokenizer: a private copy of the one given, so settings made on it (a pad
            token where it had none, right padding to match `tokenize`) never reach the
            caller's object.
        architecture: The alias-table row in use.
        n_layers: Number of transformer blocks.
        d_model: Width of the residual stream.
        vocab_size: Width of the logits.
        parallel_attn: Whether attention and MLP read the same residual (no attn -> mlp edge).
        max_positions: The longest input the model was built for (its config's
            ``max_position_embeddings``, ``n_positions`` or ``n_ctx``); None when it names none.
        submodules: Every `Submodule` in forward order: embed, attn_0, mlp_0, resid_0, attn_1, ...
        remote: Where `trace`, `forward` and `generate` run: False (here), ``"local"``
            (nnsight's dry run of remote execution), True (NDIF) or a host URL. Every method of
            the toolkit runs through them.
    """

    def __init__(
        self,
        lm: Envoy,
        torch_model: torch.nn.Module,
        tokenizer: Any,
        architecture: Architecture,
        *,
        input_name: str = "input_ids",
        remote: bool | str = False,
    ) -> None:
        """Wrap an already-built envoy; `load_model` is the usual way in.

        Args:
            lm: The nnsight envoy over ``torch_model``.
            torch_model: The model itself.
            tokenizer: Its tokenizer (used as given, not copied).
            architecture: The alias-table row describing ``torch_model``.
            input_name: The forward's keyword for token ids (``"input"`` for a HookedTransformer).
            remote: Where `trace` runs (see `load_model`).
        """
        self.lm = lm
        self.torch_model = torch_model
        self.tokenizer = tokenizer
        self.architecture = architecture
        self._input_name = input_name
        self.remote = remote
        self._in_session = False  # inside `in_session`: traces join its request

        blocks = _attribute_path(torch_model, architecture.blocks)
        self.n_layers = len(blocks)

        config = getattr(torch_model, "config", None)
        self.max_positions: int | None = next(
            (
                int(getattr(config, key))
                for key in ("max_position_embeddings", "n_positions", "n_ctx")
                if isinstance(getattr(config, key, None), int)
            ),
            None,
        )
        flag = architecture.parallel_attn_flag
        if flag is not None and config is not None and hasattr(config, flag):
            self.parallel_attn = bool(getattr(config, flag))
        else:
            self.parallel_attn = architecture.parallel_attn

        # name -> (kind, layer, site from the root), in forward order.
        sites: dict[str, tuple[Any, int | None, Site]] = {}
        if architecture.embed is not None:
            sites["embed"] = ("embed", None, Site(architecture.embed))
        for layer in range(self.n_layers):
            block = f"{architecture.blocks}.{layer}"
            attn, mlp = architecture.attn, architecture.mlp
            sites[f"attn_{layer}"] = ("attn", layer, Site(f"{block}.{attn.path}", attn.io))
            sites[f"mlp_{layer}"] = ("mlp", layer, Site(f"{block}.{mlp.path}", mlp.io))
            sites[f"resid_{layer}"] = ("resid", layer, Site(block))
        self._sites = {name: site for name, (_, _, site) in sites.items()}
        self._modules = {
            name: _attribute_path(torch_model, s.path) for name, s in self._sites.items()
        }

        widths, self.vocab_size = self._measure_widths()
        self.submodules: tuple[Submodule, ...] = tuple(
            Submodule(name=name, kind=kind, layer=layer, width=widths[name])
            for name, (kind, layer, _) in sites.items()
        )
        self._by_name = {sub.name: sub for sub in self.submodules}
        self.d_model = widths[f"resid_{self.n_layers - 1}"] if self.n_layers else widths["embed"]
        self._envoys = {name: self.lm.get(site.path) for name, site in self._sites.items()}

    # -- facts -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the model's first parameter (with a device map, where
        the embedding runs)."""
        return _module_device(self.torch_model)

    def device_of(self, name: str | Submodule) -> torch.device:
        """Where submodule ``name``'s activation is computed (with a device map, the device its
        layer runs on)."""
        sub = self.submodule(name)
        return _module_device(self.module(sub.name), self.device)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's first floating-point parameter."""
        for parameter in self.torch_model.parameters():
            if parameter.is_floating_point():
                return parameter.dtype
        return torch.get_default_dtype()

    def submodule(self, name: str | Submodule) -> Submodule:
        """The `Submodule` called ``name``.

        Raises:
            ValueError: for an unknown name, listing the valid ones.
        """
        if isinstance(name, Submodule):
            name = name.name
        try:
            return self._by_name[name]
        except KeyError:
            raise ValueError(
                f"No submodule {name!r} in this {self.architecture.name} model. Valid names: "
                f"{', '.join(self._by_name)}"
            ) from None

    def site(self, sub: str | Submodule) -> Site:
        """Where ``sub`` is read, as a path from the model root plus ``output``/``input``."""
        return self._sites[self.submodule(sub).name]

    def module(self, sub: str | Submodule) -> torch.nn.Module:
        """The torch module whose output (or input, see `site`) is ``sub``'s activation."""
        return self._modules[self.submodule(sub).name]

    def __repr__(self) -> str:
        return (
            f"Model({self.architecture.name}, n_layers={self.n_layers}, d_model={self.d_model}, "
            f"vocab_size={self.vocab_size}, device={self.device}, dtype={self.dtype})"
        )

    # -- inputs ----------------------------------------------------------------------------

    def tokenize(
        self,
        prompts: Sequence[str],
        *,
        add_special_tokens: bool = True,
        max_tokens: int | None = None,
    ) -> Batch:
        """Tokenize prompts into a right-padded `Batch`.

        Right padding keeps every real token at its natural position (0, 1, 2, ... from the
        start of the prompt), so absolute and rotary position embeddings see a padded prompt
        exactly as they see it alone, no ``position_ids`` are needed, and position ``p`` names
        the same token index in every prompt. Causal attention never lets a real token see the
        padding after it. The padding id (the tokenizer's pad token, else EOS, else 0) is masked
        and never affects a real position.

        Args:
            prompts: The texts, one per row.
            add_special_tokens: Whether the tokenizer adds its special tokens (e.g. BOS).
            max_tokens: Cut each prompt to its first ``max_tokens`` tokens (documents read for
                their activations); None keeps them whole.
        """
        if isinstance(prompts, str):
            raise TypeError("tokenize takes a list of prompts; wrap a single prompt in a list")
        if not prompts:
            raise ValueError("tokenize needs at least one prompt")
        encoded = self.tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        if max_tokens is not None:
            encoded = [ids[:max_tokens] for ids in encoded]
        empty = [prompt for prompt, ids in zip(prompts, encoded, strict=True) if len(ids) == 0]
        if empty:
            raise ValueError(f"prompts with no tokens: {empty!r}")
        longest = max(range(len(encoded)), key=lambda row: len(encoded[row]))
        if self.max_positions is not None and len(encoded[longest]) > self.max_positions:
            raise ValueError(
                f"a prompt has {len(encoded[longest])} tokens, more than the model's "
                f"{self.max_positions} positions: {prompts[longest][:80]!r}...; shorten it"
            )
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        last = attention_mask.sum(dim=1) - 1
        return Batch(input_ids=input_ids, attention_mask=attention_mask, last=last)

    @property
    def pad_id(self) -> int:
        """The id padding uses: the tokenizer's pad token, else EOS, else 0."""
        ids = (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
        return next((token for token in ids if token is not None), 0)

    def fingerprint(self) -> str:
        """sha256 of the model's class, config, every parameter and buffer (tied ones once) and
        its tokenizer's vocabulary: a key for anything computed from this model."""
        config = getattr(self.torch_model, "config", None)
        described = config.to_json_string() if hasattr(config, "to_json_string") else repr(config)
        tensors, seen = [], set()
        for name, tensor in self.torch_model.state_dict(keep_vars=True).items():
            if tensor.is_meta:  # offloaded by a device map: read it where accelerate keeps it
                tensors.append(_offloaded(self.torch_model, name))
            elif tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                tensors.append(tensor)
        vocab = sorted(self.tokenizer.get_vocab().items())
        text = json.dumps(
            [
                type(self.torch_model).__name__,
                described,
                tensors_sha256(tensors),
                vocab,
                self.tokenizer.special_tokens_map,
            ]
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The forward keyword arguments for ``batch``, on the model's device.

        Use them for an invoke of a multi-invoke trace:
        ``with model.lm.trace() as tracer: with tracer.invoke(**model.inputs(batch)): ...``
        """
        device = self.device
        return {
            self._input_name: batch.input_ids.to(device),
            "attention_mask": batch.attention_mask.to(device),
        }

    # -- running ---------------------------------------------------------------------------

    def trace(self, batch: Batch, **kwargs: Any):
        """Open an nnsight trace of one forward over ``batch``: ``with model.trace(batch): ...``.

        The body must live in a source file (nnsight compiles it from there). Extra keyword
        arguments go to ``lm.trace``; the trace runs where `remote` says unless they name
        ``remote`` themselves.
        """
        if self.remote and not self._in_session:
            kwargs.setdefault("remote", self.remote)
        return self.lm.trace(**self.inputs(batch), **kwargs)

    def in_session(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``; on a remote model, as one nnsight session: one request
        that runs ``fn`` where the model is, every trace it opens included, and sends back
        its result.

        Everything between the traces (autograd across them, the arithmetic joining them)
        runs there too, so a result built from several traces' autograd graphs comes back
        whole, where separate traces would each send back values without their graphs. The
        result must be made of tensors and plain containers.
        """
        if not self.remote or self._in_session:
            return fn(*args, **kwargs)
        self._in_session = True
        try:
            with self.lm.session(remote=self.remote):
                result = fn(*args, **kwargs)
                nnsight.save(result)
        finally:
            self._in_session = False
        return result

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[batch, pos, vocab]`` of one forward, run as a trace: it goes where `remote`
        says and sees the edits of `circuits.edit.edited`.

        Gradients follow the caller's grad mode (on a model run here); wrap in
        ``torch.no_grad()`` when not needed.
        """
        with self.trace(batch):
            logits = self.read_logits().save()
        return logits

    def generate(
        self, batch: Batch, *, max_new_tokens: int, use_cache: bool = True
    ) -> torch.Tensor:
        """Greedy continuations ``[batch, new]`` (``new <= max_new_tokens``: generation stops
        early once every row has produced its end-of-sequence token), traced through nnsight's
        generation, so it runs where `remote` says and every step sees the edits of
        `circuits.edit.edited`. ``use_cache=False`` recomputes every position at each step
        instead of continuing the key/value cache.

        Raises:
            ValueError: for prompts of different lengths (right padding would put the new
                tokens after the padding), or ``max_new_tokens < 1``.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not bool(batch.attention_mask.bool().all()):
            raise ValueError(
                "generate takes prompts of one length (no padding); generate the others apart"
            )
        if not hasattr(self.lm, "generate"):
            raise TypeError(
                f"{type(self.torch_model).__name__} has no nnsight generation; load the Hugging "
                "Face model instead"
            )
        remote = self.remote and not self._in_session
        kwargs: dict[str, Any] = {"remote": self.remote} if remote else {}
        with self.lm.generate(
            **self.inputs(batch),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            use_cache=use_cache,
            **kwargs,
        ) as tracer:
            tokens = tracer.result.save()  # [batch, pos + new]
        return tokens[:, batch.input_ids.shape[1] :].cpu()

    def read(self, sub: str | Submodule) -> torch.Tensor:
        """Inside a trace: ``sub``'s activation, ``[batch, pos, width]``.

        Reads must follow forward order within one invoke (nnsight raises ``OutOfOrderError``
        otherwise); reading the same submodule again returns the same value. The result
        supports ``.save()`` and, under ``with metric.backward():``, ``.grad``.
        """
        name = self.submodule(sub).name
        envoy, site = self._envoys[name], self._sites[name]
        if site.io == "input":
            return _first(envoy.input, f"the input of {site.path}")
        return _first(envoy.output, f"the output of {site.path}")

    def write(self, sub: str | Submodule, value: torch.Tensor) -> None:
        """Inside a trace: replace ``sub``'s activation with ``value`` (``[batch, pos, width]``).

        Everything downstream sees ``value``. A tuple output keeps its other elements.

        Raises:
            ValueError: when ``value``'s shape differs from the activation's.
        """
        name = self.submodule(sub).name
        envoy, site = self._envoys[name], self._sites[name]
        old = envoy.input if site.io == "input" else envoy.output
        current = _first(old, f"the {site.io} of {site.path}")
        if tuple(value.shape) != tuple(current.shape):
            raise ValueError(
                f"cannot write a {tuple(value.shape)} tensor into {name}, whose activation is "
                f"{tuple(current.shape)} [batch, pos, width]"
            )
        if site.io == "input":
            envoy.input = value
        else:
            envoy.output = _replace_first(old, value)

    def read_logits(self) -> torch.Tensor:
        """Inside a trace: the logits ``[batch, pos, vocab]`` (``batch.at_last`` picks the last)."""
        return _logits(self.lm.output)

    # -- construction helpers ----------------------------------------------------------------

    def _measure_widths(self) -> tuple[dict[str, int], int]:
        """Trace one single-token forward (here, never remotely: the model is being built) and
        record each site's shape and the logits' width."""
        token = getattr(self.tokenizer, "bos_token_id", None) or 0
        ids = torch.tensor([[token]], device=self.device)
        envoys = {name: self.lm.get(site.path) for name, site in self._sites.items()}
        try:
            with torch.no_grad():
                with self.lm.trace(**{self._input_name: ids}):
                    values = nnsight.save(
                        {
                            name: envoys[name].input if site.io == "input" else envoys[name].output
                            for name, site in self._sites.items()
                        }
                    )
                    output = nnsight.save(self.lm.output)
        except Exception as error:  # nnsight names the module that never ran
            raise RuntimeError(
                f"the {self.architecture.name} sites did not all run, in forward order, in one "
                f"forward pass ({type(error).__name__}: {error}); the Architecture row does not "
                "match this model"
            ) from error
        shapes = {
            name: tuple(_first(values[name], f"the {site.io} of {site.path}").shape)
            for name, site in self._sites.items()
        }
        for name, shape in shapes.items():
            if shape[:2] != (1, 1) or len(shape) != 3:
                site = self._sites[name]
                raise ValueError(
                    f"{name} (the {site.io} of {site.path}) has shape {shape} for one token, not "
                    "[batch, pos, width]; point the Architecture row at a module whose activation "
                    "keeps the batch and position axes"
                )
        return {name: shape[-1] for name, shape in shapes.items()}, _logits(output).shape[-1]


def _logits(output: Any) -> torch.Tensor:
    """Logits from a model output: a Hugging Face output's ``.logits`` or a bare tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output.logits


# ---------------------------------------------------------------------------------------------


def _module_device(module: torch.nn.Module, default: torch.device | None = None) -> torch.device:
    """The device ``module`` runs on: accelerate's execution device where a device map placed
    it, else that of its first parameter that holds data."""
    for inner in module.modules():
        hook = getattr(inner, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
        for parameter in inner.parameters(recurse=False):
            if not parameter.is_meta:
                return parameter.device
    return default if default is not None else torch.device("cpu")


def _offloaded(torch_model: torch.nn.Module, name: str) -> torch.Tensor:
    """The weights of parameter or buffer ``name``, which a device map offloaded to CPU or disk
    (its module holds a meta tensor; accelerate's hook on the module keeps the real one)."""
    path, _, leaf = name.rpartition(".")
    module = torch_model.get_submodule(path)
    weights = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
    if weights is None:
        raise ValueError(f"{name} has no weights here (a meta tensor) and no offloaded copy")
    return weights[leaf]


def tensors_sha256(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 over each tensor's shape, dtype and bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(flat.view(torch.uint8).numpy())  # the buffer itself, not a copy
    return digest.hexdigest()

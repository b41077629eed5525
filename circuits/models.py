"""Load a causal language model and address its submodules by name.

`load_model` wraps any supported model in nnsight (no second copy of the model, nothing patched)
and returns a `Model`: the nnsight envoy plus the names every method in this toolkit uses,

    embed, attn_0, mlp_0, resid_0, attn_1, mlp_1, resid_1, ...

in forward order. Each name is a `Submodule` record; inside a trace `Model.read` returns its
activation as a ``[batch, pos, width]`` tensor and `Model.write` replaces it:

    model = load_model("EleutherAI/pythia-70m-deduped")
    batch = model.tokenize(["The teachers near the desk", "The teacher"])
    with model.trace(batch):
        acts = model.read("mlp_2").save()            # [batch, pos, d_model]
        model.write("attn_3", model.read("attn_3") * 0)
        last = batch.at_last(model.read_logits()).save()   # [batch, vocab]

Where an activation lives differs between architectures; that knowledge is one row per family in
an alias table (`Architecture`, `register_architecture`), never a branch in code. A row names the
ModuleList of blocks, the embedding module, and a `Site` for attention and one for the MLP
relative to a block: a dotted path plus whether the activation is that module's output or its
first positional input. ``resid_i`` is always block i's output.

Modules return their activation either as a bare tensor or as a tuple whose first element is the
activation (transformers 5.x: GPT-NeoX layers and MLPs return a tensor, attention returns
``(out, weights)``). `Model.read` and `Model.write` handle both; a write into a tuple output
rebuilds the tuple around the new first element, so the batch dimension is never mistaken for
the tuple's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from nnsight.intervention.envoy import Envoy

#: The directory the ``"zoo"`` source resolves to.
ZOO_MODEL_DIR = Path(__file__).resolve().parent / "zoo" / "data" / "model"

_HOOKED_TRANSFORMER_TYPE = "transformer_lens.HookedTransformer"


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where an activation is read: a module, and whether it is that module's output or input.

    Attributes:
        path: Dotted attribute path of the module, relative to the block for the attention and MLP
            sites of an `Architecture`, or from the model root in `Model.site`.
        io: ``"output"`` reads the module's output (a tensor, or the first element of a tuple);
            ``"input"`` reads its first positional input.
    """

    path: str
    io: Literal["output", "input"] = "output"

    def __post_init__(self) -> None:
        if self.io not in ("output", "input"):
            raise ValueError(f"Site.io must be 'output' or 'input', got {self.io!r}")


@dataclass(frozen=True)
class Architecture:
    """One family's row in the alias table: where embed / attn_i / mlp_i / resid_i live.

    Attributes:
        name: Short name of the family, e.g. ``"gpt_neox"``.
        model_types: The Hugging Face ``config.model_type`` values this row covers.
        blocks: Dotted path from the model root to the ModuleList of transformer blocks.
        embed: Dotted path from the root to the token-embedding module (its output is ``embed``),
            or None when the family has no embed node.
        attn: The attention activation, relative to a block.
        mlp: The MLP activation, relative to a block.
        parallel_attn: Whether attention and MLP read the same residual (GPT-J / NeoX style).
        parallel_attn_flag: Name of a config attribute that, when the config has it, decides
            ``parallel_attn`` instead (GPT-NeoX: ``use_parallel_residual``).
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    embed: str | None
    attn: Site
    mlp: Site
    parallel_attn: bool = False
    parallel_attn_flag: str | None = None


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


# ---------------------------------------------------------------------------------------------
# The alias table
# ---------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Architecture] = {}


def register_architecture(architecture: Architecture) -> Architecture:
    """Add a family to the alias table (a family of the same name is replaced).

    When several rows cover one ``model_type``, the one registered last wins, so a row registered
    by user code overrides a shipped one.

    Example::

        register_architecture(Architecture(
            name="opt", model_types=("opt",), blocks="model.decoder.layers",
            embed="model.decoder.embed_tokens", attn=Site("self_attn"), mlp=Site("fc2")))
    """
    if not isinstance(architecture, Architecture):
        raise TypeError(f"expected an Architecture, got {type(architecture).__name__}")
    _REGISTRY.pop(architecture.name, None)
    _REGISTRY[architecture.name] = architecture
    return architecture


def architectures() -> dict[str, Architecture]:
    """The registered families by name, in registration order."""
    return dict(_REGISTRY)


def find_architecture(model_type: str) -> Architecture:
    """The row covering a Hugging Face ``model_type``.

    Raises:
        ValueError: naming the supported model types and showing how to register a new family.
    """
    for architecture in reversed(list(_REGISTRY.values())):
        if model_type in architecture.model_types:
            return architecture
    supported = ", ".join(
        f"{arch.name} ({', '.join(arch.model_types)})" for arch in _REGISTRY.values()
    )
    raise ValueError(
        f"Unsupported architecture: model_type {model_type!r} is not in the alias table.\n"
        f"Supported: {supported}.\n"
        "Describe the family once and load again, e.g.:\n"
        "    from circuits.models import Architecture, Site, register_architecture\n"
        f"    register_architecture(Architecture(name={model_type!r}, "
        f"model_types=({model_type!r},), blocks='model.layers',\n"
        "        embed='model.embed_tokens', attn=Site('self_attn'), mlp=Site('mlp')))"
    )


for _architecture in (
    Architecture(
        name="gpt2",
        model_types=("gpt2",),
        blocks="transformer.h",
        embed="transformer.wte",
        attn=Site("attn"),
        mlp=Site("mlp"),
    ),
    Architecture(
        name="gpt_neox",
        model_types=("gpt_neox",),
        blocks="gpt_neox.layers",
        embed="gpt_neox.embed_in",
        attn=Site("attention"),
        mlp=Site("mlp"),
        parallel_attn=True,
        parallel_attn_flag="use_parallel_residual",
    ),
    Architecture(
        name="llama",
        model_types=("llama", "mistral", "qwen2"),
        blocks="model.layers",
        embed="model.embed_tokens",
        attn=Site("self_attn"),
        mlp=Site("mlp"),
    ),
    Architecture(
        name="gemma2",
        model_types=("gemma2",),
        blocks="model.layers",
        embed=None,
        attn=Site("self_attn.o_proj", "input"),
        mlp=Site("post_feedforward_layernorm"),
    ),
    # TransformerLens 3.x HookedTransformer: hook points are identity modules whose output is the
    # activation; a block's output is its hook_resid_post.
    Architecture(
        name="hooked_transformer",
        model_types=(_HOOKED_TRANSFORMER_TYPE,),
        blocks="blocks",
        embed="hook_embed",
        attn=Site("hook_attn_out"),
        mlp=Site("hook_mlp_out"),
    ),
):
    register_architecture(_architecture)


# ---------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------


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
            HookedTransformer), for plain forwards and plain PyTorch hooks.
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
    """

    def __init__(
        self,
        lm: Envoy,
        torch_model: torch.nn.Module,
        tokenizer: Any,
        architecture: Architecture,
        *,
        input_name: str = "input_ids",
    ) -> None:
        """Wrap an already-built envoy; `load_model` is the usual way in.

        Args:
            lm: The nnsight envoy over ``torch_model``.
            torch_model: The model itself.
            tokenizer: Its tokenizer (used as given, not copied).
            architecture: The alias-table row describing ``torch_model``.
            input_name: The forward's keyword for token ids (``"input"`` for a HookedTransformer).
        """
        self.lm = lm
        self.torch_model = torch_model
        self.tokenizer = tokenizer
        self.architecture = architecture
        self._input_name = input_name

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

    def tokenize(self, prompts: Sequence[str], *, add_special_tokens: bool = True) -> Batch:
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
        """
        if isinstance(prompts, str):
            raise TypeError("tokenize takes a list of prompts; wrap a single prompt in a list")
        if not prompts:
            raise ValueError("tokenize needs at least one prompt")
        encoded = self.tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        empty = [prompt for prompt, ids in zip(prompts, encoded, strict=True) if len(ids) == 0]
        if empty:
            raise ValueError(f"prompts with no tokens: {empty!r}")
        longest = max(range(len(encoded)), key=lambda row: len(encoded[row]))
        if self.max_positions is not None and len(encoded[longest]) > self.max_positions:
            raise ValueError(
                f"a prompt has {len(encoded[longest])} tokens, more than the model's "
                f"{self.max_positions} positions: {prompts[longest][:80]!r}...; shorten it"
            )
        pad_id = next(
            (
                token
                for token in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id)
                if token is not None
            ),
            0,
        )
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        last = attention_mask.sum(dim=1) - 1
        return Batch(input_ids=input_ids, attention_mask=attention_mask, last=last)

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
        arguments go to ``lm.trace``.
        """
        return self.lm.trace(**self.inputs(batch), **kwargs)

    def forward(self, batch: Batch) -> torch.Tensor:
        """A plain forward (no trace): logits ``[batch, pos, vocab]``.

        Gradients follow the caller's grad mode; wrap in ``torch.no_grad()`` when not needed.
        """
        return _logits(self.torch_model(**self.inputs(batch)))

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
        """Run one single-token plain forward and record each site's last dimension."""
        shapes: dict[str, tuple[int, ...]] = {}
        handles = []

        def recorder(name: str, io: str):
            def on_output(module, args, output):
                shapes[name] = tuple(_first(output, name).shape)

            def on_input(module, args):
                shapes[name] = tuple(_first(args, name).shape)

            return on_input if io == "input" else on_output

        for name, site in self._sites.items():
            module = self._modules[name]
            hook = recorder(name, site.io)
            if site.io == "input":
                handles.append(module.register_forward_pre_hook(hook))
            else:
                handles.append(module.register_forward_hook(hook))
        token = getattr(self.tokenizer, "bos_token_id", None) or 0
        ids = torch.tensor([[token]], device=self.device)
        try:
            with torch.no_grad():
                output = self.torch_model(**{self._input_name: ids})
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self._sites if name not in shapes]
        if missing:
            raise RuntimeError(
                f"the {self.architecture.name} sites {missing} never ran in a forward pass; the "
                "Architecture row does not match this model"
            )
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
# Loading
# ---------------------------------------------------------------------------------------------


def _resolve_source(source: str) -> str:
    """Map the ``"zoo"`` and ``"smollm2-135m"`` names to their model directories; other strings
    pass through.

    Raises:
        FileNotFoundError: when the zoo model has not been built yet.
        ImportError: for ``"smollm2-135m"`` without the ``smollm2`` extra installed.
    """
    if source == "smollm2-135m":
        from circuits.smollm2 import model_dir

        return str(model_dir())
    if source != "zoo":
        return source
    if not (ZOO_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"The zoo model is missing: expected a saved model at {ZOO_MODEL_DIR}. "
            "Build it with `circuits zoo build --in-package`."
        )
    return str(ZOO_MODEL_DIR)


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(resolved, torch.dtype):
            return resolved
    raise ValueError(
        f"unknown dtype {dtype!r}; pass a torch.dtype or a name such as 'float32', 'bfloat16', "
        "'float16'"
    )


def name_or_path(torch_model: torch.nn.Module) -> str:
    """The hub name or directory a Hugging Face model was loaded from ("" when unknown)."""
    name = getattr(torch_model, "name_or_path", "") or getattr(
        getattr(torch_model, "config", None), "_name_or_path", ""
    )
    return str(name or "")


def _resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a `torch.device`, refused with one clear line when it is not there."""
    if device is None:
        return None
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:1' or 'mps'"
        ) from exc
    available = {
        "cuda": (torch.cuda.is_available, torch.cuda.device_count),
        "mps": (torch.backends.mps.is_available, lambda: 1),
    }.get(resolved.type)
    if available is not None:
        if not available[0]():
            raise ValueError(
                f"device {device!r} is not available: this torch ({torch.__version__}) sees no "
                f"{resolved.type.upper()} device; use 'cpu'"
            )
        if resolved.index is not None and resolved.index >= available[1]():
            raise ValueError(
                f"device {device!r} is not available: {available[1]()} {resolved.type} "
                "device(s) are visible"
            )
    return resolved


def _looks_local(source: str) -> bool:
    """Whether a string names a local path rather than a hub id (``owner/name`` or ``name``)."""
    return (
        os.path.exists(source)
        or source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or "\\" in source
    )


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


def _load_pretrained(
    source: str,
    dtype: torch.dtype | None,
    trust_remote_code: bool,
    placement: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if _looks_local(source):
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"No model at {str(path)!r}: expected a directory saved with save_pretrained "
                "(config.json, weights, tokenizer files), or a hub name such as "
                "'EleutherAI/pythia-70m-deduped'."
            )
        source = str(path)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, **(placement or {})}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as error:
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if Path(source).is_dir():
            raise OSError(f"Could not load the model saved in {source!r}: {cause}") from error
        raise OSError(
            f"Could not load a model from {source!r}: there is no directory of that name here "
            f"({Path.cwd()}), and the Hugging Face hub could not provide it (offline, or no such "
            "model). Pass a local directory, or a hub name such as "
            f"'EleutherAI/pythia-70m-deduped' while online (cached afterwards). Cause: {cause}"
        ) from error
    except ValueError as error:
        if trust_remote_code or "trust_remote_code" not in str(error):
            raise
        raise ValueError(_REMOTE_CODE.format(source=source)) from None
    except SafetensorError as error:
        files = sorted(p.name for p in Path(source).glob("*.safetensors"))
        raise OSError(
            f"the weights in {source!r} ({', '.join(files) or 'safetensors'}) cannot be read "
            f"({error}): the file is truncated or corrupt; save the model again"
        ) from None


_REMOTE_CODE = (
    "{source!r} asks to run Python code of its own (auto_map in its config); it is not run "
    "unless you pass trust_remote_code=True (CLI: --trust-remote-code), after reading that code"
)


def _load_tokenizer(source: str, what: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        if not trust_remote_code and "trust_remote_code" in str(error):
            raise ValueError(_REMOTE_CODE.format(source=source)) from None
        raise OSError(
            f"No tokenizer found for {what} at {source!r}; pass tokenizer= (a tokenizer object or "
            f"the directory/hub name it was saved under). Cause: {error}"
        ) from error
    if len(tokenizer) <= 1:  # no vocabulary files: transformers builds an empty tokenizer
        raise OSError(
            f"The tokenizer for {what} at {source!r} has no vocabulary (no tokenizer.json, "
            "vocab or merges files there); save the tokenizer beside the model "
            "(tokenizer.save_pretrained) or pass tokenizer="
        )
    return tokenizer


def _transformer_lens_classes() -> tuple[type | None, type | None]:
    """(TransformerBridge, HookedTransformer), each None where the installed version lacks it."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        TransformerBridge = None  # noqa: N806
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        HookedTransformer = None  # noqa: N806
    return TransformerBridge, HookedTransformer


def load_model(
    source: Any,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    device_map: str | Mapping[str, Any] | None = None,
    max_memory: Mapping[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
    architecture: Architecture | str | None = None,
    tokenizer: Any = None,
    trust_remote_code: bool = False,
) -> Model:
    """Load or wrap a causal language model.

    Args:
        source: One of
            - a hub name (``"EleutherAI/pythia-70m-deduped"``) or a directory saved with
              ``save_pretrained``: both load through ``AutoModelForCausalLM.from_pretrained``;
            - ``"zoo"``: the model shipped with this package (built by ``circuits zoo build``);
            - ``"smollm2-135m"``: SmolLM2-135M-Instruct from the ``smollm2`` extra, converted
              once into ``$CIRCUITS_CACHE`` (default ``~/.cache/circuits``; see
              `circuits.smollm2`);
            - a built Hugging Face ``PreTrainedModel`` (its tokenizer is ``tokenizer=`` or is
              loaded from the model's ``name_or_path``);
            - a TransformerLens 4.x ``TransformerBridge``: the Hugging Face model it wraps is
              used, with the bridge's tokenizer (which prepends the BOS token when the bridge's
              ``cfg.default_prepend_bos`` is set, TransformerLens' default, even where the
              model's own tokenizer does not; pass ``tokenizer=`` to tokenize as the model's);
            - a TransformerLens 3.x ``HookedTransformer`` (where that version is installed).
        device: Where the weights go. None means ``"cpu"`` for a model loaded here and "where it
            already is" for a built one.
        dtype: A torch dtype or its name (``"float32"``, ``"bfloat16"``); None keeps the
            checkpoint's (or the built model's) dtype.
        device_map: For a model loaded here, accelerate's placement, passed to
            ``from_pretrained``: ``"auto"``, or ``{module path: device | "cpu" | "disk"}``
            (e.g. ``{"gpt_neox.layers.5": "disk", ...}``, every module covered). Layers may then
            sit on different devices or be offloaded; dictionaries follow their submodule's
            device (`Model.device_of`). Not with ``device``.
        max_memory: With ``device_map="auto"``: ``{device: "10GiB", "cpu": "30GiB"}``.
        offload_folder: Where ``"disk"`` layers are kept.
        architecture: An `Architecture` row, or the name of a registered one, to use instead of
            looking the model's ``config.model_type`` up in the alias table.
        tokenizer: A tokenizer object, or the directory / hub name to load one from. It is copied,
            so the object passed in is never modified.
        trust_remote_code: Let a model or tokenizer whose config names code of its own
            (``auto_map``) run that code. Off by default: such a model is refused with a message
            saying so, never run and never prompted for.

    Warning:
        A built model (or bridge) given with ``device``/``dtype`` is moved/cast in place, as
        ``torch.nn.Module.to`` does, and nnsight registers its hooks on it.

    Raises:
        FileNotFoundError: for a missing local directory or an unbuilt zoo.
        ImportError: for ``"smollm2-135m"`` without the ``smollm2`` extra (the message says what
            to install).
        OSError: when a hub model or a tokenizer cannot be found.
        ValueError: for an architecture not in the alias table (the message shows how to add it),
            an unknown dtype, or a device that is unknown or not available (``"cuda"`` where
            torch sees no GPU).
    """
    dtype = _resolve_dtype(dtype)
    device = _resolve_device(device)
    input_name = "input_ids"
    model_type: str | None = None

    placement = {
        key: value
        for key, value in (
            ("device_map", device_map), ("max_memory", max_memory),
            ("offload_folder", None if offload_folder is None else os.fspath(offload_folder)),
        )
        if value is not None
    }  # fmt: skip
    if placement and (device is not None or not isinstance(source, (str, os.PathLike))):
        raise ValueError(
            "device_map, max_memory and offload_folder place a model loaded here; give "
            "device_map instead of device (for a built model, dispatch it before passing it)"
        )
    if isinstance(source, (str, os.PathLike)):
        source = _resolve_source(os.fspath(source))
        torch_model = _load_pretrained(source, dtype, trust_remote_code, placement)
        if not placement:
            torch_model.to(device if device is not None else "cpu")
        torch_model.eval()
        if tokenizer is None:
            tokenizer = _load_tokenizer(source, "the model", trust_remote_code)
    elif isinstance(source, torch.nn.Module):
        torch_model = source
        bridge_cls, hooked_cls = (
            _transformer_lens_classes()
            if type(source).__module__.startswith("transformer_lens")
            else (None, None)
        )
        if bridge_cls is not None and isinstance(source, bridge_cls):
            torch_model = source.original_model
            tokenizer = tokenizer if tokenizer is not None else source.tokenizer
        elif hooked_cls is not None and isinstance(source, hooked_cls):
            tokenizer = tokenizer if tokenizer is not None else source.tokenizer
            model_type, input_name = _HOOKED_TRANSFORMER_TYPE, "input"
        if device is not None or dtype is not None:
            torch_model.to(device=device, dtype=dtype)
        if tokenizer is None:
            name = name_or_path(torch_model)
            if not name:
                raise ValueError(
                    f"This {type(torch_model).__name__} has no name_or_path to find its "
                    "tokenizer from; pass tokenizer= (a tokenizer object or its directory)."
                )
            tokenizer = _load_tokenizer(name, type(torch_model).__name__)
    else:
        raise TypeError(
            f"load_model takes a hub name, a directory, 'zoo', a PreTrainedModel, a "
            f"TransformerBridge or a HookedTransformer; got {type(source).__name__}"
        )

    if tokenizer is None:
        raise ValueError("a tokenizer is required; pass tokenizer=")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(os.fspath(tokenizer), "tokenizer=", trust_remote_code)
    else:
        tokenizer = copy.deepcopy(tokenizer)

    if isinstance(architecture, str):
        if architecture not in _REGISTRY:
            raise ValueError(
                f"No registered architecture named {architecture!r}; registered: "
                f"{', '.join(_REGISTRY)}"
            )
        architecture = _REGISTRY[architecture]
    elif architecture is None:
        if model_type is None:
            model_type = getattr(getattr(torch_model, "config", None), "model_type", None)
        if model_type is None:
            raise ValueError(
                f"{type(torch_model).__name__} has no config.model_type to look its architecture "
                "up by; pass architecture= (an Architecture or a registered name)."
            )
        architecture = find_architecture(model_type)

    if input_name == "input":
        from nnsight import NNsight

        lm = NNsight(torch_model)
    else:
        from nnsight.modeling.transformers import TransformersModel

        # The pipeline nnsight builds would move a model without a device map to the first
        # accelerator; pin it to where the weights are.
        pinned = (
            {}
            if getattr(torch_model, "hf_device_map", None) is not None
            else {"device": next(torch_model.parameters()).device}
        )
        lm = TransformersModel(torch_model, tokenizer=tokenizer, task="text-generation", **pinned)
        tokenizer = lm.tokenizer
        # One padding side everywhere: nnsight pads invokes of different lengths with this
        # setting, and `Batch.last` stays valid only if that padding goes on the right too.
        tokenizer.padding_side = "right"
    return Model(lm, torch_model, tokenizer, architecture, input_name=input_name)

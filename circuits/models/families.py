"""The alias table: where each architecture family keeps its activations.

One `Architecture` row per family names the ModuleList of blocks, the embedding module, and a
`Site` for attention and one for the MLP relative to a block (a dotted path plus whether the
activation is that module's output or its first positional input). `register_architecture`
adds a row; `find_architecture` picks the row of a Hugging Face ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Site", "Architecture", "register_architecture", "architectures", "find_architecture"]

_HOOKED_TRANSFORMER_TYPE = "transformer_lens.HookedTransformer"


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

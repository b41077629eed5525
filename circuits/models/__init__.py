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

from circuits.models.families import (
    Architecture,
    Site,
    architectures,
    find_architecture,
    register_architecture,
)
from circuits.models.loading import ZOO_MODEL_DIR, load_model, name_or_path
from circuits.models.model import Batch, Model, Submodule, tensors_sha256

__all__ = [
    "Architecture",
    "Batch",
    "Model",
    "Site",
    "Submodule",
    "ZOO_MODEL_DIR",
    "architectures",
    "find_architecture",
    "load_model",
    "name_or_path",
    "register_architecture",
    "tensors_sha256",
]

"""`load_model`: open a Hugging Face, TransformerLens, zoo or SmolLM2 model as a `Model`."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from circuits.models.families import (
    _HOOKED_TRANSFORMER_TYPE,
    _REGISTRY,
    Architecture,
    find_architecture,
)
from circuits.models.model import Model

#: The directory the ``"zoo"`` source resolves to.
ZOO_MODEL_DIR = Path(__file__).resolve().parent.parent / "zoo" / "data" / "model"


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


def _resolve_remote(remote: bool | str | None) -> bool | str:
    """False, True, ``"local"`` or an ``http(s)://`` host URL."""
    if remote is None or isinstance(remote, bool):
        return bool(remote)
    if remote == "local" or (
        isinstance(remote, str) and remote.startswith(("http://", "https://"))
    ):
        return remote
    raise ValueError(
        f"remote must be False, True (NDIF), 'local' (a dry run here) or a host URL, got {remote!r}"
    )


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
    remote: bool | str = False,
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
        remote: Where the model's nnsight traces run (`Model.remote`): False (here), ``"local"``
            (nnsight's serverless dry run of remote execution: each trace is serialised as for
            NDIF and run here with this package's modules hidden), True (NDIF, at nnsight's
            configured host; API key from nnsight's config or ``NDIF_API_KEY``) or a host URL.

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
            torch sees no GPU), or a ``remote`` that is none of the above.
    """
    remote = _resolve_remote(remote)
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
    return Model(lm, torch_model, tokenizer, architecture, input_name=input_name, remote=remote)

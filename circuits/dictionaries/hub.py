"""Public SAEs by the names their authors publish them under, fetched from the Hugging Face Hub.

``fetch_dictionaries(model, spec)`` turns one of these strings into local dictionary directories,
keyed by the model's submodule names:

- ``"sae-lens:<release>/<sae_id>"``: an SAE from sae-lens's directory of pretrained SAEs, e.g.
  ``"sae-lens:gpt2-small-res-jb/blocks.8.hook_resid_pre"``. ``sae_id`` may be a glob
  (``"sae-lens:pythia-70m-deduped-res-sm/*"``). The directory (release -> repo id, sae_id ->
  folder) is sae-lens's own when ``sae_lens`` is importable, else the copy of a few releases in
  ``releases.json`` beside this module (`sae_lens_releases`).
- ``"sparsify:<repo_id>"``: every hookpoint folder (``cfg.json`` + ``sae.safetensors``) of an
  EleutherAI sparsify repo, e.g. ``"sparsify:EleutherAI/sae-pythia-70m-32k"``.

Each SAE lands on the submodule its hook names: a TransformerLens hook name for sae-lens
(`submodule_for_hook`), a module path under the model's base model for sparsify.

Files already in the Hugging Face cache are read from it (``local_files_only=True``) without
asking the Hub; others are downloaded into it. With ``HF_HUB_OFFLINE=1``, or without a
connection, a file missing from the cache is an error naming the repo, the file and the cache,
and the command that fetches it. A sparsify repo's list of hookpoints comes from the Hub when
online and from the cached snapshot otherwise.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuits.dictionaries.formats import DictionaryFormatError, _read_json

__all__ = [
    "HUB_SCHEMES",
    "SAELensRelease",
    "fetch_dictionaries",
    "sae_lens_releases",
    "submodule_for_hook",
]

HUB_SCHEMES = ("sae-lens:", "sparsify:")
"""Prefixes of the dictionary specs `fetch_dictionaries` resolves."""

_RELEASES = Path(__file__).parent / "releases.json"

_WEIGHTS = {"sae_lens": "sae_weights.safetensors", "gemma_2": "params.npz"}
"""sae-lens conversion (how a release's files are laid out) -> weights file in each SAE folder."""

_MODEL_SIDE_OVERRIDES = {"dataset_path", "model_from_pretrained_kwargs", "neuronpedia_id"}
"""sae-lens config overrides that describe the model or data, not the SAE's computation."""

_EMBED_IS_BLOCK_INPUT = frozenset({"gpt_neox", "llama"})
"""Architectures whose ``embed`` output is block 0's input. GPT-2 adds position embeddings to it
first, so there ``blocks.0.hook_resid_pre`` is no submodule."""

_TL_HOOK = re.compile(
    r"blocks\.(?P<layer>\d+)\.(?P<hook>hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out"
    r"|attn\.hook_z)"
)
_TL_HOOKS = (
    "hook_embed, blocks.L.hook_resid_pre, blocks.L.hook_resid_post, blocks.L.hook_mlp_out, "
    "blocks.L.hook_attn_out, blocks.L.attn.hook_z"
)


# ------------------------------------------------------------------------------------------------
# sae-lens's directory of pretrained SAEs


@dataclass(frozen=True)
class SAELensRelease:
    """One release of sae-lens's directory: a Hub repo holding one SAE folder per id.

    Attributes:
        name: The release, e.g. ``"gpt2-small-res-jb"``.
        repo_id: Its Hugging Face repo, e.g. ``"jbloom/GPT2-Small-SAEs-Reformatted"``.
        model: The model it was trained on, in TransformerLens' naming (``"gpt2-small"``).
        conversion: How its files are laid out: ``"sae_lens"`` (``cfg.json`` +
            ``sae_weights.safetensors``), ``"gemma_2"`` (GemmaScope ``params.npz``), or another
            sae-lens loader this module does not read.
        saes: ``{sae_id: folder in the repo}``.
        cfg_overrides: Values sae-lens puts over every ``cfg.json`` of the release.
    """

    name: str
    repo_id: str
    model: str
    conversion: str
    saes: Mapping[str, str]
    cfg_overrides: Mapping[str, Any] = field(default_factory=dict)


def _sae_lens_directory() -> dict[str, Any] | None:
    """sae-lens's ``get_pretrained_saes_directory()`` (moved in sae-lens 6), or None without it."""
    for module in (
        "sae_lens.loading.pretrained_saes_directory",
        "sae_lens.toolkit.pretrained_saes_directory",
    ):
        try:
            return importlib.import_module(module).get_pretrained_saes_directory()
        except ImportError:
            continue
    return None


def sae_lens_releases() -> dict[str, SAELensRelease]:
    """sae-lens's directory of pretrained SAEs, by release name.

    With ``sae_lens`` importable this is its ``pretrained_saes.yaml``; otherwise the releases
    shipped in ``releases.json`` (copied from sae-lens 6.18.0): gpt2-small-res-jb,
    pythia-70m-deduped-{res,mlp,att}-sm and gemma-scope-2b-pt-{res,mlp,att}-canonical.
    """
    directory = _sae_lens_directory()
    if directory is not None:
        return {
            name: SAELensRelease(
                name=name,
                repo_id=r.repo_id,
                model=r.model,
                conversion=r.conversion_func or "sae_lens",
                saes=dict(r.saes_map),
                cfg_overrides=dict(getattr(r, "config_overrides", None) or {}),
            )
            for name, r in directory.items()
        }
    releases = json.loads(_RELEASES.read_text())["releases"]
    return {name: SAELensRelease(name=name, **entry) for name, entry in releases.items()}


# ------------------------------------------------------------------------------------------------
# Hook names -> submodule names


def submodule_for_hook(model: Any, hook: str) -> str:
    """The submodule of ``model`` whose activation is TransformerLens hook ``hook``.

    ``hook_embed`` is ``embed``; ``blocks.L.hook_resid_pre`` is block L's input, ``resid_{L-1}``
    (``embed`` for L = 0 where the embedding is block 0's input); ``blocks.L.hook_resid_post`` is
    ``resid_L``, ``blocks.L.hook_mlp_out`` is ``mlp_L``. ``attn_L`` is ``blocks.L.hook_attn_out``
    where it reads the attention's output and ``blocks.L.attn.hook_z`` (the heads' outputs,
    concatenated) where it reads the output projection's input (Gemma-2).

    Args:
        model: the toolkit's model wrapper (`circuits.models.Model`).
        hook: e.g. ``"blocks.8.hook_resid_pre"``.

    Raises:
        ValueError: a hook that is no submodule of this model (the message says why).
    """
    names = [s.name for s in model.submodules]
    arch = model.architecture.name
    if hook == "hook_embed":
        name = "embed"
    elif (m := _TL_HOOK.fullmatch(hook)) is None:
        raise ValueError(f"hook {hook!r} is not a submodule's activation; supported: {_TL_HOOKS}")
    else:
        layer, kind = int(m["layer"]), m["hook"]
        if kind == "hook_resid_pre" and layer == 0:
            if arch not in _EMBED_IS_BLOCK_INPUT:
                raise ValueError(
                    f"hook {hook!r} (block 0's input) is no submodule of this {arch} model: its "
                    f"embed, where it has one, is the token embedding alone (TransformerLens' "
                    f"hook_embed), not what block 0 reads"
                )
            name = "embed"
        elif kind == "hook_resid_pre":
            name = f"resid_{layer - 1}"
        elif kind == "hook_resid_post":
            name = f"resid_{layer}"
        elif kind == "hook_mlp_out":
            name = f"mlp_{layer}"
        else:
            name = f"attn_{layer}"
            site = model.site(name) if name in names else None
            if site is not None and (kind == "attn.hook_z") != (site.io == "input"):
                fits = "attn.hook_z" if site.io == "input" else "hook_attn_out"
                raise ValueError(
                    f"hook {hook!r} is no submodule of this {arch} model: its {name} is the "
                    f"{site.io} of {site.path}, TransformerLens' blocks.{layer}.{fits}; use an SAE "
                    f"trained there (hook_z is the heads' outputs before the output projection)"
                )
    if name not in names:
        raise ValueError(
            f"hook {hook!r} would be {name}, which this {arch} model does not have "
            f"({model.n_layers} layers; submodules {names})"
        )
    return name


def _hook_in_cfg(cfg_path: Path) -> str:
    """The hook an sae-lens ``cfg.json`` says its SAE was trained on."""
    cfg = _read_json(cfg_path)
    metadata = cfg.get("metadata") or {}
    hook = cfg.get("hook_name") or cfg.get("hook_point") or metadata.get("hook_name")
    if not isinstance(hook, str):
        raise DictionaryFormatError(f"{cfg_path}: names no hook (hook_name or hook_point)")
    return hook


def _gemma_scope_hook(repo_id: str, folder: str) -> str:
    """GemmaScope's hook, from its repo (``google/gemma-scope-2b-pt-res``) and folder names."""
    site = re.fullmatch(r"google/gemma-scope-[\w.-]+-(res|mlp|att)", repo_id)
    layer = re.match(r"layer_(\d+)/", folder)
    if site and site[1] == "res" and folder.startswith("embedding/"):
        return "hook_embed"
    if site is None or layer is None:
        raise ValueError(f"cannot tell the hook of GemmaScope SAE {repo_id}/{folder}")
    hook = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}[site[1]]
    return f"blocks.{layer[1]}.{hook}"


# ------------------------------------------------------------------------------------------------
# The Hugging Face cache


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def _not_cached(repo_id: str, what: str, command: str) -> FileNotFoundError:
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached"
    return FileNotFoundError(
        f"{repo_id}: {what} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}. "
        f"Go online (unset HF_HUB_OFFLINE) to download it, or fetch it beforehand with "
        f"`{command}`"
    )


def _download(repo_id: str, filename: str) -> Path:
    """Local path of ``filename`` in ``repo_id``: the cached copy, else downloaded if online."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    command = f"hf download {repo_id} {filename}"
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except LocalEntryNotFoundError:
        if _offline():
            raise _not_cached(repo_id, filename, command) from None
    try:
        return Path(hf_hub_download(repo_id, filename))
    except LocalEntryNotFoundError:  # the Hub could not be reached
        raise _not_cached(repo_id, filename, command) from None
    except EntryNotFoundError:
        raise FileNotFoundError(f"{repo_id} on the Hugging Face Hub has no {filename}") from None


def _snapshot(repo_id: str, pattern: str) -> Path:
    """The repo's snapshot folder, holding its files matching ``pattern`` (asks the Hub for the
    list unless offline; without a connection, the cached snapshot)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=pattern, local_files_only=_offline()))
    except LocalEntryNotFoundError:
        raise _not_cached(repo_id, "the repo", f"hf download {repo_id}") from None


# ------------------------------------------------------------------------------------------------
# Specs -> folders


@dataclass(frozen=True)
class _Remote:
    """One dictionary folder in a Hub repo, and the submodule its hook names."""

    submodule: str
    repo_id: str
    folder: str
    weights: str  # file name of the weights inside ``folder``
    label: str  # how the user named it, for messages


def _sae_lens_remotes(model: Any, name: str) -> list[_Remote]:
    release_name, _, pattern = name.partition("/")
    releases = sae_lens_releases()
    if release_name not in releases:
        hint = "" if _sae_lens_directory() is not None else "; install sae-lens for its full list"
        raise ValueError(
            f"unknown sae-lens release {release_name!r}; known releases: "
            f"{', '.join(sorted(releases))}{hint}"
        )
    release = releases[release_name]
    ids = [pattern] if pattern in release.saes else fnmatch.filter(release.saes, pattern)
    if not ids:
        known = list(release.saes)
        shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
        raise ValueError(
            f"sae-lens release {release_name!r} ({release.repo_id}) has no SAE id {pattern!r}; "
            f"its ids: {shown}"
        )
    if release.conversion not in _WEIGHTS:
        raise ValueError(
            f"sae-lens release {release_name!r} is stored for sae-lens's {release.conversion!r} "
            f"loader, which is not read here (supported: {', '.join(_WEIGHTS)}); download its "
            f"files and convert them, or pick another release"
        )
    changed = sorted(set(release.cfg_overrides) - _MODEL_SIDE_OVERRIDES)
    if changed:
        raise ValueError(
            f"sae-lens release {release_name!r} overrides its cfg.json files ({changed}); only "
            f"SAEs whose cfg.json is complete are loaded"
        )
    remotes = []
    for sae_id in ids:
        folder = release.saes[sae_id]
        if release.conversion == "gemma_2":
            hook = _gemma_scope_hook(release.repo_id, folder)
        else:
            hook = _hook_in_cfg(_download(release.repo_id, f"{folder}/cfg.json"))
        label = f"sae-lens:{release_name}/{sae_id}"
        try:
            submodule = submodule_for_hook(model, hook)
        except ValueError as e:
            raise ValueError(f"{label}: {e}") from None
        weights = _WEIGHTS[release.conversion]
        remotes.append(_Remote(submodule, release.repo_id, folder, weights, label))
    return remotes


def _sparsify_remotes(model: Any, repo_id: str) -> list[_Remote]:
    # sparsify names a hookpoint by its module's path under the base model and encodes that
    # module's output; only submodules read at a module's output can match.
    base = getattr(model.torch_model, "base_model", model.torch_model)
    paths = {module: path for path, module in base.named_modules()}
    hookpoints = {
        paths[model.module(s.name)]: s.name
        for s in model.submodules
        if model.site(s.name).io == "output" and model.module(s.name) in paths
    }
    folders = sorted(p.parent.name for p in _snapshot(repo_id, "*/cfg.json").glob("*/cfg.json"))
    unmatched = [f for f in folders if f not in hookpoints]
    if not folders or len(unmatched) == len(folders):
        raise FileNotFoundError(
            f"sparsify:{repo_id}: no hookpoint folder matches a submodule; found {folders}, "
            f"expected some of {sorted(hookpoints)}"
        )
    if unmatched:
        warnings.warn(
            f"sparsify:{repo_id}: skipped hookpoints that are no submodule: {unmatched}",
            stacklevel=3,
        )
    return [
        _Remote(hookpoints[f], repo_id, f, "sae.safetensors", f"sparsify:{repo_id}/{f}")
        for f in folders
        if f in hookpoints
    ]


def fetch_dictionaries(
    model: Any, spec: str, *, submodules: Sequence[str] | None = None
) -> dict[str, Path]:
    """Local directories of the Hub dictionaries ``spec`` names, by submodule.

    Configs are read first to place each SAE on a submodule; weights are fetched only for the
    submodules kept. Files already in the Hugging Face cache are used without asking the Hub.

    Args:
        model: the toolkit's model wrapper (`circuits.models.Model`).
        spec: ``"sae-lens:<release>/<sae_id or glob>"`` or ``"sparsify:<repo_id>"``.
        submodules: names to keep; None keeps every submodule the spec covers.

    Returns:
        ``{submodule name: directory}`` in the model's submodule order, each directory readable by
        `circuits.dictionaries.load_dictionary`.

    Raises:
        ValueError: an unknown scheme, release or SAE id; a hook that is no submodule; two SAEs on
            one submodule.
        FileNotFoundError: a file missing from the cache while offline, or from the Hub.
    """
    scheme, _, name = spec.partition(":")
    if scheme == "sae-lens":
        remotes = _sae_lens_remotes(model, name)
    elif scheme == "sparsify":
        remotes = _sparsify_remotes(model, name)
    else:
        raise ValueError(f"unknown dictionary scheme in {spec!r}; expected one of {HUB_SCHEMES}")
    if submodules is not None:
        remotes = [r for r in remotes if r.submodule in submodules]
    by_name: dict[str, list[_Remote]] = {}
    for r in remotes:
        by_name.setdefault(r.submodule, []).append(r)
    clashes = {n: [r.label for r in rs] for n, rs in by_name.items() if len(rs) > 1}
    if clashes:
        raise ValueError(f"{spec}: several dictionaries for one submodule {clashes}; pick one each")
    out = {}
    for sub in model.submodules:
        if sub.name in by_name:
            r = by_name[sub.name][0]
            out[sub.name] = _download(r.repo_id, f"{r.folder}/{r.weights}").parent
    return out

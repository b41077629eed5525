"""One dictionary per submodule of a model: ``load_dictionaries`` and the names it looks for.

``load_dictionaries`` reads a directory in Sparse Feature Circuits' layout (directory names from
``sfc_directory_name``), a mapping, ``"neurons"``, ``"zoo"`` (``ZOO_DICTIONARIES``), or public SAEs
on the Hugging Face Hub named ``"sae-lens:<release>/<sae_id>"`` or ``"sparsify:<repo_id>"``
(resolved by ``circuits.dictionaries.hub``).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from circuits.dictionaries.base import Dictionary, Identity
from circuits.dictionaries.formats import PathLike, load_dictionary
from circuits.dictionaries.hub import HUB_SCHEMES, fetch_dictionaries

__all__ = ["load_dictionaries", "sfc_directory_name", "ZOO_DICTIONARIES"]

ZOO_DICTIONARIES = Path(__file__).parent.parent / "zoo" / "data" / "dictionaries"
"""Where ``circuits zoo build`` puts the shipped model's dictionaries (SFC layout)."""


# ------------------------------------------------------------------------------------------------
# One dictionary per submodule of a model


def sfc_directory_name(kind: str, layer: int | None) -> str:
    """Directory name of a submodule in Sparse Feature Circuits' layout, e.g. ``mlp_out_layer3``."""
    if kind == "embed":
        return "embed"
    return f"{kind}_out_layer{layer}"


def _warn_unknown_folders(root: Path, records: Mapping[str, Any]) -> None:
    """Warn about subfolders of ``root`` that name no submodule (a misspelt ``attn_out_layr3/``
    would otherwise leave that submodule without a dictionary, silently)."""
    known = {sfc_directory_name(r.kind, r.layer) for r in records.values()} | set(records)
    unknown = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in known
    )
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}/?)" if close else ""
        warnings.warn(
            f"{root / name} names no submodule of this model{hint}; it is not loaded",
            stacklevel=3,
        )


def load_dictionaries(
    model: Any,
    spec: PathLike | Mapping[str, PathLike | Dictionary],
    *,
    submodules: Sequence[str] | None = None,
) -> dict[str, Dictionary]:
    """Dictionaries for a model's submodules, each moved to its submodule's device and the
    model's dtype.

    Args:
        model: the toolkit's model wrapper; ``model.submodules`` (records with ``name``,
            ``kind``, ``layer``, ``width``), ``model.device_of(name)`` and ``model.dtype`` are
            used, and for Hub specs also ``model.site``, ``model.module``,
            ``model.architecture`` and ``model.torch_model``.
        spec: one of
            - ``"neurons"``: an ``Identity`` of the submodule's width for each submodule;
            - ``"zoo"``: the dictionaries shipped with the zoo (built by ``circuits zoo build``);
            - ``"sae-lens:<release>/<sae_id>"``: SAEs from sae-lens's directory of pretrained
              SAEs (``sae_id`` may be a glob, e.g. ``"sae-lens:pythia-70m-deduped-res-sm/*"``),
              each on the submodule its TransformerLens hook names;
            - ``"sparsify:<repo_id>"``: every hookpoint folder of an EleutherAI sparsify repo
              that is a submodule (``layers.3`` is ``resid_3``, ``layers.3.mlp`` is ``mlp_3``).
              Hub files come from the Hugging Face cache, downloaded first unless
              ``HF_HUB_OFFLINE`` is set (see ``circuits.dictionaries.hub``);
            - a directory in Sparse Feature Circuits' layout (``embed/``, ``attn_out_layer{i}/``,
              ``mlp_out_layer{i}/``, ``resid_out_layer{i}/``; our names ``attn_{i}/`` etc. also
              work), each holding a dictionary in any format ``load_dictionary`` reads;
            - a mapping ``{submodule name: path, Dictionary or "neurons"}``. Dictionary objects
              are moved in place.
        submodules: names to load. ``None`` loads every submodule the spec covers and skips the
            ones a directory lacks; names given here must all be found.

    Returns:
        ``{submodule name: Dictionary}`` in the model's submodule order.

    Raises:
        KeyError: a submodule name the model does not have (the message lists the valid ones).
        FileNotFoundError: a missing directory, a requested submodule without a dictionary, the
            zoo not built, or a Hub file missing from the cache while offline (the message names
            the repo, the file and the cache, and how to fetch it).
        ValueError: a dictionary's ``d_model`` differs from its submodule's width; for Hub specs,
            an unknown release or SAE id, a hook that is no submodule of the model, or two SAEs
            for one submodule.
    """
    records = {s.name: s for s in model.submodules}

    def check_names(names: Sequence[str], where: str) -> None:
        unknown = [n for n in names if n not in records]
        if unknown:
            raise KeyError(
                f"unknown submodule(s) {unknown} in {where}; valid names: {list(records)}"
            )

    if submodules is not None:
        if isinstance(submodules, str):
            submodules = [submodules]
        check_names(submodules, "submodules")
    wanted = list(records) if submodules is None else [n for n in records if n in set(submodules)]

    if isinstance(spec, str) and spec == "neurons":
        found: dict[str, PathLike | Dictionary] = {n: "neurons" for n in wanted}
    elif isinstance(spec, Mapping):
        check_names(list(spec), "the dictionary mapping")
        found = {n: spec[n] for n in wanted if n in spec}
    elif isinstance(spec, str) and spec.startswith(HUB_SCHEMES):
        found = dict(fetch_dictionaries(model, spec, submodules=wanted))
    else:
        if isinstance(spec, str) and spec == "zoo":
            root = ZOO_DICTIONARIES
            if not root.is_dir():
                raise FileNotFoundError(
                    f"the zoo is not built: {root} does not exist; "
                    "build it with `circuits zoo build --in-package`"
                )
        else:
            root = Path(spec)
            if not root.is_dir():
                raise FileNotFoundError(
                    f"dictionary directory {root} does not exist "
                    f'(or pass "neurons", "zoo" or a mapping)'
                )
        found = {}
        for name in wanted:
            rec = records[name]
            for candidate in (root / sfc_directory_name(rec.kind, rec.layer), root / name):
                if candidate.is_dir():
                    found[name] = candidate
                    break
        if not found:
            expected = [sfc_directory_name(records[n].kind, records[n].layer) for n in wanted]
            raise FileNotFoundError(
                f"{root}: none of the expected dictionary directories {expected}"
            )
        _warn_unknown_folders(root, records)

    missing = [n for n in wanted if n not in found]
    if submodules is not None and missing:
        where = "the mapping" if isinstance(spec, Mapping) else str(spec)
        raise FileNotFoundError(f"no dictionary for requested submodule(s) {missing} in {where}")

    out: dict[str, Dictionary] = {}
    for name, source in found.items():
        width = records[name].width
        if isinstance(source, Dictionary):
            d = source
        elif isinstance(source, str) and source == "neurons":
            d = Identity(width)
        else:
            d = load_dictionary(source)
        if d.d_model != width:
            origin = type(d).__name__ if isinstance(source, Dictionary) else str(source)
            raise ValueError(
                f"dictionary for {name} ({origin}) has d_model {d.d_model}, "
                f"but submodule {name} has width {width}"
            )
        out[name] = d.to(device=model.device_of(name), dtype=model.dtype)
    return out

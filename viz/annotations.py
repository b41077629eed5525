"""Feature annotations in SFC's JSON-lines format, and the labels diagrams draw from them.

One JSON object per line, the node name under ``"Name"`` and free text under ``"Annotation"``::

    {"Name": "resid_5/3036", "Annotation": "promotes singular verbs"}

Other keys on a line are allowed and ignored. Names are checked with
`circuits.graph.parse_node_name`. An annotation written without a position
(``resid_5/3036``) also labels that feature at every position (``resid_5/3036@4``); one
written with a position labels only that node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from circuits.files import write_text
from circuits.graph import parse_node_name

__all__ = [
    "AnnotationFormatError",
    "parse_annotations",
    "read_annotations",
    "write_annotations",
    "annotation_for",
]


class AnnotationFormatError(ValueError):
    """An annotation file has a malformed line; the message names the file and line."""


def parse_annotations(lines: Iterable[str], source: str = "<annotations>") -> dict[str, str]:
    """Read annotation lines into ``{node name: annotation}``.

    Args:
        lines: JSON lines (blank lines are skipped).
        source: What to call the input in error messages (usually the file's path).

    Raises:
        AnnotationFormatError: On a line that is not a JSON object, lacks a string ``Name`` or
            ``Annotation``, names a malformed node, or repeats a name; the message says
            ``source:line``.
    """
    annotations: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise AnnotationFormatError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(entry, dict):
            raise AnnotationFormatError(f"{where}: expected a JSON object, got {entry!r}")
        name, text = entry.get("Name"), entry.get("Annotation")
        if not isinstance(name, str):
            raise AnnotationFormatError(f"{where}: needs a string 'Name', got {name!r}")
        if not isinstance(text, str):
            raise AnnotationFormatError(f"{where}: needs a string 'Annotation', got {text!r}")
        try:
            parse_node_name(name)
        except ValueError as error:
            raise AnnotationFormatError(f"{where}: {error}") from None
        if name in annotations:
            raise AnnotationFormatError(f"{where}: {name!r} is annotated twice")
        annotations[name] = text
    return annotations


def read_annotations(path: str | os.PathLike) -> dict[str, str]:
    """Read an SFC annotation file (UTF-8 JSON lines) into ``{node name: annotation}``.

    Raises:
        AnnotationFormatError: Naming the file and line of a malformed entry.
        FileNotFoundError: If there is no such file.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        return parse_annotations(handle, str(path))


def write_annotations(annotations: Mapping[str, str], path: str | os.PathLike) -> Path:
    """Write ``{node name: annotation}`` as SFC JSON lines (UTF-8); return the path.

    Raises:
        ValueError: On a malformed node name or a non-string annotation (nothing is written).
    """
    lines = []
    for name, text in annotations.items():
        parse_node_name(name)
        if not isinstance(text, str):
            raise ValueError(f"annotation of {name!r} must be a string, got {text!r}")
        lines.append(json.dumps({"Name": name, "Annotation": text}, ensure_ascii=False))
    path = Path(path)
    write_text(path, "".join(line + "\n" for line in lines))
    return path


def annotation_for(name: str, annotations: Mapping[str, str] | None) -> str | None:
    """The annotation of node ``name``: its own, else its position-free name's, else None."""
    if not annotations:
        return None
    if name in annotations:
        return annotations[name]
    base = name.split("@", 1)[0]
    return annotations.get(base)

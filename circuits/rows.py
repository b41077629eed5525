"""The rows file of `circuits.compare`: one JSON line per scored circuit, after a header line
with the settings, appended (and synced) as each circuit is scored, so an interrupted comparison
resumes from the rows it finished and a line cut short by a kill is dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from circuits.evaluate import (
    CurvePoint,
)

__all__ = ["Key", "Row", "ROWS_SCHEMA", "ROWS_VERSION"]

ROWS_SCHEMA = "circuits.compare.rows"
"""``schema`` of a rows file's header line."""
ROWS_VERSION = 1
"""``version`` of a rows file's header line."""

Key = tuple[str, str, int]
"""A row's ``(node set, method, size k)``."""


@dataclass(frozen=True)
class Row:
    """One scored circuit of a comparison, as a rows file holds it.

    Attributes:
        nodes: Label of the node set.
        method: One of `METHODS`.
        k: The size asked for (a mask may keep a different number, ``point.size``).
        point: Its faithfulness and completeness.
        seconds: Wall time of finding it: the attribution pass its top-``k`` nodes come from
            (``"atp"``, ``"ig"``; shared by the sizes of that pass), or its mask's training.
    """

    nodes: str
    method: str
    k: int
    point: CurvePoint
    seconds: float

    @property
    def key(self) -> Key:
        return (self.nodes, self.method, self.k)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "method": self.method,
            "k": self.k,
            "seconds": self.seconds,
            "point": asdict(self.point),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Row:
        return cls(
            record["nodes"],
            record["method"],
            int(record["k"]),
            CurvePoint(**record["point"]),
            float(record["seconds"]),
        )


def _read_rows(path: Path, settings: Mapping[str, Any]) -> tuple[dict[Key, Row], int]:
    """The rows a rows file holds, and the byte offset where its last complete line ends.

    A last line cut short by a kill (no newline, or not a row) is left out; so is a header cut
    short.

    Raises:
        ValueError: when the header's settings differ from ``settings``, or a line is no row.
    """
    if not path.exists():
        return {}, 0
    data = path.read_bytes()
    lines = data.split(b"\n")[:-1]  # the part after the last newline is incomplete
    if not lines:
        return {}, 0
    advice = f"delete {path} to start afresh, or write the rows to another file (another --out)"
    try:
        header = json.loads(lines[0])
        recorded = header["settings"] if header.get("schema") == ROWS_SCHEMA else None
    except (ValueError, TypeError, KeyError, AttributeError):
        recorded = None
    if not isinstance(recorded, dict):
        raise ValueError(f"{path} is not a rows file of circuits.compare; {advice}")
    if header.get("version") != ROWS_VERSION:
        raise ValueError(
            f"{path} is a rows file of version {header.get('version')}, this is version "
            f"{ROWS_VERSION}; {advice}"
        )
    if recorded != settings:
        differ = sorted(
            name for name in {*recorded, *settings} if recorded.get(name) != settings.get(name)
        )
        raise ValueError(
            f"{path} holds rows computed with other settings ({', '.join(differ)} differ); {advice}"
        )
    finished: dict[Key, Row] = {}
    end = len(lines[0]) + 1
    for number, line in enumerate(lines[1:], start=2):
        try:
            row = Row.from_dict(json.loads(line))
        except (ValueError, TypeError, KeyError):
            if number == len(lines):
                break  # the last line, cut short
            raise ValueError(f"line {number} of {path} is not a row; {advice}") from None
        finished[row.key] = row
        end += len(line) + 1
    return finished, end


def _open_rows(path: Path, settings: Mapping[str, Any], end: int) -> BinaryIO:
    """``path`` opened for appending rows: truncated after its last complete line, or started
    afresh with a header line when it has none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if end == 0:
        handle = path.open("wb")
        header = {"schema": ROWS_SCHEMA, "version": ROWS_VERSION, "settings": settings}
        _write_line(handle, header)
        return handle
    os.truncate(path, end)  # drop a line cut short
    return path.open("ab")


def _write_line(handle: BinaryIO, record: Mapping[str, Any]) -> None:
    """Append one JSON line and make sure it reached the disk."""
    handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode())
    handle.flush()
    os.fsync(handle.fileno())

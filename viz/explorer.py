"""The explorer: one self-contained HTML page to browse a circuit in any browser, offline.

The page holds its data inline as JSON and draws on a canvas with plain JavaScript
(``viz/explorer.js``): no network, no CDN, no libraries. It lays the circuit out by row (one per
submodule, ``embed`` at the bottom, ``y`` on top) and, when the circuit keeps positions, by
column (one per position, the prompt's tokens under them), and lays it out again whenever a
filter changes. What a user can do:

- pan (drag, arrow keys) and zoom (wheel, ``+``/``-``; ``0`` or ``f`` fits); the page opens
  fitted, with as many of the strongest nodes as stay readable there (a note says how many);
- hover a node for its panel (kind, effect, label, edges, dashboard) and its edges, drawn over
  the faded rest; click to pin it and light every path through it (shift-click pins more, a
  click on the background or Escape clears); "only paths through pinned" lays out just those;
- filter nodes (the strongest N), edges by |weight| and by share (per node, the strongest
  incoming edges that carry a chosen share of its incoming |weight|), and search names and
  labels (Enter pins and centres the first match);
- group nodes into **supernodes**, from the pinned ones or one per shared label: a supernode's
  effect is its members' sum and its edges the sums of theirs; save the grouping as JSON and
  load it again (here, or with ``supernodes=`` / ``circuits explore --supernodes``).

``page.html#node=resid_2/17`` opens with that node pinned and centred. For scripts and browser
tests the page exposes ``window.explorer``: ``state()`` (view scale and offset, label height in
pixels, shown node ids, pinned and hovered nodes, supernodes, timings), ``screen(id)`` (a node's
centre in page pixels, to move a pointer to), ``layout()`` and ``grouping()``. A supernode's id
is ``supernode:<name>``.

Dashboards (``dashboards={name: dashboard}``, e.g. from `viz.dashboard`) are plain JSON objects;
the panel shows the keys it knows and ignores the rest:

- ``label``: a short automatic description;
- ``contexts``: ``[{"tokens": [str], "activations": [float]}]``, top-activating contexts, tokens
  shaded by activation;
- ``histogram``: ``{"edges": [float] (bins + 1), "counts": [int] (bins)}`` of activations;
- ``promoted`` / ``suppressed``: ``[{"token": str, "value": float}]``, output tokens the node's
  direction pushes up / down.

Every string reaches the page as JSON inside ``<script type="application/json">`` with ``<``,
``>``, ``&`` and the JavaScript line separators escaped, so no annotation (not even one holding
``</script>``) can end the script early, and the script writes text with ``textContent`` or onto
the canvas only.
"""

from __future__ import annotations

import html
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from circuits.files import write_text
from circuits.graph import OUTPUT, Circuit
from viz.annotations import annotation_for
from viz.diagram import cap_nodes, node_label

__all__ = ["explorer_data", "explorer_html", "read_supernodes", "script_json", "write_explorer"]

_HERE = Path(__file__).parent
SUPERNODES_FORMAT = "circuits.supernodes"


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe inside an HTML ``<script>`` element."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text


def read_supernodes(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Supernodes saved by the explorer's "save supernodes": ``[{"name", "members"}]``.

    Raises:
        ValueError: naming the file, when it is not such a file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a supernodes file ({type(error).__name__})") from None
    groups = data.get("supernodes") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != SUPERNODES_FORMAT
        or not isinstance(groups, list)
        or not all(_is_group(g) for g in groups)
    ):
        raise ValueError(
            f'{path}: expected {{"format": "{SUPERNODES_FORMAT}", "supernodes": [{{"name": str, '
            '"members": [node names]}]}, as the explorer\'s "save supernodes" writes'
        )
    return [{"name": g["name"], "members": list(g["members"])} for g in groups]


def _is_group(group: Any) -> bool:
    return (
        isinstance(group, Mapping)
        and isinstance(group.get("name"), str)
        and bool(group["name"].strip())
        and isinstance(group.get("members"), list)
        and all(isinstance(m, str) for m in group["members"])
    )


def _check_supernodes(groups: Sequence[Mapping[str, Any]], circuit: Circuit) -> list[dict]:
    """The groups as plain dicts; every member a node of ``circuit``, in one group only."""
    seen: dict[str, str] = {}
    out = []
    for group in groups:
        if not _is_group(group):
            raise ValueError(f"a supernode is {{'name': str, 'members': [node names]}}: {group!r}")
        unknown = [m for m in group["members"] if m not in circuit.graph or m == OUTPUT]
        if unknown:
            raise ValueError(f"supernode {group['name']!r}: not nodes of this circuit: {unknown}")
        for member in group["members"]:
            if member in seen:
                raise ValueError(
                    f"{member} is in supernodes {seen[member]!r} and {group['name']!r}"
                )
            seen[member] = group["name"]
        out.append({"name": group["name"], "members": list(group["members"])})
    return out


def explorer_data(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
    tokens: Sequence[str] | None = None,
    supernodes: Sequence[Mapping[str, Any]] | None = None,
    max_nodes: int | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """The page's JSON payload.

    ``nodes``: ``[{name, label, annotation, kind, submodule, row, position, effect,
    dashboard}]`` where ``row`` indexes ``rows`` (``[{name}]``, ``embed`` first, ``y`` last);
    ``edges``: ``[[source index, target index, weight]]`` into ``nodes``; ``columns``:
    ``[{position, token}]`` (empty without positions); ``supernodes``: ``[{name, members}]``.
    Options as for `explorer_html`.
    """
    drawn, note = cap_nodes(circuit, max_nodes)
    used = [p for _, p in drawn.graph.nodes(data="position") if p is not None]
    has_positions = any(p is not None for _, p in circuit.graph.nodes(data="position"))
    if tokens is not None and not has_positions:
        raise ValueError("this circuit keeps no positions; tokens need a circuit with positions")
    columns = max(used, default=-1) + 1
    if tokens is not None:
        if len(tokens) < columns:
            raise ValueError(
                f"{len(tokens)} tokens given, but the circuit has nodes at position {columns - 1}"
            )
        columns = len(tokens)
    groups = _check_supernodes(supernodes or [], circuit)
    kept = set(drawn.graph)
    groups = [
        {"name": g["name"], "members": [m for m in g["members"] if m in kept]} for g in groups
    ]
    rows = list(drawn.nodes_by_submodule())
    if OUTPUT in drawn.graph:
        rows.append(OUTPUT)
    row_of = {row: i for i, row in enumerate(rows)}
    dashboards = dashboards or {}
    if labels is None:  # dashboards' automatic labels, for nodes without an annotation
        labels = {n: d["label"] for n, d in dashboards.items() if isinstance(d.get("label"), str)}
    nodes, index = [], {}
    for name, attrs in drawn.graph.nodes(data=True):
        dashboard = dashboards.get(name) or dashboards.get(name.split("@", 1)[0])
        index[name] = len(nodes)
        nodes.append(
            {
                "name": name,
                "label": "y" if name == OUTPUT else node_label(name, annotations, labels),
                "annotation": annotation_for(name, annotations),
                "kind": attrs["kind"],
                "submodule": attrs["submodule"],
                "row": row_of[OUTPUT if name == OUTPUT else attrs["submodule"]],
                "position": attrs["position"],
                "effect": attrs["effect"],
                "dashboard": dict(dashboard) if dashboard else None,
            }
        )
    edges = [[index[u], index[v], w] for u, v, w in drawn.graph.edges(data="weight")]
    return {
        "format": "circuits.explorer",
        "version": 2,
        "title": title or "circuit",
        "note": note,
        "rows": [{"name": row} for row in rows],
        "columns": [
            {"position": p, "token": None if tokens is None else tokens[p]}
            for p in range(columns if has_positions else 0)
        ],
        "nodes": nodes,
        "edges": edges,
        "supernodes": [g for g in groups if g["members"]],
        "provenance": circuit.provenance,
    }


def explorer_html(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
    tokens: Sequence[str] | None = None,
    supernodes: Sequence[Mapping[str, Any]] | None = None,
    max_nodes: int | None = None,
    title: str | None = None,
) -> str:
    """The explorer page as one HTML string (see the module docstring).

    Args:
        circuit: The circuit to show.
        annotations: ``{node name: annotation}``; annotated nodes are labelled by it.
        labels: Fallback labels for nodes without an annotation (default: the dashboards'
            ``label``).
        dashboards: ``{node name: dashboard}`` shown in the node panel (keys without a position
            apply at every position).
        tokens: The example prompt's tokens, drawn under the position columns.
        supernodes: ``[{"name": str, "members": [node names]}]`` grouped when the page opens
            (e.g. `read_supernodes` of a file the page saved).
        max_nodes: Put only the nodes of largest |effect| in the page; it says how many were
            left out.
        title: The page's title.

    Raises:
        ValueError: On tokens for a circuit without positions or too few tokens, supernodes
            naming nodes the circuit lacks (or one node twice), or dashboards that are not
            plain JSON (e.g. NaN).
    """
    data = explorer_data(
        circuit,
        annotations=annotations,
        labels=labels,
        dashboards=dashboards,
        tokens=tokens,
        supernodes=supernodes,
        max_nodes=max_nodes,
        title=title,
    )
    try:
        payload = script_json(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"explorer data must be plain, finite JSON: {error}") from None
    page = (_HERE / "explorer.html").read_text(encoding="utf-8")
    script = (_HERE / "explorer.js").read_text(encoding="utf-8")
    parts = {"__TITLE__": html.escape(data["title"]), "__DATA__": payload, "__SCRIPT__": script}
    return re.sub("__TITLE__|__DATA__|__SCRIPT__", lambda m: parts[m[0]], page)


def write_explorer(circuit: Circuit, path: str | os.PathLike, **options: Any) -> Path:
    """Write `explorer_html` (options as there) to ``path`` as UTF-8; return the path."""
    path = Path(path)
    write_text(path, explorer_html(circuit, **options))
    return path

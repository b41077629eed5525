"""Circuit diagrams drawn by graphviz: one row per submodule, ``embed`` at the bottom, ``y`` on top.

Encoding (the same in every output format):

- Rows: one per submodule that has nodes, in forward order (``embed``, ``attn_0``, ``mlp_0``,
  ``resid_0``, ``attn_1``, ...), then ``y``; each row is labelled on its left.
- Node fill: blue for a positive effect, red for a negative one, from white (effect 0) to full
  colour (the largest |effect| shown). Error nodes (``resid_3/ε``) are triangles, ``y`` is a
  double octagon, everything else a rounded box.
- Node label: the node's annotation (`viz.annotations`) when it has one, else its name over a
  label from ``labels`` (e.g. automatic dashboard labels), else its name. The name, kind and
  effect are in the tooltip of every format that keeps tooltips (SVG).
- Edges: blue for a positive weight, red for a negative one; pen width grows with |weight|.
- Positions: when the circuit keeps positions (``resid_2/17@5``) the default layout adds one
  column per position, with the prompt's tokens (when given) along the bottom (spaces shown
  as ``␣``).
- Large circuits: ``row_cap`` (15 by default) draws the nodes of largest |effect| of each row
  and folds the rest of the row into one dashed ``+N more`` node whose effect is their summed
  effect and whose edges are the sums of theirs, so every row and every path stays in view and
  a circuit of any size stays within graphviz's limits; ``max_nodes`` instead keeps the nodes of
  largest |effect| overall and the title says how many were left out.
- Edges: ``edge_share`` keeps, for each node, its strongest incoming edges that together carry
  that share of its incoming |weight| (a relative filter: spread-out signal stays visible where
  a fixed threshold would cut it).
- A legend under the title explains the encoding.

`diagram` builds the ``graphviz.Digraph``; `render` writes SVG, PNG, PDF or DOT source through
graphviz's ``dot`` program; `to_svg` returns the SVG text (for notebooks). When ``dot`` is missing,
`render` writes the ``.dot`` source beside the requested file and raises `GraphvizMissing`, whose
message says how to install graphviz.
"""

from __future__ import annotations

import html
import json
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import graphviz
import networkx as nx

from circuits.files import replacing, write_text
from circuits.graph import OUTPUT, Circuit
from viz.annotations import annotation_for

__all__ = [
    "DiagramFormat",
    "GraphvizMissing",
    "POSITIVE",
    "NEGATIVE",
    "diagram",
    "render",
    "to_svg",
    "repr_svg",
    "format_from_suffix",
    "node_label",
    "signed_colour",
    "cap_nodes",
    "fold_rows",
    "strongest_incoming",
    "parse_tokens",
]

DiagramFormat = Literal["svg", "png", "pdf", "dot"]
_SUFFIXES: dict[str, DiagramFormat] = {
    ".svg": "svg",
    ".png": "png",
    ".pdf": "pdf",
    ".dot": "dot",
    ".gv": "dot",
}

POSITIVE = "#2166ac"
"""Colour of a positive effect or weight (blue)."""

NEGATIVE = "#b2182b"
"""Colour of a negative effect or weight (red)."""

_INSTALL_HINT = (
    "install graphviz (Debian/Ubuntu: `apt-get install graphviz`; macOS: `brew install "
    "graphviz`; conda: `conda install graphviz`)"
)


class GraphvizMissing(FileNotFoundError):
    """graphviz's ``dot`` program is not on PATH; the message says how to install it.

    Attributes:
        dot_path: Where the diagram's DOT source was written instead, or None.
    """

    def __init__(self, message: str, dot_path: Path | None = None):
        super().__init__(message)
        self.dot_path = dot_path


def format_from_suffix(path: str | os.PathLike) -> DiagramFormat:
    """The diagram format a file name asks for (``.svg``, ``.png``, ``.pdf``, ``.dot``/``.gv``).

    Raises:
        ValueError: On any other suffix.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(
            f"cannot tell the diagram format from {str(path)!r}: use a name ending in "
            f"{', '.join(_SUFFIXES)}"
        )
    return _SUFFIXES[suffix]


def parse_tokens(text: str) -> list[str]:
    """Tokens given on a command line: a JSON list of strings, or words separated by spaces.

    Raises:
        ValueError: On a JSON value that is not a list of strings.
    """
    text = text.strip()
    if not text.startswith("["):
        return text.split()
    try:
        tokens = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"tokens look like a JSON list but do not parse: {error}") from None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError("tokens must be words separated by spaces or a JSON list of strings")
    return tokens


def signed_colour(value: float, scale: float) -> tuple[str, float]:
    """Fill colour for ``value`` on a white-to-blue (positive) or white-to-red (negative) scale.

    Returns:
        ``("#rrggbb", intensity)`` with intensity = min(|value| / scale, 1) in [0, 1].
    """
    intensity = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    base = POSITIVE if value >= 0 else NEGATIVE
    rgb = [int(base[i : i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(255 + (c - 255) * intensity) for c in rgb]
    return "#" + "".join(f"{c:02x}" for c in mixed), intensity


def node_label(
    name: str,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """What a node is called in diagrams: its annotation, else ``labels[name]``, else its name.

    Like annotations, ``labels`` keyed by a position-free name apply at every position.
    """
    text = annotation_for(name, annotations)
    if text is None:
        text = annotation_for(name, labels)
    return name if text is None or not text.strip() else text.strip()


def cap_nodes(circuit: Circuit, max_nodes: int | None) -> tuple[Circuit, str | None]:
    """Keep the ``max_nodes`` nodes of largest |effect| (and ``y``).

    Returns:
        The circuit to draw, and a note saying how many nodes were left out (None when none).
    """
    if max_nodes is None or circuit.num_nodes <= max_nodes:
        return circuit, None
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 1:
        raise ValueError(f"max_nodes must be a positive integer, got {max_nodes!r}")
    ranked = circuit.top_nodes(None)
    kept, dropped = ranked[:max_nodes], ranked[max_nodes:]
    largest_dropped = abs(dropped[0].effect)
    note = (
        f"{len(dropped)} of {circuit.num_nodes} nodes not shown "
        f"(|effect| <= {largest_dropped:.3g}); showing the top {max_nodes} by |effect|"
    )
    return circuit.subgraph(row.name for row in kept), note


ROW_CAP = 15
"""Nodes drawn per submodule row by default; the rest of a row is folded into ``+N more``."""


def fold_rows(circuit: Circuit, row_cap: int | None) -> tuple[nx.DiGraph, dict[str, list[str]]]:
    """The graph to draw: per submodule row, the ``row_cap`` nodes of largest |effect| (ties: the
    earlier name), the others folded into one node ``{row}/+{N}`` (kind ``"more"``, effect = the
    folded nodes' summed effect, ``folded`` = how many), each edge moved onto the nodes its ends
    fold into, parallel edges summed. ``row_cap`` None folds nothing.

    Returns:
        The graph (node attributes ``submodule``, ``kind``, ``position``, ``effect``; edge
        attribute ``weight``) and ``{row: names}`` in forward order, the ``+N`` node last.
    """
    if row_cap is not None and (
        isinstance(row_cap, bool) or not isinstance(row_cap, int) or row_cap < 1
    ):
        raise ValueError(f"row_cap must be a positive integer or None, got {row_cap!r}")
    groups = circuit.nodes_by_submodule()
    into: dict[str, str] = {}
    view = nx.DiGraph()
    for row, names in groups.items():
        keep = names
        if row_cap is not None and len(names) > row_cap:
            ranked = sorted(names, key=lambda n: -abs(circuit.graph.nodes[n]["effect"]))
            top = set(ranked[:row_cap])
            keep = [n for n in names if n in top]
            rest = [n for n in names if n not in top]
            more = f"{row}/+{len(rest)}"
            total = sum(circuit.graph.nodes[n]["effect"] for n in rest)
            view.add_node(
                more, submodule=row, kind="more", position=None, effect=total, folded=len(rest)
            )
            into.update(dict.fromkeys(rest, more))
            groups[row] = [*keep, more]
        for name in keep:
            view.add_node(name, **circuit.graph.nodes[name])
            into[name] = name
    if OUTPUT in circuit.graph:
        view.add_node(OUTPUT, **circuit.graph.nodes[OUTPUT])
        into[OUTPUT] = OUTPUT
    for source, target, weight in circuit.graph.edges(data="weight"):
        u, v = into[source], into[target]
        if u != v:
            previous = view.edges[u, v]["weight"] if view.has_edge(u, v) else 0.0
            view.add_edge(u, v, weight=previous + weight)
    return view, groups


def strongest_incoming(graph: nx.DiGraph, share: float) -> list[tuple[str, str, float]]:
    """For each node, its incoming edges of largest |weight| that together carry at least
    ``share`` (0 < share <= 1) of its total incoming |weight|: ``[(source, target, weight)]``."""
    if not 0 < share <= 1:
        raise ValueError(f"edge_share must be in (0, 1], got {share!r}")
    kept = []
    for target in graph:
        incoming = sorted(graph.in_edges(target, data="weight"), key=lambda e: -abs(e[2]))
        total, carried = sum(abs(w) for _, _, w in incoming), 0.0
        for edge in incoming:
            if carried >= share * total:
                break
            kept.append(edge)
            carried += abs(edge[2])
    return kept


def _legend(lines: Sequence[str]) -> str:
    """The graph's label as an HTML-like table: the caption lines, then the legend."""

    def swatch(colour: str, text: str) -> str:
        return f'<TD BGCOLOR="{colour}" WIDTH="12"> </TD><TD ALIGN="LEFT">{text}</TD>'

    head = "".join(
        f'<TR><TD COLSPAN="10">{html.escape(_wrap(line, 100, 400)).replace(chr(92) + "n", "<BR/>")}'
        "</TD></TR>"
        for line in lines
    )
    key = (
        swatch(POSITIVE, "positive effect / weight")
        + swatch(NEGATIVE, "negative")
        + '<TD ALIGN="LEFT">  ▲ error node   ▢ feature / neuron   ┄ +N more: the rest of a '
        "row, effects summed   edge width ∝ |weight|</TD>"
    )
    return f'<<TABLE BORDER="0" CELLSPACING="2">{head}<TR>{key}</TR></TABLE>>'


def _wrap(text: str, width: int = 24, max_chars: int = 96) -> str:
    """Escape ``text`` for a DOT label and break it into centred lines."""
    lines = textwrap.wrap(textwrap.shorten(text, max_chars, placeholder="…"), width) or [text]
    return r"\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in lines)


def _show_token(token: str) -> str:
    """A token as drawn under its column: escapes visible, spaces as ``␣``."""
    return repr(token)[1:-1].replace(" ", "␣")


def _node_attrs(
    data: Mapping[str, Any],
    name: str,
    scale: float,
    annotations: Mapping[str, str] | None,
    labels: Mapping[str, str] | None,
) -> dict[str, str]:
    effect = data["effect"]
    tooltip = f"{name} ({data['kind']}), effect {effect:+.4g}"
    if name == OUTPUT:
        return {
            "label": "y",
            "shape": "doubleoctagon",
            "fillcolor": "#eeeeee",
            "tooltip": f"y (output), total effect {effect:+.4g}",
        }
    fill, intensity = signed_colour(effect, scale)
    if data["kind"] == "more":
        return {
            "label": f"+{data['folded']} more\\nΣ {effect:+.3g}",
            "shape": "box",
            "style": "rounded,dashed,filled",
            "fillcolor": fill,
            "fontcolor": "white" if intensity > 0.55 else "black",
            "tooltip": f"{data['folded']} more nodes of {data['submodule']}, summed effect "
            f"{effect:+.4g}",
        }
    text = _wrap(node_label(name, annotations, labels))
    if annotation_for(name, annotations) is None and annotation_for(name, labels):
        text = _wrap(name) + r"\n" + text  # an automatic label: keep the name in view
    attrs = {
        "label": graphviz.nohtml(text),
        "fillcolor": fill,
        "fontcolor": "white" if intensity > 0.55 else "black",
        "tooltip": tooltip,
    }
    if data["kind"] == "error":
        attrs.update(shape="triangle", margin="0.02")
    else:
        attrs.update(shape="box", style="rounded,filled")
    return attrs


def _edge_attrs(source: str, target: str, weight: float, scale: float) -> dict[str, str]:
    _, intensity = signed_colour(weight, scale)
    colour = POSITIVE if weight >= 0 else NEGATIVE
    alpha = round(64 + 191 * intensity)
    return {
        "color": f"{colour}{alpha:02x}",
        "penwidth": f"{0.5 + 4.5 * intensity:.2f}",
        "arrowsize": "0.5",
        "tooltip": f"{source} -> {target}: {weight:+.4g}",
    }


def _row_id(row: str) -> str:
    return f"__row__{row}"


def diagram(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    positions: bool | None = None,
    tokens: Sequence[str] | None = None,
    max_nodes: int | None = None,
    row_cap: int | None = ROW_CAP,
    edge_share: float | None = None,
    title: str | None = None,
) -> graphviz.Digraph:
    """The circuit as a ``graphviz.Digraph`` (see the module docstring for the encoding).

    Args:
        circuit: The circuit to draw.
        annotations: ``{node name: annotation}`` (e.g. from `viz.annotations.read_annotations`);
            annotated nodes are labelled by their annotation.
        labels: Fallback labels for nodes without an annotation (e.g. automatic dashboard labels).
        positions: True: one column per token position (the circuit must keep positions); False:
            rows only; None: columns exactly when the circuit keeps positions.
        tokens: The example prompt's tokens, drawn under the position columns; needs
            ``len(tokens)`` > every position in the circuit.
        max_nodes: Draw only this many nodes, those of largest |effect|; the title says how many
            were left out.
        row_cap: Draw at most this many nodes per row, folding the rest into ``+N more``
            (`fold_rows`); None draws every node.
        edge_share: Keep only each node's strongest incoming edges carrying this share of its
            incoming |weight| (`strongest_incoming`); None keeps every edge.
        title: A line drawn above the diagram.

    Raises:
        ValueError: If positions or tokens are asked of a circuit without positions, if tokens
            are too few, ``max_nodes`` or ``row_cap`` is not a positive integer, or
            ``edge_share`` is outside (0, 1].
    """
    has_positions = any(
        position is not None for _, position in circuit.graph.nodes(data="position")
    )
    if positions is None:
        positions = has_positions
    if (positions or tokens is not None) and not has_positions:
        raise ValueError(
            "this circuit keeps no positions (it was summed over positions); draw it without "
            "positions or tokens, or discover it with aggregation 'none'"
        )
    capped, note = cap_nodes(circuit, max_nodes)
    view, groups = fold_rows(capped, row_cap)
    edges = (
        list(view.edges(data="weight"))
        if edge_share is None
        else strongest_incoming(view, edge_share)
    )
    if edge_share is not None and len(edges) < view.number_of_edges():
        note = "; ".join(
            line
            for line in (
                note,
                f"{len(edges)} of {view.number_of_edges()} edges shown (each node's strongest "
                f"incoming edges, {edge_share:.0%} of its incoming |weight|)",
            )
            if line
        )
    caption = [line for line in (title, note) if line]

    graph = graphviz.Digraph(
        "circuit",
        graph_attr={
            "rankdir": "BT",
            "newrank": "true",
            "nodesep": "0.12",
            "ranksep": "0.45",
            "fontname": "Helvetica",
            "fontsize": "11",
            "labelloc": "t",
            "label": _legend(caption),
        },
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled", "height": "0.3"},
        edge_attr={"fontname": "Helvetica"},
    )
    rows: list[str] = list(groups)
    if OUTPUT in view:
        rows.append(OUTPUT)
        groups[OUTPUT] = [OUTPUT]
    effects = [
        abs(effect)
        for name, effect in view.nodes(data="effect")
        if name != OUTPUT and view.nodes[name]["kind"] != "more"
    ]
    node_scale = max(effects, default=0.0) or 1.0
    weights = [abs(weight) for _, _, weight in edges]
    edge_scale = max(weights, default=0.0) or 1.0
    invisible = {"style": "invis", "arrowhead": "none"}

    columns = 0
    if positions:
        used = [p for _, p in view.nodes(data="position") if p is not None]
        columns = max(used, default=-1) + 1
        if tokens is not None:
            if len(tokens) < columns:
                raise ValueError(
                    f"{len(tokens)} tokens given, but the circuit has nodes at position "
                    f"{columns - 1}; pass the tokens of the prompt the circuit was found on"
                )
            columns = len(tokens)
        rows.insert(0, "tokens")
        groups["tokens"] = []

    for row in rows:
        with graph.subgraph(name=f"row_{row}") as sub:
            sub.attr(rank="same")
            sub.node(
                _row_id(row),
                label=row,
                shape="plaintext",
                style="",
                fontcolor="#666666",
                tooltip=row,
            )
            chain = [_row_id(row)]
            if row == "tokens":
                for p in range(columns):
                    token = "" if tokens is None else _show_token(tokens[p])
                    sub.node(
                        f"__cell__tokens__{p}",
                        label=graphviz.nohtml(_wrap(f"{p}: {token}" if token else str(p), 16)),
                        shape="plaintext",
                        style="",
                        tooltip=f"position {p}",
                    )
                    chain.append(f"__cell__tokens__{p}")
            elif positions and row != OUTPUT:
                by_position: dict[int | None, list[str]] = {}
                for name in groups[row]:
                    by_position.setdefault(view.nodes[name]["position"], []).append(name)
                for p in [*range(columns), None]:  # None: the row's +N more, after the columns
                    if p is not None:
                        anchor = f"__cell__{row}__{p}"
                        sub.node(anchor, label="", shape="point", width="0", style="invis")
                        chain.append(anchor)
                    for name in by_position.get(p, []):
                        attrs = _node_attrs(view.nodes[name], name, node_scale, annotations, labels)
                        sub.node(name, **attrs)
                        chain.append(name)
            else:
                for name in groups[row]:
                    attrs = _node_attrs(view.nodes[name], name, node_scale, annotations, labels)
                    sub.node(name, **attrs)
                    chain.append(name)
            for left, right in zip(chain, chain[1:], strict=False):
                sub.edge(left, right, **invisible)

    # Keep rows in forward order (and position columns straight) with invisible edges.
    for lower, upper in zip(rows, rows[1:], strict=False):
        graph.edge(_row_id(lower), _row_id(upper), weight="10", **invisible)
        if positions and upper != OUTPUT:
            for p in range(columns):
                below, above = f"__cell__{lower}__{p}", f"__cell__{upper}__{p}"
                graph.edge(below, above, weight="5", **invisible)

    for source, target, weight in edges:
        graph.edge(source, target, **_edge_attrs(source, target, weight, edge_scale))
    return graph


def _missing_message(what: str, dot_path: Path | None, fmt: str, path: Path | None) -> str:
    message = f"graphviz's `dot` program is not on PATH, so {what} could not be drawn"
    if dot_path is not None:
        message += f"; wrote the diagram source to {dot_path} instead"
    message += f". To draw it, {_INSTALL_HINT}"
    if dot_path is not None and path is not None:
        message += f", then run `dot -T{fmt} {dot_path} -o {path}`"
    return message + "."


def render(
    circuit: Circuit,
    path: str | os.PathLike,
    *,
    format: DiagramFormat | None = None,
    **options: Any,
) -> Path:
    """Draw the circuit into ``path``: SVG, PNG, PDF, or the DOT source.

    Args:
        circuit: The circuit to draw.
        path: Output file; its suffix gives the format unless ``format`` is given.
        format: ``"svg"``, ``"png"``, ``"pdf"`` or ``"dot"``.
        **options: Keyword options of `diagram` (annotations, labels, positions, tokens,
            max_nodes, row_cap, edge_share, title).

    Returns:
        The path written.

    Raises:
        GraphvizMissing: When graphviz's ``dot`` program is missing; the DOT source has then
            been written beside ``path`` with the suffix ``.dot``, and the message says how to
            install graphviz.
        ValueError: On an unknown format or bad diagram options.
    """
    path = Path(path)
    fmt = format or format_from_suffix(path)
    if fmt not in ("svg", "png", "pdf", "dot"):
        raise ValueError(f"unknown diagram format {fmt!r}; choose svg, png, pdf or dot")
    graph = diagram(circuit, **options)
    if fmt == "dot":
        return write_text(path, graph.source)
    try:
        data = graph.pipe(format=fmt)
    except graphviz.ExecutableNotFound:
        dot_path = path.with_suffix(".dot")
        write_text(dot_path, graph.source)
        raise GraphvizMissing(_missing_message(str(path), dot_path, fmt, path), dot_path) from None
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return path


def to_svg(circuit: Circuit, **options: Any) -> str:
    """The diagram as SVG text (options as for `diagram`), e.g. for a notebook.

    Raises:
        GraphvizMissing: When graphviz's ``dot`` program is missing.
    """
    try:
        return diagram(circuit, **options).pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        raise GraphvizMissing(_missing_message("the circuit", None, "svg", None)) from None


def repr_svg(circuit: Circuit, *, max_nodes: int = 60) -> str | None:
    """SVG for a notebook's rich display (``Circuit._repr_svg_``), or None without graphviz.

    Returning None lets Jupyter fall back to the text ``repr`` instead of showing an error.
    Large circuits are capped at ``max_nodes`` nodes (the title says how many were left out).
    """
    try:
        return to_svg(circuit, max_nodes=max_nodes)
    except GraphvizMissing:
        return None

"""The explorer: one self-contained HTML page to browse a circuit in any browser, offline.

The page holds its data inline as JSON and draws with plain JavaScript and SVG: no network, no
CDN, no libraries. What it shows:

- the layered layout of the diagrams (`viz.diagram`): one row per submodule, ``embed`` at the
  bottom, ``y`` on top, one column per position when the circuit keeps positions (tokens along
  the bottom when given); blue = positive, red = negative, error nodes as triangles;
- a side panel for the node under the pointer (or the clicked one): name, kind, label, effect,
  incoming and outgoing edges with weights, and its dashboard when one is given;
- two sliders that hide nodes with |effect| and edges with |weight| below a threshold, and a
  "fit to window" switch for wide circuits;
- a click on a node highlights every path from it to ``y`` (through visible edges) and pins its
  panel; a click on the background clears it. ``page.html#node=resid_2/17`` opens with that node
  selected.

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
``</script>``) can end the script early, and the script writes text with ``textContent`` only.
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
from viz.diagram import cap_nodes, node_label, signed_colour

__all__ = ["explorer_data", "explorer_html", "write_explorer", "script_json"]

NODE_WIDTH = 104
NODE_HEIGHT = 26
ROW_HEIGHT = 74
ROW_LABEL_WIDTH = 70
MARGIN = 24


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


def _layout(circuit: Circuit, positions: bool, columns: int) -> tuple[dict, list, float, float]:
    """Node centres, row labels, width and height (pixels; ``y`` grows downwards)."""
    groups = circuit.nodes_by_submodule()
    rows = list(groups)
    if positions:
        rows.insert(0, "tokens")
        groups["tokens"] = []
    if OUTPUT in circuit.graph:
        rows.append(OUTPUT)
        groups[OUTPUT] = [OUTPUT]
    step = NODE_WIDTH + 12

    def row_y(r: int) -> float:
        return MARGIN + (len(rows) - 1 - r) * ROW_HEIGHT + NODE_HEIGHT / 2

    centres: dict[str, tuple[float, float]] = {}
    if positions:
        cells: dict[tuple[str, int], list[str]] = {}
        for row in rows:
            for name in groups[row] if row != OUTPUT else []:
                cells.setdefault((row, circuit.graph.nodes[name]["position"]), []).append(name)
        widths = [
            max([len(names) for (_, p), names in cells.items() if p == col] + [1]) * step
            for col in range(columns)
        ]
        starts = [ROW_LABEL_WIDTH + sum(widths[:col]) for col in range(columns)]
        width = ROW_LABEL_WIDTH + sum(widths) + MARGIN
        for (row, col), names in cells.items():
            for i, name in enumerate(names):
                offset = (widths[col] - len(names) * step) / 2
                centres[name] = (starts[col] + offset + i * step + step / 2, row_y(rows.index(row)))
        column_x = [start + w / 2 for start, w in zip(starts, widths, strict=True)]
    else:
        widest = max((len(groups[row]) for row in rows), default=1)
        width = ROW_LABEL_WIDTH + widest * step + MARGIN
        for r, row in enumerate(rows):
            names = groups[row]
            left = ROW_LABEL_WIDTH + (widest - len(names)) * step / 2
            for i, name in enumerate(names):
                centres[name] = (left + i * step + step / 2, row_y(r))
        column_x = []
    if OUTPUT in circuit.graph:
        centres[OUTPUT] = ((ROW_LABEL_WIDTH + width - MARGIN) / 2, row_y(rows.index(OUTPUT)))
    labels = [{"name": row, "y": row_y(r)} for r, row in enumerate(rows)]
    height = 2 * MARGIN + (len(rows) - 1) * ROW_HEIGHT + NODE_HEIGHT
    layout = {name: {"x": round(x, 1), "y": round(y, 1)} for name, (x, y) in centres.items()}
    return layout, [labels, column_x], width, height


def explorer_data(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
    tokens: Sequence[str] | None = None,
    max_nodes: int | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """The page's JSON payload: nodes with layout and colours, edges, rows, tokens, provenance.

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
    layout, (rows, column_x), width, height = _layout(drawn, has_positions, columns)
    effects = [abs(e) for name, e in drawn.graph.nodes(data="effect") if name != OUTPUT]
    scale = max(effects, default=0.0) or 1.0
    dashboards = dashboards or {}
    if labels is None:  # dashboards' automatic labels, for nodes without an annotation
        labels = {n: d["label"] for n, d in dashboards.items() if isinstance(d.get("label"), str)}
    nodes = []
    for name, attrs in drawn.graph.nodes(data=True):
        fill, intensity = signed_colour(attrs["effect"], scale)
        dashboard = dashboards.get(name) or dashboards.get(name.split("@", 1)[0])
        nodes.append(
            {
                "name": name,
                "label": "y" if name == OUTPUT else node_label(name, annotations, labels),
                "annotation": annotation_for(name, annotations),
                "kind": attrs["kind"],
                "submodule": attrs["submodule"],
                "position": attrs["position"],
                "effect": attrs["effect"],
                "fill": "#eeeeee" if name == OUTPUT else fill,
                "dark": intensity > 0.55 and name != OUTPUT,
                "dashboard": dict(dashboard) if dashboard else None,
                **layout[name],
            }
        )
    edges = [
        {"source": u, "target": v, "weight": w} for u, v, w in drawn.graph.edges(data="weight")
    ]
    return {
        "format": "circuits.explorer",
        "version": 1,
        "title": title or "circuit",
        "note": note,
        "width": round(width, 1),
        "height": round(height, 1),
        "node_width": NODE_WIDTH,
        "node_height": NODE_HEIGHT,
        "rows": rows,
        "columns": [
            {"x": round(x, 1), "token": None if tokens is None else tokens[p], "position": p}
            for p, x in enumerate(column_x)
        ],
        "nodes": nodes,
        "edges": edges,
        "provenance": circuit.provenance,
    }


def explorer_html(
    circuit: Circuit,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    dashboards: Mapping[str, Mapping[str, Any]] | None = None,
    tokens: Sequence[str] | None = None,
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
        max_nodes: Show only the nodes of largest |effect|; the page says how many were left out.
        title: The page's title.

    Raises:
        ValueError: On tokens for a circuit without positions or too few tokens, or dashboards
            that are not plain JSON (e.g. NaN).
    """
    data = explorer_data(
        circuit,
        annotations=annotations,
        labels=labels,
        dashboards=dashboards,
        tokens=tokens,
        max_nodes=max_nodes,
        title=title,
    )
    try:
        payload = script_json(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"explorer data must be plain, finite JSON: {error}") from None
    parts = {"__TITLE__": html.escape(data["title"]), "__DATA__": payload, "__SCRIPT__": _SCRIPT}
    return re.sub("__TITLE__|__DATA__|__SCRIPT__", lambda m: parts[m[0]], _PAGE)


def write_explorer(circuit: Circuit, path: str | os.PathLike, **options: Any) -> Path:
    """Write `explorer_html` (options as there) to ``path`` as UTF-8; return the path."""
    path = Path(path)
    write_text(path, explorer_html(circuit, **options))
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { margin: 0; font: 13px/1.4 system-ui, Helvetica, Arial, sans-serif; color: #222;
  display: flex; height: 100vh; background: #fff; }
#main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
#controls { padding: 8px 12px; border-bottom: 1px solid #ddd; display: flex; gap: 18px;
  flex-wrap: wrap; align-items: center; background: #fafafa; }
#controls h1 { font-size: 15px; margin: 0 12px 0 0; }
#controls label { display: flex; gap: 6px; align-items: center; }
#note { color: #a33; }
#canvas { flex: 1; overflow: auto; }
#panel { width: 340px; border-left: 1px solid #ddd; padding: 10px 14px; overflow: auto;
  background: #fcfcfc; }
#panel h2 { font-size: 14px; margin: 4px 0; word-break: break-all; }
#panel table { border-collapse: collapse; width: 100%; }
#panel td { padding: 1px 4px; vertical-align: top; }
#panel td.num { text-align: right; font-variant-numeric: tabular-nums; }
#panel .edge { cursor: pointer; color: #245; }
#panel .edge:hover { text-decoration: underline; }
.muted { color: #777; }
.node { cursor: pointer; }
.node text { font-size: 10px; pointer-events: none; }
.node.selected > .shape { stroke: #000; stroke-width: 2.5; }
.dim { opacity: 0.12; }
.hidden { display: none; }
.ctx { margin: 3px 0; padding: 2px; border: 1px solid #eee; font-family: monospace;
  white-space: pre-wrap; word-break: break-all; }
.bar { fill: #7a9cc6; }
</style>
</head>
<body>
<div id="main">
  <div id="controls">
    <h1 id="title">__TITLE__</h1>
    <label>|effect| &ge; <input id="node-threshold" type="range" min="0" max="1000" value="0">
      <span id="node-threshold-value">0</span></label>
    <label>|weight| &ge; <input id="edge-threshold" type="range" min="0" max="1000" value="0">
      <span id="edge-threshold-value">0</span></label>
    <label><input id="fit" type="checkbox"> fit to window</label>
    <span id="counts"></span>
    <span id="note"></span>
  </div>
  <div id="canvas"><svg id="graph" xmlns="http://www.w3.org/2000/svg"></svg></div>
</div>
<div id="panel"><p class="muted" id="hint">Hover over a node to see it; click one to pin it and
highlight its paths to y.</p></div>
<script type="application/json" id="circuit-data">__DATA__</script>
<script>
__SCRIPT__
</script>
</body>
</html>
"""

_SCRIPT = r"""
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("circuit-data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const POS = "#2166ac", NEG = "#b2182b";
  const svg = document.getElementById("graph");
  const panel = document.getElementById("panel");
  const W = DATA.node_width, H = DATA.node_height;
  const byName = new Map(), inEdges = new Map(), outEdges = new Map();
  const nodeEls = new Map(), edgeEls = [];
  DATA.nodes.forEach(function (n) {
    byName.set(n.name, n); inEdges.set(n.name, []); outEdges.set(n.name, []);
  });
  DATA.edges.forEach(function (e) {
    outEdges.get(e.source).push(e); inEdges.get(e.target).push(e);
  });
  const maxEffect = Math.max(0, ...DATA.nodes.filter(n => n.name !== "y")
    .map(n => Math.abs(n.effect))) || 1;
  const maxWeight = Math.max(0, ...DATA.edges.map(e => Math.abs(e.weight))) || 1;
  let nodeThreshold = 0, edgeThreshold = 0, selected = null;

  function make(tag, attrs, parent) {
    const el = document.createElementNS(NS, tag);
    for (const key in attrs) el.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(el);
    return el;
  }
  function html(tag, text, parent, cls) {
    const el = document.createElement(tag);
    if (text !== undefined && text !== null) el.textContent = text;
    if (cls) el.className = cls;
    if (parent) parent.appendChild(el);
    return el;
  }
  function fmt(x) { return (x >= 0 ? "+" : "") + Number(x).toPrecision(4); }
  function short(text, n) { return text.length > n ? text.slice(0, n - 1) + "\u2026" : text; }

  function draw() {
    svg.setAttribute("width", DATA.width);
    svg.setAttribute("height", DATA.height);
    svg.setAttribute("viewBox", "0 0 " + DATA.width + " " + DATA.height);
    make("rect", {x: 0, y: 0, width: DATA.width, height: DATA.height, fill: "#fff",
      id: "background"}, svg);
    DATA.rows.forEach(function (row) {
      const t = make("text", {x: 8, y: row.y + 4, fill: "#888", "font-size": 11}, svg);
      t.textContent = row.name;
    });
    const tokenRow = DATA.rows.find(r => r.name === "tokens");
    DATA.columns.forEach(function (col) {
      const t = make("text", {x: col.x, y: tokenRow ? tokenRow.y + 4 : DATA.height - 8,
        "text-anchor": "middle", "font-size": 11, fill: "#333"}, svg);
      t.textContent = col.position + (col.token === null ? "" : ": " +
        short(JSON.stringify(col.token).slice(1, -1).replace(/ /g, "\u2423"), 14));
    });
    const edgeLayer = make("g", {id: "edges"}, svg);
    const nodeLayer = make("g", {id: "nodes"}, svg);
    DATA.edges.forEach(function (e) {
      const a = byName.get(e.source), b = byName.get(e.target);
      const y1 = a.y - H / 2, y2 = b.y + H / 2, ym = (y1 + y2) / 2;
      const k = Math.min(Math.abs(e.weight) / maxWeight, 1);
      const path = make("path", {
        d: "M" + a.x + "," + y1 + " C" + a.x + "," + ym + " " + b.x + "," + ym + " " +
          b.x + "," + y2,
        fill: "none", stroke: e.weight >= 0 ? POS : NEG,
        "stroke-width": (0.5 + 4.5 * k).toFixed(2), "stroke-opacity": (0.3 + 0.6 * k).toFixed(2),
        class: "edge"}, edgeLayer);
      make("title", {}, path).textContent = e.source + " \u2192 " + e.target + ": " +
        fmt(e.weight);
      edgeEls.push({edge: e, el: path});
    });
    DATA.nodes.forEach(function (n) {
      const g = make("g", {class: "node", "data-name": n.name}, nodeLayer);
      let shape;
      if (n.kind === "error") {
        shape = make("polygon", {points: (n.x - W / 2) + "," + (n.y + H / 2) + " " +
          (n.x + W / 2) + "," + (n.y + H / 2) + " " + n.x + "," + (n.y - H / 2 - 6)}, g);
      } else if (n.name === "y") {
        shape = make("ellipse", {cx: n.x, cy: n.y, rx: W / 3, ry: H / 2 + 2}, g);
      } else {
        shape = make("rect", {x: n.x - W / 2, y: n.y - H / 2, width: W, height: H, rx: 6}, g);
      }
      shape.setAttribute("class", "shape");
      shape.setAttribute("fill", n.fill);
      shape.setAttribute("stroke", "#555");
      const text = make("text", {x: n.x, y: n.y + (n.kind === "error" ? 8 : 4),
        "text-anchor": "middle", fill: n.dark ? "#fff" : "#000"}, g);
      text.textContent = short(n.label, n.kind === "error" ? 12 : 17);
      make("title", {}, g).textContent = n.name + (n.label !== n.name ? " \u2014 " + n.label : "")
        + " (" + n.kind + "), effect " + fmt(n.effect);
      g.addEventListener("mouseenter", function () { if (!selected) show(n.name); });
      g.addEventListener("mouseleave", function () { if (!selected) hint(); });
      g.addEventListener("click", function (event) { event.stopPropagation(); select(n.name); });
      nodeEls.set(n.name, g);
    });
    svg.addEventListener("click", function () { select(null); });
  }

  function nodeVisible(name) {
    return name === "y" || Math.abs(byName.get(name).effect) >= nodeThreshold;
  }
  function edgeVisible(e) {
    return Math.abs(e.weight) >= edgeThreshold && nodeVisible(e.source) && nodeVisible(e.target);
  }

  function pathsToOutput(name) {
    // Nodes reachable from `name` through visible edges that also reach y.
    const forward = new Set([name]), stack = [name];
    while (stack.length) {
      const u = stack.pop();
      outEdges.get(u).forEach(function (e) {
        if (edgeVisible(e) && !forward.has(e.target)) {
          forward.add(e.target); stack.push(e.target);
        }
      });
    }
    const toY = new Set();
    if (byName.has("y")) {
      toY.add("y"); const back = ["y"];
      while (back.length) {
        const v = back.pop();
        inEdges.get(v).forEach(function (e) {
          if (edgeVisible(e) && !toY.has(e.source)) { toY.add(e.source); back.push(e.source); }
        });
      }
    }
    if (name === "y") return toY;
    return new Set([...forward].filter(x => toY.has(x)));
  }

  function update() {
    let shownNodes = 0, shownEdges = 0;
    nodeEls.forEach(function (el, name) {
      const visible = nodeVisible(name);
      el.classList.toggle("hidden", !visible);
      if (visible && name !== "y") shownNodes++;
    });
    const onPath = selected && nodeVisible(selected) ? pathsToOutput(selected) : null;
    edgeEls.forEach(function (item) {
      const visible = edgeVisible(item.edge);
      item.el.classList.toggle("hidden", !visible);
      if (visible) shownEdges++;
      item.el.classList.toggle("dim", !!onPath &&
        !(onPath.has(item.edge.source) && onPath.has(item.edge.target)));
    });
    nodeEls.forEach(function (el, name) {
      el.classList.toggle("dim", !!onPath && !onPath.has(name));
      el.classList.toggle("selected", name === selected);
    });
    document.getElementById("counts").textContent = shownNodes + " of " +
      (DATA.nodes.length - (byName.has("y") ? 1 : 0)) + " nodes, " + shownEdges + " of " +
      DATA.edges.length + " edges";
  }

  function hint() {
    panel.textContent = "";
    html("p", "Hover over a node to see it; click one to pin it and highlight its paths to y.",
      panel, "muted").id = "hint";
  }

  function edgeTable(title, edges, other) {
    html("h3", title + " (" + edges.length + ")", panel);
    if (!edges.length) { html("p", "none", panel, "muted"); return; }
    const table = html("table", null, panel);
    table.className = "edges";
    edges.slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).forEach(function (e) {
      const tr = html("tr", null, table);
      const td = html("td", e[other], tr, "edge");
      td.addEventListener("click", function () { select(e[other]); });
      html("td", fmt(e.weight), tr, "num");
    });
  }

  function dashboard(d) {
    html("h3", "Dashboard", panel);
    if (d.label) html("p", d.label, panel).className = "dash-label";
    if (Array.isArray(d.contexts) && d.contexts.length) {
      html("h4", "Top contexts", panel);
      d.contexts.forEach(function (ctx) {
        const acts = ctx.activations || [];
        const top = Math.max(0, ...acts) || 1;
        const div = html("div", null, panel, "ctx");
        (ctx.tokens || []).forEach(function (tok, i) {
          const a = acts[i] || 0;
          const span = html("span", tok, div);
          span.title = String(a);
          if (a > 0) span.style.background = "rgba(33,102,172," + (a / top * 0.8).toFixed(3) + ")";
        });
      });
    }
    if (d.histogram && Array.isArray(d.histogram.counts) && d.histogram.counts.length) {
      html("h4", "Activations", panel);
      const counts = d.histogram.counts, peak = Math.max(...counts) || 1;
      const box = make("svg", {width: 300, height: 60, class: "histogram"}, panel);
      const bw = 300 / counts.length;
      counts.forEach(function (c, i) {
        const h = 56 * c / peak;
        make("rect", {x: i * bw, y: 58 - h, width: Math.max(bw - 1, 1), height: h,
          class: "bar"}, box);
      });
      const edges = d.histogram.edges || [];
      if (edges.length) html("div", Number(edges[0]).toPrecision(3) + " \u2026 " +
        Number(edges[edges.length - 1]).toPrecision(3), panel, "muted");
    }
    [["promoted", "Promoted tokens"], ["suppressed", "Suppressed tokens"]].forEach(function (kv) {
      const rows = d[kv[0]];
      if (!Array.isArray(rows) || !rows.length) return;
      html("h4", kv[1], panel);
      const table = html("table", null, panel);
      rows.forEach(function (r) {
        const tr = html("tr", null, table);
        html("td", JSON.stringify(r.token), tr);
        html("td", fmt(r.value), tr, "num");
      });
    });
  }

  function show(name) {
    const n = byName.get(name);
    panel.textContent = "";
    html("h2", n.name, panel).id = "panel-name";
    const table = html("table", null, panel);
    [["kind", n.kind], ["submodule", n.submodule], ["position", n.position],
     ["effect", fmt(n.effect)], ["label", n.label !== n.name ? n.label : null],
     ["annotation", n.annotation]].forEach(function (row) {
      if (row[1] === null || row[1] === undefined) return;
      const tr = html("tr", null, table);
      html("td", row[0], tr, "muted");
      html("td", String(row[1]), tr).className = "field-" + row[0];
    });
    edgeTable("Incoming edges", inEdges.get(name), "source");
    edgeTable("Outgoing edges", outEdges.get(name), "target");
    if (n.dashboard) dashboard(n.dashboard);
  }

  function select(name) {
    selected = name && byName.has(name) ? name : null;
    if (selected) show(selected); else hint();
    update();
    if (selected && nodeEls.get(selected).scrollIntoView) {
      nodeEls.get(selected).scrollIntoView({block: "nearest", inline: "nearest"});
    }
  }

  function slider(id, set, max) {
    const input = document.getElementById(id);
    input.addEventListener("input", function () {
      const value = input.value / 1000 * max;
      set(value);
      document.getElementById(id + "-value").textContent = value.toPrecision(3);
      update();
    });
  }

  draw();
  document.getElementById("fit").addEventListener("change", function (event) {
    svg.setAttribute("width", event.target.checked ? "100%" : DATA.width);
    svg.setAttribute("height", event.target.checked ? "100%" : DATA.height);
  });
  slider("node-threshold", function (v) { nodeThreshold = v; }, maxEffect);
  slider("edge-threshold", function (v) { edgeThreshold = v; }, maxWeight);
  if (DATA.note) document.getElementById("note").textContent = DATA.note;
  const match = /^#node=(.+)$/.exec(window.location.hash);
  select(match ? decodeURIComponent(match[1]) : null);
  document.body.setAttribute("data-ready", "true");
})();
"""

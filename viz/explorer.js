"use strict";
// The circuit explorer. Data: the JSON in #circuit-data (viz/explorer.py, `explorer_data`).
// Every filter change rebuilds the displayed graph and lays it out again:
//   base nodes -> kept nodes (|effect| rank) -> supernodes (members summed) -> edges summed
//   between displayed nodes -> edge filters (absolute |weight|, share of incoming |weight|)
//   -> optional restriction to paths through pinned nodes -> layout by row and column.
// Drawing is two canvases: the base (edges, faded, under nodes) and an overlay for the hovered
// node's edges, so a hover redraws a handful of edges, not all of them.
(function () {
  const DATA = JSON.parse(document.getElementById("circuit-data").textContent);
  const POS = [33, 102, 172], NEG = [178, 24, 43];
  const NODE_W = 104, NODE_H = 32, GAP = 8, LINE_H = NODE_H + GAP, ROW_GAP = 26;
  const LEFT = 80, MARGIN = 24, EMPTY_COLUMN = 64, TOKEN_H = 30, FONT = 12;
  const READABLE = 0.75;  // view scale at which FONT-unit text is 9 screen pixels
  const OUTPUT = "y";
  const wrap = document.getElementById("canvas");
  const base = document.getElementById("base"), overlay = document.getElementById("overlay");
  const bctx = base.getContext("2d"), octx = overlay.getContext("2d");
  const panel = document.getElementById("panel");
  const $ = id => document.getElementById(id);

  const nodes = DATA.nodes;  // [{name, label, kind, row, position, effect, ...}]
  const byName = new Map(nodes.map(n => [n.name, n]));
  const ranked = nodes.filter(n => n.name !== OUTPUT)
    .sort((a, b) => Math.abs(b.effect) - Math.abs(a.effect));
  const maxEffect = ranked.length ? Math.abs(ranked[0].effect) || 1 : 1;
  const maxWeight = largest(DATA.edges.map(e => e[2]));
  const hasPositions = DATA.columns.length > 0;

  const state = {
    kept: ranked.length, edgeThreshold: 0, edgeShare: 1, search: "", onlyPinned: false,
    groups: (DATA.supernodes || []).map(g => ({name: g.name, members: g.members.slice()})),
    pinned: new Set(), hovered: null, view: {scale: 1, x: 0, y: 0},
  };
  let G = null;  // the displayed graph
  let opened = ranked.length;  // nodes kept when the page opened
  const timing = {firstPaint: null, lastHover: null, lastRebuild: null};

  // ----------------------------------------------------------------------------------------
  // The displayed graph

  function largest(values) {
    // max |value|, 1 for none (no spread: edge lists can exceed the argument limit)
    return values.reduce((m, v) => Math.max(m, Math.abs(v)), 0) || 1;
  }

  function nodeThreshold() {
    return state.kept >= ranked.length ? 0 : Math.abs(ranked[state.kept - 1].effect);
  }

  function displayNodes() {
    // Kept base nodes, members of a supernode replaced by it.
    const threshold = nodeThreshold(), groupOf = new Map(), out = new Map();
    state.groups.forEach(g => g.members.forEach(m => groupOf.set(m, g.name)));
    nodes.forEach(function (n) {
      if (n.name !== OUTPUT && Math.abs(n.effect) < threshold) return;
      const group = groupOf.get(n.name);
      if (group === undefined) {
        out.set(n.name, {id: n.name, label: n.label, kind: n.kind, row: n.row,
          position: n.position, effect: n.effect, base: n, members: null});
        return;
      }
      const id = "supernode:" + group;
      let g = out.get(id);
      if (!g) {
        g = {id: id, label: group, kind: "supernode", effect: 0, base: null, members: []};
        out.set(id, g);
      }
      g.members.push(n);
      g.effect += n.effect;
    });
    out.forEach(function (g) {
      if (!g.members) return;
      g.row = mode(g.members.map(m => m.row));
      g.position = hasPositions ? mode(g.members.map(m => m.position)) : null;
    });
    return {map: groupOf, nodes: out};
  }

  function mode(values) {
    // The most frequent value; the largest among ties.
    const counts = new Map();
    values.forEach(v => counts.set(v, (counts.get(v) || 0) + 1));
    let best = null, bestCount = 0;
    counts.forEach(function (c, v) {
      if (c > bestCount || (c === bestCount && v > best)) { best = v; bestCount = c; }
    });
    return best;
  }

  function rebuild() {
    const started = performance.now();
    const shown = displayNodes(), display = shown.nodes;
    const idOf = name => shown.map.has(name) ? "supernode:" + shown.map.get(name) : name;
    const summed = new Map();
    DATA.edges.forEach(function (e) {
      const s = idOf(nodes[e[0]].name), t = idOf(nodes[e[1]].name);
      if (s === t || !display.has(s) || !display.has(t)) return;
      const key = s + "\u0000" + t, edge = summed.get(key);
      if (edge) edge.weight += e[2]; else summed.set(key, {source: s, target: t, weight: e[2]});
    });
    let edges = [...summed.values()].filter(e => Math.abs(e.weight) >= state.edgeThreshold);
    if (state.edgeShare < 1) edges = strongestIncoming(edges, state.edgeShare);
    let list = [...display.values()];
    const through = pinnedPaths(list, edges);
    if (state.onlyPinned && through) {
      list = list.filter(n => through.has(n.id));
      edges = edges.filter(e => through.has(e.source) && through.has(e.target));
    }
    G = {nodes: list, byId: new Map(list.map(n => [n.id, n])), edges: edges,
      inE: new Map(list.map(n => [n.id, []])), outE: new Map(list.map(n => [n.id, []]))};
    edges.forEach(function (e) { G.outE.get(e.source).push(e); G.inE.get(e.target).push(e); });
    G.through = through;
    layout(G);
    timing.lastRebuild = performance.now() - started;
    updateCounts();
  }

  function strongestIncoming(edges, share) {
    // Per target, its incoming edges of largest |weight| that carry `share` of their total.
    const incoming = new Map(), kept = [];
    edges.forEach(function (e) {
      if (!incoming.has(e.target)) incoming.set(e.target, []);
      incoming.get(e.target).push(e);
    });
    incoming.forEach(function (list) {
      list.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
      const total = list.reduce((s, e) => s + Math.abs(e.weight), 0);
      let carried = 0;
      for (const e of list) {
        if (carried >= share * total) break;
        kept.push(e);
        carried += Math.abs(e.weight);
      }
    });
    return kept;
  }

  function pinnedPaths(list, edges) {
    // Nodes on a path through a pinned node: its ancestors, itself and its descendants.
    const pins = [...state.pinned].filter(id => list.some(n => n.id === id));
    if (!pins.length) return null;
    const out = new Map(), inc = new Map();
    edges.forEach(function (e) {
      (out.get(e.source) || out.set(e.source, []).get(e.source)).push(e.target);
      (inc.get(e.target) || inc.set(e.target, []).get(e.target)).push(e.source);
    });
    const seen = new Set(pins);
    [out, inc].forEach(function (next) {
      const stack = pins.slice(), reached = new Set(pins);
      while (stack.length) {
        (next.get(stack.pop()) || []).forEach(function (v) {
          if (!reached.has(v)) { reached.add(v); seen.add(v); stack.push(v); }
        });
      }
    });
    return seen;
  }

  // ----------------------------------------------------------------------------------------
  // Layout: one row per submodule (embed at the bottom, y on top), one column per position.

  function layout(g) {
    // Cells (row, position) of nodes, strongest first; each cell wraps onto lines of at most
    // `per` nodes, `per` chosen so that the fitted layout is as large as it can be.
    const rowIds = [...new Set(g.nodes.map(n => n.row))].sort((a, b) => a - b);
    const columns = hasPositions ? DATA.columns.length : 1;
    const cells = new Map(rowIds.map(r => [r, Array.from({length: columns}, () => [])]));
    g.nodes.forEach(function (n) {
      cells.get(n.row)[hasPositions && n.position !== null ? n.position : 0].push(n);
    });
    const byEffect = (a, b) => Math.abs(b.effect) - Math.abs(a.effect);
    cells.forEach(row => row.forEach(list => list.sort(byEffect)));
    const step = NODE_W + GAP;
    const columnMax = Array.from({length: columns}, (_, p) =>
      Math.max(0, ...rowIds.map(r => cells.get(r)[p].length)));
    function shape(per) {
      const widths = columnMax.map(c => c ? Math.min(c, per) * step : EMPTY_COLUMN);
      const lines = rowIds.map(r => Math.max(1, ...cells.get(r).map(l => Math.ceil(l.length / per))));
      const width = LEFT + widths.reduce((a, b) => a + b, 0) + MARGIN;
      const height = 2 * MARGIN + lines.reduce((a, b) => a + b, 0) * LINE_H +
        (rowIds.length - 1) * ROW_GAP + (hasPositions ? TOKEN_H : 0);
      return {per: per, widths: widths, lines: lines, width: width, height: height,
        scale: Math.min(wrap.clientWidth / width, wrap.clientHeight / height)};
    }
    let best = shape(1);
    for (let per = 2; per <= Math.max(...columnMax); per++) {
      const candidate = shape(per);
      if (candidate.scale > best.scale) best = candidate;
    }
    g.columns = [];
    let x = LEFT;
    best.widths.forEach(function (w, p) {
      g.columns.push({x: x + w / 2, width: w, position: p,
        token: hasPositions ? DATA.columns[p].token : null});
      x += w;
    });
    g.rows = [];
    let top = MARGIN;
    for (let i = rowIds.length - 1; i >= 0; i--) {  // y's row on top
      const r = rowIds[i], lines = best.lines[i];
      g.rows.push({name: DATA.rows[r].name, y: top + (lines * LINE_H - GAP) / 2});
      cells.get(r).forEach(function (list, p) {
        list.forEach(function (n, k) {
          const line = Math.floor(k / best.per), inLine = Math.min(best.per,
            list.length - line * best.per);
          n.x = g.columns[p].x + (k % best.per - (inLine - 1) / 2) * step;
          n.y = top + line * LINE_H + NODE_H / 2;
        });
      });
      top += lines * LINE_H + ROW_GAP;
    }
    g.width = best.width;
    g.height = best.height;
    g.tokenY = top - ROW_GAP + TOKEN_H / 2;
    g.nodes.forEach(function (n) {
      if (n.id === OUTPUT) n.x = (LEFT + g.width - MARGIN) / 2;
    });
    g.lines = new Map();  // y -> the nodes of one line sorted by x, for hit tests
    g.nodes.forEach(function (n) {
      if (!g.lines.has(n.y)) g.lines.set(n.y, []);
      g.lines.get(n.y).push(n);
    });
    g.lines.forEach(list => list.sort((a, b) => a.x - b.x));
  }

  // ----------------------------------------------------------------------------------------
  // View: fit, zoom, pan

  function size() {
    const dpr = window.devicePixelRatio || 1;
    const w = wrap.clientWidth, h = wrap.clientHeight;
    [base, overlay].forEach(function (c) {
      c.width = Math.max(1, Math.round(w * dpr));
      c.height = Math.max(1, Math.round(h * dpr));
      c.style.width = w + "px";
      c.style.height = h + "px";
    });
  }

  function fitScale(g) {
    return Math.min(wrap.clientWidth / g.width, wrap.clientHeight / g.height, 1.5);
  }

  function fit() {
    const s = fitScale(G);
    state.view = {scale: s, x: (wrap.clientWidth - G.width * s) / 2,
      y: (wrap.clientHeight - G.height * s) / 2};
    draw();
  }

  function zoom(factor, cx, cy) {
    const v = state.view, s = Math.min(Math.max(v.scale * factor, 0.01), 8);
    v.x = cx - (cx - v.x) * s / v.scale;
    v.y = cy - (cy - v.y) * s / v.scale;
    v.scale = s;
    draw();
  }

  function pan(dx, dy) { state.view.x += dx; state.view.y += dy; draw(); }

  function readableCount() {
    // The most nodes (strongest first) whose fitted layout keeps labels readable.
    const saved = state.kept;
    let lo = 1, hi = ranked.length;
    const fits = function (k) {
      state.kept = k;
      const g = {nodes: [...displayNodes().nodes.values()]};
      layout(g);
      return fitScale(g) >= READABLE;
    };
    if (!ranked.length || fits(hi)) { state.kept = saved; return ranked.length; }
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (fits(mid)) lo = mid; else hi = mid - 1;
    }
    state.kept = saved;
    return lo;
  }

  // ----------------------------------------------------------------------------------------
  // Drawing

  function colour(effect, scale) {
    const t = Math.min(Math.abs(effect) / scale, 1), c = effect >= 0 ? POS : NEG;
    return {fill: "rgb(" + c.map(v => Math.round(255 + (v - 255) * t)).join(",") + ")",
      dark: t > 0.55};
  }

  function edgePath(ctx, e) {
    const a = G.byId.get(e.source), b = G.byId.get(e.target);
    const y1 = a.y - NODE_H / 2, y2 = b.y + NODE_H / 2, ym = (y1 + y2) / 2;
    ctx.moveTo(a.x, y1);
    ctx.bezierCurveTo(a.x, ym, b.x, ym, b.x, y2);
  }

  function strokeEdges(ctx, edges, alpha, boost) {
    // Edges in buckets of sign and width, one stroke per bucket.
    const buckets = new Map();
    edges.forEach(function (e) {
      const level = Math.min(4, Math.floor(5 * Math.min(Math.abs(e.weight) / G.maxWeight, 1)));
      const key = (e.weight >= 0 ? "+" : "-") + level;
      if (!buckets.has(key)) buckets.set(key, []);
      buckets.get(key).push(e);
    });
    buckets.forEach(function (list, key) {
      const level = Number(key.slice(1)), c = key[0] === "+" ? POS : NEG;
      ctx.beginPath();
      list.forEach(e => edgePath(ctx, e));
      ctx.lineWidth = (0.6 + 1.1 * level) * boost;
      ctx.strokeStyle = "rgba(" + c.join(",") + "," + (alpha * (0.45 + 0.55 * level / 4)) + ")";
      ctx.stroke();
    });
  }

  function nodeShape(ctx, n) {
    const x = n.x - NODE_W / 2, y = n.y - NODE_H / 2;
    ctx.beginPath();
    if (n.kind === "error") {
      ctx.moveTo(x, y + NODE_H); ctx.lineTo(x + NODE_W, y + NODE_H); ctx.lineTo(n.x, y - 8);
      ctx.closePath();
    } else if (ctx.roundRect) {
      ctx.roundRect(x, y, NODE_W, NODE_H, n.id === OUTPUT ? 16 : 5);
    } else {
      ctx.rect(x, y, NODE_W, NODE_H);
    }
  }

  function clip(ctx, text, width) {
    if (ctx.measureText(text).width <= width) return text;
    let lo = 0, hi = text.length;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (ctx.measureText(text.slice(0, mid) + "\u2026").width <= width) lo = mid; else hi = mid - 1;
    }
    return text.slice(0, lo) + "\u2026";
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1, v = state.view, ctx = bctx;
    const scaleEffect = largest(G.nodes.filter(n => n.id !== OUTPUT).map(n => n.effect));
    G.maxWeight = largest(G.edges.map(e => e.weight));
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, wrap.clientWidth, wrap.clientHeight);
    ctx.setTransform(dpr * v.scale, 0, 0, dpr * v.scale, dpr * v.x, dpr * v.y);
    const through = G.through;
    const lit = through ? G.edges.filter(e => through.has(e.source) && through.has(e.target))
      : [];
    const faded = 0.35 * Math.sqrt(Math.min(1, 400 / Math.max(1, G.edges.length)));
    strokeEdges(ctx, through ? G.edges.filter(e => !(through.has(e.source) &&
      through.has(e.target))) : G.edges, through ? faded / 5 : faded, 1);
    if (through) strokeEdges(ctx, lit, 0.9, 1.3);
    const labels = v.scale * FONT >= 6, query = state.search.toLowerCase();
    G.nodes.forEach(function (n) {
      const c = n.id === OUTPUT ? {fill: "#eeeeee", dark: false} : colour(n.effect, scaleEffect);
      ctx.globalAlpha = through && !through.has(n.id) ? 0.2 : 1;
      nodeShape(ctx, n);
      ctx.fillStyle = c.fill;
      ctx.fill();
      const found = query && matches(n, query);
      ctx.lineWidth = found ? 4 : state.pinned.has(n.id) ? 3 : n.members ? 3 : 1;
      ctx.strokeStyle = found ? "#f39c12" : state.pinned.has(n.id) ? "#000" : "#555";
      if (n.members && !found) ctx.setLineDash([5, 2]);
      ctx.stroke();
      ctx.setLineDash([]);
      if (labels) {
        ctx.fillStyle = c.dark ? "#fff" : "#000";
        ctx.textAlign = "center";
        ctx.textBaseline = "middle";
        const room = n.kind === "error" ? NODE_W * 0.55 : NODE_W - 8;
        const second = n.members ? n.members.length + " nodes" : n.label !== n.id ? n.label : null;
        // An error node's row names its submodule; inside the triangle, "ε" and its position.
        const first = n.members ? n.label : n.kind === "error" ? n.id.split("/").pop() : n.id;
        const y0 = n.kind === "error" ? n.y + 6 : n.y;
        ctx.font = (second ? "bold " : "") + FONT + "px system-ui, sans-serif";
        ctx.fillText(clip(ctx, first, room), n.x, second ? y0 - 7 : y0);
        if (second) {
          ctx.font = FONT + "px system-ui, sans-serif";
          ctx.fillText(clip(ctx, second, room), n.x, y0 + 7);
        }
      }
    });
    ctx.globalAlpha = 1;
    if (hasPositions && labels) {
      ctx.font = FONT + "px system-ui, sans-serif";
      ctx.fillStyle = "#333";
      ctx.textAlign = "center";
      G.columns.forEach(function (col) {
        const text = col.position + (col.token === null ? "" : ": " +
          JSON.stringify(col.token).slice(1, -1).replace(/ /g, "\u2423"));
        ctx.fillText(clip(ctx, text, col.width - 6), col.x, G.tokenY);
      });
    }
    // Row names stay at the left edge whatever the pan.
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    G.rows.forEach(function (row) {
      const y = v.y + row.y * v.scale;
      if (y < -10 || y > wrap.clientHeight + 10) return;
      ctx.fillStyle = "rgba(255,255,255,0.85)";
      ctx.fillRect(0, y - 8, ctx.measureText(row.name).width + 10, 16);
      ctx.fillStyle = "#777";
      ctx.fillText(row.name, 4, y);
    });
    drawOverlay();
    if (timing.firstPaint === null) timing.firstPaint = performance.now();
  }

  function drawOverlay() {
    const dpr = window.devicePixelRatio || 1, v = state.view;
    octx.setTransform(dpr, 0, 0, dpr, 0, 0);
    octx.clearRect(0, 0, wrap.clientWidth, wrap.clientHeight);
    const n = state.hovered && G.byId.get(state.hovered);
    if (!n) return;
    octx.setTransform(dpr * v.scale, 0, 0, dpr * v.scale, dpr * v.x, dpr * v.y);
    strokeEdges(octx, G.inE.get(n.id).concat(G.outE.get(n.id)), 0.95, 1.6);
    nodeShape(octx, n);
    octx.lineWidth = 3;
    octx.strokeStyle = "#f39c12";
    octx.stroke();
  }

  // ----------------------------------------------------------------------------------------
  // Panel

  function el(tag, text, parent, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(x) { return (x >= 0 ? "+" : "") + Number(x).toPrecision(4); }

  function hint() {
    panel.textContent = "";
    el("p", "Hover over a node to see it; click to pin it and light the paths through it " +
      "(shift-click pins more); drag to pan, wheel to zoom.", panel, "muted").id = "hint";
  }

  function edgeTable(title, edges, other) {
    el("h3", title + " (" + edges.length + ")", panel);
    if (!edges.length) { el("p", "none", panel, "muted"); return; }
    const table = el("table", null, panel);
    const sorted = edges.slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight));
    sorted.slice(0, 25).forEach(function (e) {
      const tr = el("tr", null, table);
      const td = el("td", e[other], tr, "edge");
      td.addEventListener("click", function () { pin(e[other], false); });
      el("td", fmt(e.weight), tr, "num");
    });
    if (sorted.length > 25) el("p", "\u2026 and " + (sorted.length - 25) + " more", panel, "muted");
  }

  function dashboard(d) {
    el("h3", "Dashboard", panel);
    if (d.label) el("p", d.label, panel).className = "dash-label";
    if (Array.isArray(d.contexts) && d.contexts.length) {
      el("h4", "Top contexts", panel);
      d.contexts.forEach(function (ctx) {
        const acts = ctx.activations || [], top = Math.max(0, ...acts) || 1;
        const div = el("div", null, panel, "ctx");
        (ctx.tokens || []).forEach(function (tok, i) {
          const a = acts[i] || 0, span = el("span", tok, div);
          span.title = String(a);
          if (a > 0) span.style.background = "rgba(33,102,172," + (a / top * 0.8).toFixed(3) + ")";
        });
      });
    }
    if (d.histogram && Array.isArray(d.histogram.counts) && d.histogram.counts.length) {
      el("h4", "Activations", panel);
      const counts = d.histogram.counts, peak = Math.max(...counts) || 1;
      const box = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      box.setAttribute("width", 300); box.setAttribute("height", 60);
      box.setAttribute("class", "histogram");
      panel.appendChild(box);
      counts.forEach(function (c, i) {
        const r = document.createElementNS("http://www.w3.org/2000/svg", "rect"), h = 56 * c / peak;
        const bw = 300 / counts.length;
        [["x", i * bw], ["y", 58 - h], ["width", Math.max(bw - 1, 1)], ["height", h],
         ["class", "bar"]].forEach(kv => r.setAttribute(kv[0], kv[1]));
        box.appendChild(r);
      });
      const edges = d.histogram.edges || [];
      if (edges.length) el("div", Number(edges[0]).toPrecision(3) + " \u2026 " +
        Number(edges[edges.length - 1]).toPrecision(3), panel, "muted");
    }
    [["promoted", "Promoted tokens"], ["suppressed", "Suppressed tokens"]].forEach(function (kv) {
      const rows = d[kv[0]];
      if (!Array.isArray(rows) || !rows.length) return;
      el("h4", kv[1], panel);
      const table = el("table", null, panel);
      rows.forEach(function (r) {
        const tr = el("tr", null, table);
        el("td", JSON.stringify(r.token), tr);
        el("td", fmt(r.value), tr, "num");
      });
    });
  }

  function show(id) {
    const n = G.byId.get(id);
    if (!n) { hint(); return; }
    panel.textContent = "";
    el("h2", n.members ? n.label : n.id, panel).id = "panel-name";
    const table = el("table", null, panel), b = n.base || {};
    [["kind", n.kind], ["submodule", b.submodule], ["position", n.position],
     ["effect", fmt(n.effect)], ["label", !n.members && n.label !== n.id ? n.label : null],
     ["annotation", b.annotation]].forEach(function (row) {
      if (row[1] === null || row[1] === undefined) return;
      const tr = el("tr", null, table);
      el("td", row[0], tr, "muted");
      el("td", String(row[1]), tr).className = "field-" + row[0];
    });
    if (n.members) {
      el("h3", "Members (" + n.members.length + ")", panel);
      const members = el("table", null, panel);
      members.id = "members";
      n.members.forEach(function (m) {
        const tr = el("tr", null, members);
        el("td", m.name, tr);
        el("td", fmt(m.effect), tr, "num");
      });
      const button = el("button", "ungroup", panel);
      button.id = "ungroup";
      button.addEventListener("click", function () { ungroup(n.label); });
    }
    edgeTable("Incoming edges", G.inE.get(id), "source");
    edgeTable("Outgoing edges", G.outE.get(id), "target");
    if (b.dashboard) dashboard(b.dashboard);
  }

  function showCurrent() {
    const last = [...state.pinned].pop();
    if (state.hovered) show(state.hovered); else if (last) show(last); else hint();
  }

  function updateCounts() {
    const base = G.nodes.reduce((s, n) => s + (n.members ? n.members.length :
      n.id === OUTPUT ? 0 : 1), 0);
    $("counts").textContent = base + " of " + ranked.length + " nodes" +
      (state.groups.length ? " (" + G.nodes.filter(n => n.members).length + " supernodes)" : "") +
      ", " + G.edges.length + " edges";
    $("node-threshold-value").textContent = state.kept + " (|effect| \u2265 " +
      nodeThreshold().toPrecision(3) + ")";
    const notes = DATA.note ? [DATA.note] : [];
    if (state.kept < ranked.length) {
      notes.push("showing the " + state.kept + " strongest of " + ranked.length + " nodes" +
        (state.kept === opened ? " so that labels are readable" : "") +
        "; move the nodes slider to see more");
    }
    $("note").textContent = notes.join("; ");
  }

  // ----------------------------------------------------------------------------------------
  // Interaction

  function toLayout(cx, cy) {
    const v = state.view;
    return [(cx - v.x) / v.scale, (cy - v.y) / v.scale];
  }

  function hit(cx, cy) {
    // The node under the screen point: per line of nodes near it, a binary search by x.
    const [x, y] = toLayout(cx, cy);
    let best = null, distance = Infinity;
    G.lines.forEach(function (list, lineY) {
      const dy = y - lineY;
      if (dy > NODE_H / 2 || dy < -NODE_H / 2 - 8 || Math.abs(dy) >= distance) return;
      let lo = 0, hi = list.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (list[mid].x + NODE_W / 2 < x) lo = mid + 1; else hi = mid;
      }
      if (Math.abs(list[lo].x - x) <= NODE_W / 2) { best = list[lo]; distance = Math.abs(dy); }
    });
    return best;
  }

  function matches(n, query) {
    return n.id.toLowerCase().includes(query) || String(n.label).toLowerCase().includes(query);
  }

  function hover(id) {
    if (id === state.hovered) return;
    const started = performance.now();
    state.hovered = id;
    drawOverlay();
    showCurrent();
    timing.lastHover = performance.now() - started;
  }

  function pin(id, add) {
    if (!add) state.pinned.clear();
    if (id !== null) {
      if (add && state.pinned.has(id)) state.pinned.delete(id); else state.pinned.add(id);
    }
    G.through = pinnedPaths(G.nodes, G.edges);
    if (state.onlyPinned) { rebuild(); fit(); } else draw();
    showCurrent();
  }

  function centre(id) {
    const n = G.byId.get(id);
    if (!n) return;
    const v = state.view;
    v.scale = Math.max(v.scale, 1);
    v.x = wrap.clientWidth / 2 - n.x * v.scale;
    v.y = wrap.clientHeight / 2 - n.y * v.scale;
    draw();
  }

  function group(name, members) {
    name = name.trim();
    if (!name) throw new Error("a supernode needs a name");
    const taken = new Set(members);
    state.groups = state.groups.map(g => ({name: g.name,
      members: g.members.filter(m => !taken.has(m))}))
      .filter(g => g.members.length && g.name !== name);
    state.groups.push({name: name, members: members});
    state.pinned.clear();
    relayout();
  }

  function ungroup(name) {
    state.groups = state.groups.filter(g => g.name !== name);
    state.pinned.clear();
    state.hovered = null;
    relayout();
  }

  function groupPinned() {
    const members = [];
    state.pinned.forEach(function (id) {
      const n = G.byId.get(id);
      if (n) (n.members ? n.members.map(m => m.name) : [n.id]).forEach(m => members.push(m));
    });
    const real = members.filter(m => m !== OUTPUT);
    if (real.length < 2) { $("message").textContent = "pin two or more nodes to group them"; return; }
    group($("group-name").value || "group " + (state.groups.length + 1), real);
  }

  function groupByLabel() {
    const byLabel = new Map();
    nodes.forEach(function (n) {
      if (n.name === OUTPUT || n.label === n.name) return;
      if (!byLabel.has(n.label)) byLabel.set(n.label, []);
      byLabel.get(n.label).push(n.name);
    });
    const grouped = new Set(state.groups.flatMap(g => g.members));
    byLabel.forEach(function (members, label) {
      const free = members.filter(m => !grouped.has(m));
      if (free.length > 1 && !state.groups.some(g => g.name === label)) {
        state.groups.push({name: label, members: free});
      }
    });
    relayout();
  }

  function grouping() {
    return {format: "circuits.supernodes", version: 1, circuit: DATA.title,
      supernodes: state.groups.map(g => ({name: g.name, members: g.members.slice()}))};
  }

  function saveGrouping() {
    const blob = new Blob([JSON.stringify(grouping(), null, 1)], {type: "application/json"});
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "supernodes.json";
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  function loadGrouping(text) {
    let data;
    try { data = JSON.parse(text); } catch (error) { data = null; }
    const ok = data && data.format === "circuits.supernodes" && Array.isArray(data.supernodes) &&
      data.supernodes.every(g => g && typeof g.name === "string" && Array.isArray(g.members));
    if (!ok) { $("message").textContent = "not a supernodes file (save one with the button)"; return; }
    const unknown = data.supernodes.flatMap(g => g.members).filter(m => !byName.has(m));
    state.groups = data.supernodes.map(g => ({name: g.name,
      members: g.members.filter(m => byName.has(m) && m !== OUTPUT)}))
      .filter(g => g.members.length);
    $("message").textContent = unknown.length ? unknown.length + " members not in this circuit " +
      "were left out" : "";
    relayout();
  }

  function relayout() { rebuild(); fit(); showCurrent(); }

  function bind() {
    let drag = null;
    wrap.addEventListener("mousedown", function (e) {
      drag = {x: e.clientX, y: e.clientY, moved: false};
      wrap.focus();
    });
    window.addEventListener("mousemove", function (e) {
      const r = wrap.getBoundingClientRect();
      if (drag) {
        const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
        if (drag.moved || Math.abs(dx) + Math.abs(dy) > 3) {
          drag.moved = true;
          wrap.classList.add("dragging");
          drag.x = e.clientX; drag.y = e.clientY;
          pan(dx, dy);
          return;
        }
      }
      const inside = e.clientX >= r.left && e.clientX < r.right && e.clientY >= r.top &&
        e.clientY < r.bottom;
      if (!inside) return;  // the panel keeps what it shows while the pointer is on it
      const n = hit(e.clientX - r.left, e.clientY - r.top);
      hover(n ? n.id : null);
    });
    window.addEventListener("mouseup", function (e) {
      if (!drag) return;
      const moved = drag.moved;
      drag = null;
      wrap.classList.remove("dragging");
      if (moved) return;
      const r = wrap.getBoundingClientRect();
      const n = hit(e.clientX - r.left, e.clientY - r.top);
      pin(n ? n.id : null, e.shiftKey || e.ctrlKey || e.metaKey);
    });
    wrap.addEventListener("wheel", function (e) {
      e.preventDefault();
      const r = wrap.getBoundingClientRect();
      zoom(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
    }, {passive: false});
    document.addEventListener("keydown", function (e) {
      if (e.target.tagName === "INPUT") return;
      const w = wrap.clientWidth, h = wrap.clientHeight;
      const keys = {"+": () => zoom(1.25, w / 2, h / 2), "=": () => zoom(1.25, w / 2, h / 2),
        "-": () => zoom(0.8, w / 2, h / 2), "0": fit, "f": fit,
        ArrowLeft: () => pan(60, 0), ArrowRight: () => pan(-60, 0),
        ArrowUp: () => pan(0, 60), ArrowDown: () => pan(0, -60),
        Escape: () => pin(null, false)};
      if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
    });
    window.addEventListener("resize", function () { size(); draw(); });
    const count = $("node-count");
    count.max = Math.max(1, ranked.length);
    count.addEventListener("input", function () {
      state.kept = Number(count.value);
      relayout();
    });
    $("edge-threshold").addEventListener("input", function (e) {
      const v = Number(e.target.value);
      state.edgeThreshold = v === 0 ? 0 : maxWeight * Math.pow(10, -4 * (1 - v / 1000));
      $("edge-threshold-value").textContent = state.edgeThreshold.toPrecision(3);
      relayout();
    });
    $("edge-share").addEventListener("input", function (e) {
      state.edgeShare = Number(e.target.value) / 100;
      $("edge-share-value").textContent = e.target.value + "%";
      relayout();
    });
    $("search").addEventListener("input", function (e) {
      state.search = e.target.value;
      draw();
    });
    $("search").addEventListener("keydown", function (e) {
      const query = state.search.toLowerCase();
      const found = query && G.nodes.find(n => matches(n, query));
      if (e.key === "Enter" && found) { pin(found.id, false); centre(found.id); }
    });
    $("fit").addEventListener("click", fit);
    $("only-pinned").addEventListener("change", function (e) {
      state.onlyPinned = e.target.checked;
      relayout();
    });
    $("group-pinned").addEventListener("click", groupPinned);
    $("group-labels").addEventListener("click", groupByLabel);
    $("save-groups").addEventListener("click", saveGrouping);
    $("load-button").addEventListener("click", () => $("load-groups").click());
    $("load-groups").addEventListener("change", function (e) {
      const file = e.target.files[0];
      if (file) file.text().then(loadGrouping);
    });
  }

  // ----------------------------------------------------------------------------------------
  // Start: keep as many nodes as stay readable when fitted, say so, fit.

  bind();
  rebuild();  // the controls' text in place, so the canvas has its final size
  size();
  opened = readableCount();
  state.kept = opened;
  $("node-count").value = state.kept;
  rebuild();
  fit();
  const match = /^#node=(.+)$/.exec(window.location.hash);
  if (match) {
    const id = decodeURIComponent(match[1]);
    if (byName.has(id) && !G.byId.has(id)) { state.kept = ranked.length; relayout(); }
    pin(id, false);
    centre(id);
  } else {
    hint();
  }
  window.explorer = {
    state: () => ({scale: state.view.scale, x: state.view.x, y: state.view.y,
      fontPx: FONT * state.view.scale, width: G.width, height: G.height, kept: state.kept,
      shown: G.nodes.map(n => n.id), edges: G.edges.length, pinned: [...state.pinned],
      hovered: state.hovered, through: G.through ? [...G.through] : null,
      groups: grouping().supernodes, timing: Object.assign({}, timing)}),
    screen: function (id) {
      const n = G.byId.get(id), r = wrap.getBoundingClientRect(), v = state.view;
      return n ? [r.left + v.x + n.x * v.scale, r.top + v.y + n.y * v.scale] : null;
    },
    layout: () => G.nodes.map(n => ({id: n.id, x: n.x, y: n.y})),
    grouping: grouping,
  };
  document.body.setAttribute("data-ready", "true");
})();

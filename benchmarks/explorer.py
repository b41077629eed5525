"""How fast the explorer page answers in headless Chromium, against circuit size.

Run ``python benchmarks/explorer.py`` (needs Debian's ``chromium``; about a minute). It prints a
markdown table. Circuits are `tests/conftest.py`'s ``big_circuit``: ``rows`` residual rows of
``per_row`` nodes, each wired to ``fan`` nodes of the next row (2,000 nodes and 20,000 edges at
the largest). Per circuit, in a 1,280 x 800 window:

- page size: the HTML file;
- first paint: from the start of navigation to the end of the first drawing of the canvas
  (``performance.now()`` in the page, whose origin is the navigation start);
- opened with: how many of the strongest nodes the page shows so that its fitted labels stay
  readable (9 px), and the label height;
- re-layout: the slider moved to show every node: rebuilding the shown graph (supernodes,
  edge sums and filters) and its layout, then one full redraw;
- hover: with every node shown, the pointer moved onto a node: the handler's time (hit test,
  the node's edges drawn over the rest, the panel filled), the median of 20 nodes;
- redraw: one pan by the arrow key, with every node shown (every edge and node drawn again).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from browser import chromium  # noqa: E402
from conftest import big_circuit  # noqa: E402

from viz.explorer import write_explorer  # noqa: E402

SIZES = [(10, 20, 5), (10, 100, 10), (10, 200, 11)]


def measure(page, path: Path, nodes: int) -> dict:
    page.open(path.as_uri())
    opened = page.evaluate("window.explorer.state()")
    row = {
        "first paint ms": opened["timing"]["firstPaint"],
        "opened with": f"{opened['kept']} nodes, {opened['fontPx']:.1f} px",
    }
    page.evaluate(
        "(() => { const s = document.getElementById('node-count'); s.value = s.max;"
        " window.__t = performance.now(); s.dispatchEvent(new Event('input'));"
        " window.__relayout = performance.now() - window.__t; })()"
    )
    row["re-layout ms"] = page.evaluate("window.__relayout")
    everything = page.evaluate("window.explorer.state()")
    assert len(everything["shown"]) == nodes + 1, "not every node is shown"
    hovers = []
    for name in everything["shown"][1:21]:
        x, y = page.evaluate(f"window.explorer.screen({name!r})")
        page.mouse("mouseMoved", x, y)
        view = page.evaluate("window.explorer.state()")
        assert view["hovered"] == name, f"hover on {name} missed"
        hovers.append(view["timing"]["lastHover"])
        page.mouse("mouseMoved", 2, 2)
    row["hover ms"] = statistics.median(hovers)
    row["redraw ms"] = page.evaluate(
        "(() => { const t = performance.now(); document.dispatchEvent(new KeyboardEvent("
        "'keydown', {key: 'ArrowLeft'})); return performance.now() - t; })()"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, chromium(1280, 800) as page:
        for n_rows, per_row, fan in SIZES:
            circuit = big_circuit(rows=n_rows, per_row=per_row, fan=fan)
            path = write_explorer(circuit, Path(tmp) / f"{per_row}.html")
            row = {"nodes": circuit.num_nodes, "edges": circuit.num_edges,
                   "page KiB": path.stat().st_size / 1024}  # fmt: skip
            row.update(measure(page, path, circuit.num_nodes))
            rows.append(row)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "|".join(" ---: " for _ in keys) + "|")
    for row in rows:
        cells = [
            v if isinstance(v, str) else f"{v:,.0f}" if abs(v) >= 10 else f"{v:.2f}"
            for v in row.values()
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The explorer page: its structure and inline data always; its behaviour in headless Chromium.

Browser tests drive Chromium over the DevTools protocol (``websocket-client``, which nnsight
already needs) and skip with the reason when Chromium or the client is missing.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import shutil
import subprocess
import threading
import time
import urllib.request
import zlib

import pytest
from conftest import small_circuit

from circuits.cli import main
from circuits.graph import Circuit
from viz.explorer import explorer_data, explorer_html, script_json, write_explorer

EVIL = "ends </script><script>window.__pwned = 1</script><!-- & \u2028 done"
DASHBOARD = {
    "label": "plural nouns",
    "contexts": [{"tokens": ["the", " teachers", " are"], "activations": [0.0, 2.0, 0.5]}],
    "histogram": {"edges": [0.0, 1.0, 2.0, 3.0], "counts": [5, 2, 1]},
    "promoted": [{"token": " are", "value": 1.5}],
    "suppressed": [{"token": " is", "value": -1.2}],
}


def positional_circuit() -> Circuit:
    effects = {"embed/3@0": 0.2, "attn_0/5@1": -0.4, "mlp_0/ε@1": 0.3, "resid_0/7@2": 1.0}
    edges = {
        ("embed/3@0", "attn_0/5@1"): 0.1,
        ("attn_0/5@1", "resid_0/7@2"): -0.3,
        ("mlp_0/ε@1", "resid_0/7@2"): 0.2,
        ("resid_0/7@2", "y"): 1.0,
    }
    return Circuit.from_effects(effects, edges)


def payload(page: str) -> dict:
    match = re.search(
        r'<script type="application/json" id="circuit-data">(.*?)</script>', page, re.S
    )
    assert match, "no inline data"
    return json.loads(match[1])


# ------------------------------------------------------------------------------------------------
# Structure and payload


def test_page_is_self_contained_and_holds_the_circuit():
    circuit = small_circuit()
    page = explorer_html(circuit, title="sva <rc>")
    assert page.startswith("<!DOCTYPE html>") and "<title>sva &lt;rc&gt;</title>" in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert not re.search(r"<(link|img|iframe)\b|\bsrc=|@import|fetch\(|XMLHttpRequest", page)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg"}
    data = payload(page)
    assert {node["name"] for node in data["nodes"]} == set(circuit.graph)
    edges = {(e["source"], e["target"]): e["weight"] for e in data["edges"]}
    assert edges == circuit.edge_weights()
    nodes = {node["name"]: node for node in data["nodes"]}
    assert nodes["resid_0/7"]["effect"] == 1.0 and nodes["mlp_0/ε"]["kind"] == "error"
    assert nodes["resid_0/7"]["fill"] == "#2166ac"
    # Layered: each row above the one before it (smaller y), y on top.
    order = ["embed/3", "attn_0/5", "mlp_0/ε", "resid_0/7", "resid_1/2", "y"]
    heights = [nodes[name]["y"] for name in order]
    assert heights == sorted(heights, reverse=True) and len(set(heights)) == len(heights)
    assert [row["name"] for row in data["rows"]] == [
        "embed",
        "attn_0",
        "mlp_0",
        "resid_0",
        "resid_1",
        "y",
    ]


def test_inline_data_cannot_end_the_script():
    page = explorer_html(small_circuit(), annotations={"resid_0/7": EVIL})
    assert page.count("</script>") == 2 and "<!--" not in page and "\u2028" not in page
    nodes = {node["name"]: node for node in payload(page)["nodes"]}
    assert nodes["resid_0/7"]["annotation"] == EVIL
    assert json.loads(script_json({"a": "</script>&"})) == {"a": "</script>&"}
    with pytest.raises(ValueError, match="plain, finite JSON"):
        explorer_html(small_circuit(), dashboards={"resid_0/7": {"label": float("nan")}})


def test_positions_tokens_dashboards_and_cap():
    circuit = positional_circuit()
    data = explorer_data(
        circuit,
        tokens=["<bos>", "the", "cat", "sat"],
        dashboards={"resid_0/7": DASHBOARD},
        annotations={"attn_0/5": "near"},
    )
    nodes = {node["name"]: node for node in data["nodes"]}
    assert nodes["resid_0/7@2"]["dashboard"] == DASHBOARD  # position-free key applies
    assert nodes["attn_0/5@1"]["label"] == "near" and nodes["embed/3@0"]["dashboard"] is None
    columns = {col["position"]: col for col in data["columns"]}
    assert [columns[p]["token"] for p in range(4)] == ["<bos>", "the", "cat", "sat"]
    assert nodes["attn_0/5@1"]["x"] == pytest.approx(nodes["mlp_0/ε@1"]["x"])
    assert nodes["embed/3@0"]["x"] < nodes["attn_0/5@1"]["x"] < nodes["resid_0/7@2"]["x"]
    with pytest.raises(ValueError, match="keeps no positions"):
        explorer_data(small_circuit(), tokens=["a"])
    capped = explorer_data(small_circuit(), max_nodes=2)
    assert "3 of 5 nodes not shown" in capped["note"] and len(capped["nodes"]) == 3


def test_explore_cli(tmp_path, capsys):
    path = small_circuit().save(tmp_path / "c.json")
    dashboards = tmp_path / "dash.json"
    dashboards.write_text(json.dumps({"resid_0/7": DASHBOARD}))
    out = tmp_path / "c.html"
    args = ["explore", str(path), "-o", str(out), "--dashboards", str(dashboards)]
    assert main(args + ["--title", "t"]) == 0
    assert "wrote" in capsys.readouterr().out
    nodes = {node["name"]: node for node in payload(out.read_text(encoding="utf-8"))["nodes"]}
    assert nodes["resid_0/7"]["dashboard"]["label"] == "plural nouns"
    assert main(["explore", str(path), "-o", str(out), "--tokens", "a b"]) == 2
    assert "keeps no positions" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# In a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_colours(data: bytes) -> set[tuple[int, ...]]:
    """The distinct pixel values of an 8-bit, non-interlaced PNG (a small decoder)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            depth, colour, interlace = body[8], body[9], body[12]
        elif kind == b"IDAT":
            idat += body
    assert depth == 8 and interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    raw, stride = zlib.decompress(idat), width * channels
    previous, colours, i = bytearray(stride), set(), 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = previous[x]
            c = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + pred) & 255
        colours.update(bytes(line[x : x + channels]) for x in range(0, stride, channels))
        previous = line
    return {tuple(colour) for colour in colours}


class Page:
    """One Chromium tab driven over the DevTools protocol."""

    def __init__(self, url: str):
        import websocket

        self.ws = websocket.create_connection(url, timeout=20, suppress_origin=True)
        self.calls = 0
        self.events: list[dict] = []

    def call(self, method: str, **params):
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 15.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return
            time.sleep(0.05)
        raise TimeoutError(f"waited {seconds} s for {expression}")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def open(self, url: str):
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("document.body && document.body.dataset.ready === 'true'")

    def click(self, selector: str):
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box[0],
                y=box[1],
                button="left",
                clickCount=1,
            )


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stderr], daemon=True
    ).start()
    try:
        deadline, endpoint = time.monotonic() + 30, None
        while endpoint is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            match = re.search(r"DevTools listening on ws://([^/]+)/", line)
            endpoint = match and match[1]
        if endpoint is None:
            pytest.skip("chromium started but did not open its DevTools port")
        with urllib.request.urlopen(f"http://{endpoint}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=1100,
            height=700,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield page
        page.ws.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture()
def page_file(tmp_path):
    path = write_explorer(
        small_circuit(),
        tmp_path / "circuit.html",
        annotations={"resid_0/7": EVIL},
        dashboards={"resid_0/7": DASHBOARD},
    )
    return path.as_uri()


def test_loads_without_errors_and_draws_something(browser, page_file):
    browser.open(page_file)
    assert browser.errors() == []
    assert browser.evaluate("document.querySelectorAll('#nodes .node').length") == 6
    assert browser.evaluate("document.querySelectorAll('#edges path').length") == 6
    assert browser.evaluate("window.__pwned === undefined")
    shot = browser.call(
        "Page.captureScreenshot",
        format="png",
        clip={"x": 0, "y": 0, "width": 1100, "height": 700, "scale": 0.1},
    )
    colours = png_colours(base64.b64decode(shot["data"]))
    assert len(colours) > 10, f"screenshot looks blank: {sorted(colours)[:5]}"


def test_click_shows_panel_and_highlights_paths(browser, page_file):
    browser.open(page_file)
    browser.click('.node[data-name="attn_0/5"]')
    assert browser.evaluate("document.getElementById('panel-name').textContent") == "attn_0/5"
    panel = browser.evaluate("document.getElementById('panel').textContent")
    assert "Incoming edges (1)" in panel and "embed/3" in panel and "-0.3000" in panel
    dimmed = browser.evaluate(
        "[...document.querySelectorAll('.node.dim')].map(n => n.dataset.name).sort()"
    )
    # Paths attn_0/5 -> resid_0/7 -> y and attn_0/5 -> resid_0/7 -> resid_1/2 -> y stay lit.
    assert dimmed == ["embed/3", "mlp_0/ε"]
    assert browser.evaluate("document.querySelectorAll('#edges path.dim').length") == 2
    browser.click('.node[data-name="resid_0/7"]')
    assert browser.evaluate("document.querySelector('.field-annotation').textContent") == EVIL
    panel = browser.evaluate("document.getElementById('panel').textContent")
    assert "plural nouns" in panel and "Promoted tokens" in panel and '" are"' in panel
    assert browser.evaluate("document.querySelectorAll('.histogram rect').length") == 3
    browser.click("#background")
    assert browser.evaluate("document.querySelectorAll('.dim').length") == 0
    assert browser.evaluate("document.getElementById('panel-name')") is None
    assert browser.errors() == []


def test_slider_filters_nodes_and_deep_link_selects(browser, page_file):
    browser.open(page_file + "#node=resid_1%2F2")
    assert browser.evaluate("document.getElementById('panel-name').textContent") == "resid_1/2"
    browser.evaluate(
        "(() => { const s = document.getElementById('node-threshold'); s.value = 500;"
        " s.dispatchEvent(new Event('input')); })()"
    )
    hidden = browser.evaluate(
        "[...document.querySelectorAll('.node.hidden')].map(n => n.dataset.name).sort()"
    )
    assert hidden == ["attn_0/5", "embed/3", "mlp_0/ε"]  # |effect| < 0.5
    assert browser.evaluate("document.getElementById('counts').textContent").startswith("2 of 5")
    assert browser.errors() == []

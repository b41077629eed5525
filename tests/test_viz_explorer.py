"""The explorer page: its structure and inline data always; its behaviour in headless Chromium.

Browser tests drive Chromium over the DevTools protocol (`tests/browser.py`) and skip with the
reason when Chromium or the websocket client is missing.
"""

from __future__ import annotations

import json
import re
import time

import networkx as nx
import pytest
from browser import BrowserMissing, chromium, png_colours
from conftest import big_circuit, small_circuit

from circuits.cli import main
from circuits.graph import Circuit
from viz.diagram import strongest_incoming
from viz.explorer import (
    explorer_data,
    explorer_html,
    read_supernodes,
    script_json,
    write_explorer,
)

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
    names = [node["name"] for node in data["nodes"]]
    edges = {(names[s], names[t]): w for s, t, w in data["edges"]}
    assert edges == circuit.edge_weights()
    nodes = {node["name"]: node for node in data["nodes"]}
    assert nodes["resid_0/7"]["effect"] == 1.0 and nodes["mlp_0/ε"]["kind"] == "error"
    order = ["embed/3", "attn_0/5", "mlp_0/ε", "resid_0/7", "resid_1/2", "y"]
    assert [nodes[name]["row"] for name in order] == [0, 1, 2, 3, 4, 5]
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
    assert [nodes[n]["position"] for n in ("embed/3@0", "mlp_0/ε@1", "resid_0/7@2")] == [0, 1, 2]
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


def test_supernodes_are_checked_and_carried(tmp_path, capsys):
    circuit = small_circuit()
    groups = [{"name": "early", "members": ["embed/3", "attn_0/5"]}]
    data = explorer_data(circuit, supernodes=groups)
    assert data["supernodes"] == groups
    with pytest.raises(ValueError, match=r"not nodes of this circuit: \['mlp_9/1'\]"):
        explorer_data(circuit, supernodes=[{"name": "x", "members": ["mlp_9/1"]}])
    for bad in ("early", {"name": "x"}, {"name": "", "members": ["embed/3"]}):
        with pytest.raises(ValueError, match="a supernode is"):
            explorer_data(circuit, supernodes=[bad])
    with pytest.raises(ValueError, match="is in supernodes 'a' and 'b'"):
        explorer_data(
            circuit,
            supernodes=[
                {"name": "a", "members": ["embed/3"]},
                {"name": "b", "members": ["embed/3"]},
            ],
        )
    saved = tmp_path / "supernodes.json"
    saved.write_text(json.dumps({"format": "circuits.supernodes", "supernodes": groups}))
    assert read_supernodes(saved) == groups
    for bad in ("{", "[]", '{"format": "circuits.supernodes", "supernodes": [{"name": 1}]}'):
        saved.write_text(bad)
        with pytest.raises(ValueError, match="supernodes"):
            read_supernodes(saved)
    path = circuit.save(tmp_path / "c.json")
    out = tmp_path / "c.html"
    assert main(["explore", str(path), "-o", str(out), "--supernodes", str(saved)]) == 2
    assert "save supernodes" in capsys.readouterr().err and not out.exists()
    saved.write_text(json.dumps({"format": "circuits.supernodes", "supernodes": groups}))
    assert main(["explore", str(path), "-o", str(out), "--supernodes", str(saved)]) == 0
    assert payload(out.read_text(encoding="utf-8"))["supernodes"] == groups


# ------------------------------------------------------------------------------------------------
# In a browser


@pytest.fixture(scope="module")
def browser():
    try:
        with chromium(1100, 700) as page:
            yield page
    except BrowserMissing as missing:
        pytest.skip(str(missing))


def state(browser) -> dict:
    return browser.evaluate("window.explorer.state()")


def at(browser, name: str) -> tuple[float, float]:
    """Where node ``name`` is on the screen."""
    point = browser.evaluate(f"window.explorer.screen({json.dumps(name)})")
    assert point is not None, f"{name} is not drawn"
    return point[0], point[1]


def canvas_box(browser) -> dict:
    return browser.evaluate(
        "(() => { const r = document.getElementById('canvas').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
    )


def set_slider(browser, element: str, value: float):
    browser.evaluate(
        f"(() => {{ const s = document.getElementById({json.dumps(element)}); s.value = {value};"
        " s.dispatchEvent(new Event('input')); })()"
    )


def assert_fitted_and_readable(browser):
    view, box = state(browser), canvas_box(browser)
    assert view["fontPx"] >= 9, f"labels {view['fontPx']:.1f} px high when the page opens"
    assert view["x"] >= -1 and view["x"] + view["width"] * view["scale"] <= box["width"] + 1
    assert view["y"] >= -1 and view["y"] + view["height"] * view["scale"] <= box["height"] + 1


@pytest.fixture()
def page_file(tmp_path):
    path = write_explorer(
        small_circuit(),
        tmp_path / "circuit.html",
        annotations={"resid_0/7": EVIL},
        dashboards={"resid_0/7": DASHBOARD},
    )
    return path.as_uri()


def test_opens_fitted_readable_and_draws(browser, page_file):
    browser.open(page_file)
    assert browser.errors() == []
    view = state(browser)
    assert sorted(view["shown"]) == sorted(small_circuit().graph) and view["edges"] == 6
    assert_fitted_and_readable(browser)
    assert browser.evaluate("window.__pwned === undefined")
    colours = png_colours(browser.screenshot(1100, 700, 0.1))
    assert len(colours) > 10, f"screenshot looks blank: {sorted(colours)[:5]}"
    layout = {n["id"]: n for n in browser.evaluate("window.explorer.layout()")}
    order = ["embed/3", "attn_0/5", "mlp_0/ε", "resid_0/7", "resid_1/2", "y"]
    heights = [layout[name]["y"] for name in order]  # embed at the bottom, y on top
    assert heights == sorted(heights, reverse=True) and len(set(heights)) == len(heights)


def test_hover_shows_the_panel_and_a_click_pins_the_paths_through_a_node(browser, page_file):
    browser.open(page_file)
    browser.mouse("mouseMoved", *at(browser, "attn_0/5"))
    assert browser.evaluate("document.getElementById('panel-name').textContent") == "attn_0/5"
    assert state(browser)["hovered"] == "attn_0/5"
    panel = browser.evaluate("document.getElementById('panel').textContent")
    assert "Incoming edges (1)" in panel and "embed/3" in panel and "-0.3000" in panel
    browser.click_at(*at(browser, "attn_0/5"))
    # Through attn_0/5: its ancestor embed/3, and resid_0/7 -> resid_1/2 -> y after it.
    assert sorted(state(browser)["through"]) == [
        "attn_0/5",
        "embed/3",
        "resid_0/7",
        "resid_1/2",
        "y",
    ]
    browser.click_at(*at(browser, "mlp_0/ε"), shift=True)
    assert sorted(state(browser)["pinned"]) == ["attn_0/5", "mlp_0/ε"]
    assert "mlp_0/ε" in state(browser)["through"]
    browser.click_at(*at(browser, "resid_0/7"))
    assert state(browser)["pinned"] == ["resid_0/7"]
    assert browser.evaluate("document.querySelector('.field-annotation').textContent") == EVIL
    panel = browser.evaluate("document.getElementById('panel').textContent")
    assert "plural nouns" in panel and "Promoted tokens" in panel and '" are"' in panel
    assert browser.evaluate("document.querySelectorAll('.histogram rect').length") == 3
    box = canvas_box(browser)
    browser.click_at(box["x"] + 5, box["y"] + box["height"] - 5)  # the background
    assert state(browser)["pinned"] == [] and state(browser)["through"] is None
    assert browser.errors() == []


def test_wheel_zooms_drag_pans_keys_fit(browser, page_file):
    browser.open(page_file)
    before = state(browser)
    x, y = at(browser, "resid_0/7")
    browser.mouse("mouseWheel", x, y, deltaX=0, deltaY=-300)
    zoomed = state(browser)
    assert zoomed["scale"] > before["scale"] * 1.3
    assert at(browser, "resid_0/7") == pytest.approx((x, y), abs=1)  # zoomed about the pointer
    browser.mouse("mousePressed", x, y, button="left", clickCount=1)
    browser.mouse("mouseMoved", x + 80, y + 30, button="left")
    browser.mouse("mouseReleased", x + 80, y + 30, button="left", clickCount=1)
    assert at(browser, "resid_0/7") == pytest.approx((x + 80, y + 30), abs=1)
    assert state(browser)["pinned"] == []  # a drag is not a click
    browser.call("Input.dispatchKeyEvent", type="keyDown", key="0", text="0")
    assert state(browser)["scale"] == pytest.approx(before["scale"])
    assert browser.errors() == []


def test_filters_lay_the_circuit_out_again(browser, tmp_path):
    circuit = big_circuit(rows=6, per_row=40, fan=4)
    browser.open(write_explorer(circuit, tmp_path / "big.html").as_uri())
    assert_fitted_and_readable(browser)
    opened = state(browser)
    assert opened["kept"] < 240 and "so that labels are readable" in browser.evaluate(
        "document.getElementById('note').textContent"
    )
    set_slider(browser, "node-count", 240)
    everything = state(browser)
    assert len(everything["shown"]) == 241 and everything["width"] > opened["width"]
    set_slider(browser, "node-count", 12)
    few = state(browser)
    ranked = sorted(circuit.graph.nodes, key=lambda n: -abs(circuit.effect(n)) if n != "y" else 0)
    assert sorted(few["shown"]) == sorted(ranked[:12] + ["y"])
    assert few["width"] < everything["width"]
    assert_fitted_and_readable(browser)
    # The share filter keeps what viz.diagram.strongest_incoming keeps among the shown nodes.
    set_slider(browser, "node-count", 240)
    set_slider(browser, "edge-share", 50)
    graph = nx.DiGraph((u, v, {"weight": w}) for u, v, w in circuit.graph.edges(data="weight"))
    assert state(browser)["edges"] == len(strongest_incoming(graph, 0.5))
    assert browser.errors() == []


def test_supernodes_sum_their_members_and_save(browser, tmp_path):
    circuit = small_circuit()
    annotations = {"embed/3": "early", "attn_0/5": "early"}
    page = write_explorer(circuit, tmp_path / "c.html", annotations=annotations)
    browser.open(page.as_uri())
    browser.click("#group-labels")
    view = state(browser)
    assert view["groups"] == [{"name": "early", "members": ["embed/3", "attn_0/5"]}]
    assert "supernode:early" in view["shown"] and "embed/3" not in view["shown"]
    browser.mouse("mouseMoved", *at(browser, "supernode:early"))
    panel = browser.evaluate("document.getElementById('panel').textContent")
    effect = circuit.effect("embed/3") + circuit.effect("attn_0/5")
    assert f"{effect:+.4g}" in panel and "Members (2)" in panel
    # its edge to resid_0/7 is attn_0/5's; embed/3 -> attn_0/5 is inside the supernode
    assert "-0.3000" in panel and view["edges"] == 5
    browser.click("#ungroup")
    assert state(browser)["groups"] == []
    # The user's own grouping: pin two nodes, name it, group, save, load it back in Python.
    browser.click_at(*at(browser, "resid_0/7"))
    browser.click_at(*at(browser, "resid_1/2"), shift=True)
    browser.evaluate("document.getElementById('group-name').value = 'late'")
    browser.click("#group-pinned")
    assert state(browser)["groups"] == [{"name": "late", "members": ["resid_0/7", "resid_1/2"]}]
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    browser.click("#save-groups")
    saved = downloads / "supernodes.json"
    deadline = time.monotonic() + 15
    while not (saved.exists() and saved.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.05)
    groups = read_supernodes(saved)
    assert groups == [{"name": "late", "members": ["resid_0/7", "resid_1/2"]}]
    reopened = write_explorer(circuit, tmp_path / "again.html", supernodes=groups)
    browser.open(reopened.as_uri())
    assert "supernode:late" in state(browser)["shown"]
    assert browser.errors() == []


def test_search_pins_and_the_deep_link_selects(browser, page_file):
    browser.open(page_file + "#node=resid_1%2F2")
    assert state(browser)["pinned"] == ["resid_1/2"]
    assert browser.evaluate("document.getElementById('panel-name').textContent") == "resid_1/2"
    browser.evaluate(
        "(() => { const s = document.getElementById('search'); s.value = 'attn';"
        " s.dispatchEvent(new Event('input'));"
        " s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'})); })()"
    )
    assert state(browser)["pinned"] == ["attn_0/5"]
    assert browser.errors() == []


def test_two_thousand_nodes_open_readable_and_answer_a_hover(browser, tmp_path):
    circuit = big_circuit(rows=10, per_row=200, fan=11)  # 2,000 nodes, 20,000 edges
    assert (circuit.num_nodes, circuit.num_edges) == (2000, 20000)
    browser.open(write_explorer(circuit, tmp_path / "big.html").as_uri())
    assert_fitted_and_readable(browser)
    set_slider(browser, "node-count", 2000)
    view = state(browser)
    assert len(view["shown"]) == 2001 and view["edges"] == 20000
    target = view["shown"][0] if view["shown"][0] != "y" else view["shown"][1]
    browser.mouse("mouseMoved", *at(browser, target))
    assert state(browser)["hovered"] == target
    assert browser.errors() == []

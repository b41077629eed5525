"""`compare` and ``circuits compare``: every method scored by one evaluator.

Truths used here: each row is rebuilt independently — top-k curves from `node_effects` scored by
a fresh `Evaluator`, masks trained by `train_mask` with the same settings and scored the same
way — and CPR/CMD are recomputed with the trapezoid rule by hand.
"""

from __future__ import annotations

import json

import pytest
from conftest import PAIRS, WIDTHS, random_saes

from attribution import node_effects
from circuits.cli import main
from circuits.compare import METHODS, Comparison, MethodCurve, compare
from circuits.dictionaries import load_dictionaries
from circuits.evaluate import CurvePoint, Evaluator
from circuits.models import load_model
from masks import train_mask

SIZES = (2, 6)
FAST = {"sizes": SIZES, "ig_steps": 3, "mask_steps": 15, "batch_size": 5, "progress": False}


@pytest.fixture(scope="module")
def neox(tiny_model_dir):
    return load_model(tiny_model_dir("gpt_neox"))


@pytest.fixture(scope="module")
def node_sets(neox):
    return {"features": random_saes(neox, WIDTHS), "neurons": load_dictionaries(neox, "neurons")}


@pytest.fixture(scope="module")
def comparison(neox, node_sets):
    return compare(neox, node_sets, PAIRS, **FAST)


def test_rows_are_the_methods_rebuilt_independently(neox, node_sets, comparison):
    assert [(c.nodes, c.method) for c in comparison.curves] == [
        (nodes, method) for nodes in ("features", "neurons") for method in METHODS
    ]
    for curve in comparison.curves:
        dictionaries = node_sets[curve.nodes]
        evaluator = Evaluator(neox, dictionaries, PAIRS, batch_size=5)
        if curve.method in ("atp", "ig"):
            effects = node_effects(
                neox, dictionaries, PAIRS, method=curve.method, steps=3, batch_size=5,
                progress=False,
            ).nodes()  # fmt: skip
            expected = [(p.size, p.faithfulness, p.completeness) for p in evaluator.curve(
                effects, sizes=SIZES
            )]  # fmt: skip
        else:
            expected = []
            for k in SIZES:
                mask = train_mask(
                    neox, dictionaries, PAIRS, parametrisation=curve.method, size=k, steps=15,
                    batch_size=5, progress=False,
                )  # fmt: skip
                result = evaluator.evaluate(mask.nodes)
                expected.append((k, result.faithfulness, result.completeness))
        got = [(p.size, p.faithfulness, p.completeness) for p in curve.points]
        assert [g[0] for g in got] == list(SIZES)
        flat = [value for point in expected for value in point]
        assert [v for point in got for v in point] == pytest.approx(flat, abs=1e-6), curve.method
        assert curve.seconds > 0


def test_areas_and_smallest_faithful_size():
    points = (
        CurvePoint(size=10, fraction=0.1, faithfulness=0.2, completeness=0.5),
        CurvePoint(size=20, fraction=0.2, faithfulness=0.95, completeness=0.1),
        CurvePoint(size=40, fraction=0.4, faithfulness=1.1, completeness=0.0),
    )
    curve = MethodCurve("features", "ig", points, 1.0)
    assert curve.cpr == pytest.approx(0.1 * (0.2 + 0.95) / 2 + 0.2 * (0.95 + 1.1) / 2)
    assert curve.cmd == pytest.approx(0.1 * (0.8 + 0.05) / 2 + 0.2 * (0.05 + 0.1) / 2)
    assert curve.smallest_faithful == 20
    single = MethodCurve("features", "atp", points[:1], 1.0)
    assert single.smallest_faithful is None and single.cpr is None and single.cmd is None
    table = Comparison((curve,), (10, 20, 40), {}).table()
    assert "| features | ig | 0.200 | 0.950 | 1.100 | 2.62e-01 | 5.75e-02 | 20 | 1 |" in table
    assert "| — | — | — | 1 |" in Comparison((single,), (10,), {}).table()


def test_table_json_and_plot(comparison, tmp_path):
    table = comparison.table()
    assert table.count("| features |") == 2 * len(METHODS)  # faithfulness and completeness
    record = comparison.to_dict()
    assert record["sizes"] == list(SIZES)
    assert record["settings"]["n_find"] == record["settings"]["n_eval"] == len(PAIRS)
    assert len(record["curves"]) == 2 * len(METHODS)
    files = comparison.save(tmp_path / "out", title="tiny", settings={"task": "pairs"})
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files["table"].read_text() == f"tiny\n\n{table}\n"
    saved = json.loads(files["json"].read_text())
    assert saved["settings"]["task"] == "pairs" and saved["curves"] == json.loads(
        json.dumps(record["curves"])
    )


def test_sizes_past_a_node_set_are_left_out(neox, node_sets):
    n_neurons = sum(d.width + 1 for d in node_sets["neurons"].values())
    n_features = sum(d.width + 1 for d in node_sets["features"].values())
    assert n_neurons < n_features
    sizes = (2, n_neurons + 1)
    options = {**FAST, "sizes": sizes, "methods": ["atp"]}
    comparison = compare(neox, node_sets, PAIRS, **options)
    features, neurons = comparison.curves
    assert [p.size for p in features.points] == list(sizes)
    assert [p.size for p in neurons.points] == [2] and neurons.cpr is None
    assert f"| neurons | atp | {neurons.points[0].faithfulness:.3f} | — |" in comparison.table()


def test_bad_inputs(neox, node_sets):
    with pytest.raises(ValueError, match="unknown method"):
        compare(neox, node_sets, PAIRS, methods=["magic"], **FAST)
    with pytest.raises(ValueError, match="increasing positive integers"):
        compare(neox, node_sets, PAIRS, **{**FAST, "sizes": (6, 2)})
    with pytest.raises(ValueError, match="every size exceeds"):
        compare(neox, node_sets, PAIRS, **{**FAST, "sizes": (10**6,)})
    with pytest.raises(ValueError, match="node set"):
        compare(neox, {}, PAIRS, **FAST)


def test_cli_compare_writes_table_json_and_plot(tiny_model_dir, sae_dir, tmp_path, capsys):
    task = tmp_path / "pairs.jsonl"
    task.write_text(
        "".join(
            json.dumps({k: v for k, v in vars(p).items() if v is not None}) + "\n" for p in PAIRS
        )  # fmt: skip
    )
    out = tmp_path / "cmp"
    argv = [
        "compare", "--task", str(task), "--model", str(tiny_model_dir("gpt_neox")),
        "--dictionaries", str(sae_dir), "--sizes", "2", "4", "--methods", "atp", "sigmoid",
        "--mask-steps", "10", "--batch-size", "5", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| features | atp |" in text and "| neurons | sigmoid |" in text
    record = json.loads((out / "comparison.json").read_text())
    assert record["settings"]["eval_split"] == "test" and len(record["curves"]) == 4
    assert (out / "comparison.md").read_text().count("| neurons |") == 4
    assert (out / "comparison.png").stat().st_size > 0

"""`compare` and ``circuits compare``: every method scored by one evaluator.

Truths used here: each row is rebuilt independently — top-k curves from `node_effects` scored by
a fresh `Evaluator`, masks trained by `train_mask` with the same settings and scored the same
way — and CPR/CMD are recomputed with the trapezoid rule by hand. A run resumed from a cut-short
rows file must equal the uninterrupted run exactly and compute only the rows it lacked.
"""

from __future__ import annotations

import json

import pytest
from conftest import PAIRS, WIDTHS, random_saes

import circuits.compare
from attribution import node_effects
from circuits.cli import main
from circuits.compare import METHODS, Comparison, MethodCurve, compare, plan
from circuits.dictionaries import load_dictionaries
from circuits.evaluate import CurvePoint, Evaluator
from circuits.models import load_model
from masks import train_mask

SIZES = (2, 6)
FAST = {"sizes": SIZES, "ig_steps": 3, "mask_steps": 15, "batch_size": 5, "progress": False}
PLAN = {k: v for k, v in FAST.items() if k != "progress"}


@pytest.fixture(scope="module")
def neox(tiny_model_dir):
    return load_model(tiny_model_dir("gpt_neox"))


@pytest.fixture(scope="module")
def node_sets(neox):
    return {"features": random_saes(neox, WIDTHS), "neurons": load_dictionaries(neox, "neurons")}


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory):
    """The rows file of the uninterrupted `comparison`."""
    return tmp_path_factory.mktemp("rows") / "run" / "rows.jsonl"


@pytest.fixture(scope="module")
def comparison(neox, node_sets, rows_file):
    return compare(neox, node_sets, PAIRS, **FAST, rows=rows_file)


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
    the_plan = plan(neox, node_sets, PAIRS, **{**PLAN, "sizes": sizes, "methods": ["atp"]})
    assert the_plan.keys == (
        ("features", "atp", 2),
        ("features", "atp", sizes[1]),
        ("neurons", "atp", 2),
    )
    assert f"sizes 2, {sizes[1]} (neurons: k > {n_neurons} left out); 3 to compute" in (
        the_plan.describe()
    )


def test_bad_inputs(neox, node_sets):
    with pytest.raises(ValueError, match="unknown method"):
        compare(neox, node_sets, PAIRS, methods=["magic"], **FAST)
    with pytest.raises(ValueError, match="increasing positive integers"):
        compare(neox, node_sets, PAIRS, **{**FAST, "sizes": (6, 2)})
    with pytest.raises(ValueError, match="every size exceeds"):
        compare(neox, node_sets, PAIRS, **{**FAST, "sizes": (10**6,)})
    with pytest.raises(ValueError, match="node set"):
        compare(neox, {}, PAIRS, **FAST)


@pytest.fixture
def cli_argv(tiny_model_dir, sae_dir, tmp_path):
    """``circuits compare`` over `PAIRS` in a file: 8 rows; append ``--out DIR``."""
    task = tmp_path / "pairs.jsonl"
    task.write_text(
        "".join(
            json.dumps({k: v for k, v in vars(p).items() if v is not None}) + "\n" for p in PAIRS
        )  # fmt: skip
    )
    return [
        "compare", "--task", str(task), "--model", str(tiny_model_dir("gpt_neox")),
        "--dictionaries", str(sae_dir), "--sizes", "2", "4", "--methods", "atp", "sigmoid",
        "--mask-steps", "10", "--batch-size", "5", "--no-progress",
    ]  # fmt: skip


def test_cli_compare_writes_table_json_and_plot(cli_argv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([*cli_argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "| features | atp |" in text and "| neurons | sigmoid |" in text
    assert captured.err.startswith("plan: 8 rows: node sets features (279 nodes), neurons")
    assert "methods atp, sigmoid; sizes 2, 4; 0 done in" in captured.err
    record = json.loads((out / "comparison.json").read_text())
    assert record["settings"]["eval_split"] == "test" and len(record["curves"]) == 4
    assert (out / "comparison.md").read_text().count("| neurons |") == 4
    assert (out / "comparison.png").stat().st_size > 0
    assert len((out / "rows.jsonl").read_text().splitlines()) == 1 + 8

    table, png = (out / "comparison.md").read_text(), (out / "comparison.png").read_bytes()
    assert main([*cli_argv, "--out", str(out)]) == 0
    assert "; 8 done in" in capsys.readouterr().err
    assert (out / "comparison.md").read_text() == table
    assert (out / "comparison.png").read_bytes() == png
    again = json.loads((out / "comparison.json").read_text())
    del record["settings"]["wall_time_s"], again["settings"]["wall_time_s"]
    assert again == record


def test_cli_compare_interrupted_says_what_is_saved(cli_argv, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cmp"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(circuits.compare, "train_mask", interrupt)
    assert main([*cli_argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        f"interrupted: 2 of 8 rows saved in {out / 'rows.jsonl'}; rerun the same command to resume"
    )
    monkeypatch.setattr(circuits.compare, "train_mask", train_mask)
    assert main([*cli_argv, "--out", str(out)]) == 0
    assert "; 2 done in" in capsys.readouterr().err


KEYS = [
    (nodes, method, k) for nodes in ("features", "neurons") for method in METHODS for k in SIZES
]


def _without_seconds(comparison):
    record = comparison.to_dict()
    for curve in record["curves"]:
        del curve["seconds"]
    return record


@pytest.fixture
def calls(monkeypatch):
    """Counts of the attribution passes, masks and top-k scorings `compare` runs."""
    counts = {"node_effects": 0, "train_mask": 0, "curve": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(circuits.compare, "node_effects", counted("node_effects", node_effects))
    monkeypatch.setattr(circuits.compare, "train_mask", counted("train_mask", train_mask))
    monkeypatch.setattr(Evaluator, "curve", counted("curve", Evaluator.curve))
    return counts


def test_rows_file_holds_every_row_after_a_header(comparison, rows_file):
    header, *rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert header["schema"] == "circuits.compare.rows" and header["version"] == 1
    assert header["settings"]["sizes"] == list(SIZES) and header["settings"]["seed"] == 0
    assert [(r["nodes"], r["method"], r["k"]) for r in rows] == KEYS
    assert comparison.computed == tuple(KEYS)
    points = [vars(p) for c in comparison.curves for p in c.points]
    assert [r["point"] for r in rows] == points


def test_a_cut_short_run_resumes_to_the_same_result(
    neox, node_sets, comparison, rows_file, tmp_path, calls
):
    lines = rows_file.read_bytes().splitlines(keepends=True)
    kept = 1 + 9  # the header, features' 8 rows and neurons' atp k=2; atp k=6 is cut mid-line
    cut = tmp_path / "rows.jsonl"
    cut.write_bytes(b"".join(lines[:kept]) + lines[kept][: len(lines[kept]) // 2])
    the_plan = plan(neox, node_sets, PAIRS, **PLAN, rows=cut)
    assert len(the_plan.finished) == 9 and the_plan.missing == tuple(KEYS[9:])
    assert the_plan.describe().endswith(f"9 done in {cut}, 7 to compute")

    resumed = compare(neox, node_sets, PAIRS, **FAST, rows=cut)
    assert resumed.computed == tuple(KEYS[9:])
    assert calls == {"node_effects": 2, "train_mask": 4, "curve": 3}  # neurons' atp k=2 kept
    assert [c.points for c in resumed.curves] == [c.points for c in comparison.curves]
    assert _without_seconds(resumed) == _without_seconds(comparison)
    assert [c.seconds for c in resumed.curves[:4]] == [c.seconds for c in comparison.curves[:4]]
    assert cut.read_bytes().startswith(b"".join(lines[:kept]))
    assert len(cut.read_text().splitlines()) == 1 + len(KEYS)

    again = compare(neox, node_sets, PAIRS, **FAST, rows=cut)
    assert again.computed == () and calls["train_mask"] == 4
    assert again == resumed and again.table() == resumed.table()
    assert again.to_dict() == resumed.to_dict()


def test_an_interrupted_run_keeps_its_finished_rows(neox, node_sets, comparison, tmp_path):
    features = {"features": node_sets["features"]}
    options = {**PLAN, "methods": ["atp", "sigmoid"], "rows": tmp_path / "rows.jsonl"}
    trained = []

    def interrupted(*args, **kwargs):
        if trained:
            raise KeyboardInterrupt
        trained.append(kwargs["size"])
        return train_mask(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(circuits.compare, "train_mask", interrupted)
        with pytest.raises(KeyboardInterrupt):
            compare(neox, features, PAIRS, **options, progress=False)
    done = [("features", "atp", 2), ("features", "atp", 6), ("features", "sigmoid", 2)]
    saved = plan(neox, features, PAIRS, **options)
    assert list(saved.finished) == done and saved.missing == (("features", "sigmoid", 6),)

    resumed = compare(neox, features, PAIRS, **options, progress=False)
    assert resumed.computed == (("features", "sigmoid", 6),)
    expected = [c.points for c in comparison.curves if c.nodes == "features"]
    assert [c.points for c in resumed.curves] == [expected[0], expected[3]]


def test_a_rows_file_of_other_settings_is_refused(neox, node_sets, tmp_path):
    features = {"features": node_sets["features"]}
    rows = tmp_path / "rows.jsonl"
    options = {**FAST, "methods": ["atp"], "sizes": (2,), "rows": rows}
    compare(neox, features, PAIRS, **options)
    before = rows.read_bytes()
    with pytest.raises(ValueError, match=r"other settings \(seed differ\).*delete"):
        compare(neox, features, PAIRS, **{**options, "seed": 1})
    with pytest.raises(ValueError, match=r"\(eval_pairs, find_pairs differ\)"):
        compare(neox, features, PAIRS[:4], **options)
    with pytest.raises(ValueError, match=r"\(node_sets differ\)"):
        compare(neox, {"features": random_saes(neox, WIDTHS, seed=1)}, PAIRS, **options)
    with pytest.raises(ValueError, match=r"\(model differ\)"):
        compare(neox, features, PAIRS, **options, model_name="another")
    assert rows.read_bytes() == before
    other = tmp_path / "notes.jsonl"
    other.write_text('{"note": 1}\n')
    with pytest.raises(ValueError, match="not a rows file"):
        compare(neox, features, PAIRS, **{**options, "rows": other})


def test_lines_cut_short_are_dropped_and_broken_ones_refused(neox, node_sets, tmp_path):
    features = {"features": node_sets["features"]}
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"schema": "circuits.compare.ro')
    options = {**FAST, "methods": ["atp"], "rows": rows}
    first = compare(neox, features, PAIRS, **options)
    assert first.computed == (("features", "atp", 2), ("features", "atp", 6))
    complete = rows.read_bytes()
    assert json.loads(complete.splitlines()[0])["schema"] == "circuits.compare.rows"

    rows.write_bytes(complete + b'{"nodes": "feat\x00\x00\n')
    assert compare(neox, features, PAIRS, **options) == first
    assert rows.read_bytes() == complete
    header, row, last = complete.splitlines(keepends=True)
    rows.write_bytes(header + b"not a row\n" + last)
    with pytest.raises(ValueError, match="line 2 of .* is not a row; delete"):
        compare(neox, features, PAIRS, **options)

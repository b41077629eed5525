"""SHIFT on the shipped zoo's bios: the measured margins of docs/shift.md, asserted."""

import pytest

import circuits
from circuits.shift import shift
from circuits.tasks import read_texts


@pytest.fixture(scope="module")
def report():
    model = circuits.load_model("zoo")
    dictionaries = circuits.load_dictionaries(model, "zoo")
    return shift(
        model, dictionaries, read_texts("bios", "ambiguous"), read_texts("bios", "balanced")
    )


def test_the_original_probe_is_confounded_and_shift_removes_it(report):
    worst = {row.name: row.worst_group_accuracy for row in report.rows}
    gender = {row.name: row.attribute_accuracy for row in report.rows}
    assert worst["Original"] < 0.2  # measured 0.139: the probe follows gender
    assert gender["Original"] > 0.85  # measured 0.889
    # measured 0.147: ablating as many random features does not help
    assert abs(worst["Random"] - worst["Original"]) < 0.05
    assert worst["SHIFT"] > worst["Original"] + 0.4  # measured 0.882
    # measured 0.976 and 1.000: SHIFT + retrain reaches 0.9 of the oracle's worst group
    assert worst["SHIFT + retrain"] >= 0.9 * worst["Oracle"]
    assert worst["Oracle"] > 0.95  # profession is readable without gender
    assert gender["SHIFT + retrain"] < 0.6  # measured 0.508: the probe no longer tracks gender
    assert worst["Neuron skyline"] < worst["SHIFT + retrain"] - 0.3  # measured 0.659

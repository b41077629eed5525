"""SHIFT on the shipped zoo's bios: the measured margins of docs/shift.md, asserted."""

import pytest

import circuits
from circuits.shift import shift
from circuits.tasks import read_texts
from circuits.zoo import language

PRONOUNS = "he she his her him himself herself man woman"


@pytest.fixture(scope="module")
def zoo():
    model = circuits.load_model("zoo")
    return model, circuits.load_dictionaries(model, "zoo")


def run(zoo, **options):
    model, dictionaries = zoo
    texts = read_texts("bios", "ambiguous"), read_texts("bios", "balanced")
    return shift(model, dictionaries, *texts, **options)


def rows(report) -> tuple[dict, dict]:
    worst = {row.name: row.worst_group_accuracy for row in report.rows}
    gender = {row.name: row.attribute_accuracy for row in report.rows}
    return worst, gender


def test_the_label_rule_removes_the_confound(zoo):
    worst, gender = rows(run(zoo, selection="labels", spurious="gender: " + PRONOUNS))
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


def test_the_label_free_judge_and_its_controls(zoo):
    names = " ".join(language.NAMES)
    report = run(zoo, spurious=f"gender: {PRONOUNS} {names}")
    worst, gender = rows(report)
    assert report.settings["selection"] == "concept-tokens"
    assert all(v.peak_share >= 0.5 for v in report.verdicts if v.about)
    assert worst["SHIFT + retrain"] > worst["Original"] + 0.3  # measured 0.639
    # The controls do as well or better: the gender words are all there is to gender here.
    assert worst["Embed features (judge) + retrain"] > 0.85  # measured 0.944
    assert worst["Concept tokens deleted + retrain"] > 0.95  # measured 1.000
    assert gender["Concept tokens deleted + retrain"] < 0.6  # measured 0.502

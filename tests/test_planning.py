"""Batch-size planning (`circuits.planning`): measured peaks, and runs that keep the promise."""

from __future__ import annotations

import pytest
import torch

from attribution import node_effects
from circuits import load_model
from circuits.dictionaries import load_dictionaries
from circuits.planning import _reset_rss_peak, parse_size, peak_bytes, plan_batch_size
from circuits.tasks import load_task

MIB = 2**20
measurable = pytest.mark.skipif(
    not _reset_rss_peak(), reason="peak memory is not measurable here (/proc/self/clear_refs)"
)


def test_sizes_read_decimal_and_binary_units():
    assert parse_size("4GiB") == 4 * 2**30
    assert parse_size("512 MB") == 512 * 10**6
    assert parse_size("2e9") == 2 * 10**9
    for bad in ("lots", "-1GB", "3 parsecs", "0"):
        with pytest.raises(ValueError, match="memory size"):
            parse_size(bad)


@measurable
def test_the_peak_of_a_known_allocation():
    def allocate():
        block = torch.ones(64 * MIB // 4)  # 64 MiB of float32, touched
        return float(block[-1])

    peak, result = peak_bytes(allocate)
    assert result == 1.0 and 60 * MIB <= peak <= 100 * MIB


@measurable
def test_the_plan_of_work_whose_memory_is_known():
    # 40 MiB per example of a batch, batch after batch. Every block is above glibc's largest
    # mmap threshold (32 MiB), so it is mapped and unmapped whole: its peak does not depend on
    # how earlier tests left the heap.
    def run(batch, examples):
        for _ in range(max(1, examples // batch)):
            block = torch.ones(batch * 10 * MIB)  # float32: 40 MiB per example
            del block

    plan = plan_batch_size(run, 1000 * MIB)  # 800 MiB allowed: 20 examples at most
    assert 15 <= plan.batch_size <= 20
    assert plan.predicted <= 800 * MIB
    assert peak_bytes(lambda: run(plan.batch_size, 100))[0] <= 1000 * MIB
    with pytest.raises(ValueError, match="raise the budget"):
        plan_batch_size(run, 40 * MIB)


@measurable
def test_attribution_over_10000_pairs_stays_within_the_planned_budget():
    model = load_model("zoo")
    dictionaries = load_dictionaries(model, "zoo")
    pairs = list(load_task("sva-rc", split="train").pairs)
    many = (pairs * (10_000 // len(pairs) + 1))[:10_000]
    longest = sorted(pairs, key=lambda p: -len(model.tokenize([p.clean_prefix]).input_ids[0]))

    def run(batch, examples):
        return node_effects(
            model, dictionaries, (longest * examples)[:examples], method="atp",
            batch_size=batch, progress=False,
        )  # fmt: skip

    budget = 200 * MIB
    plan = plan_batch_size(run, budget)
    assert plan.batch_size >= 8
    peak, effects = peak_bytes(
        lambda: node_effects(
            model, dictionaries, many, method="atp", batch_size=plan.batch_size, progress=False
        )
    )
    assert effects.n_examples == 10_000
    assert peak <= budget, f"{peak / MIB:.0f} MiB over the {budget / MIB:.0f} MiB budget"


@measurable
def test_the_commands_plan_or_say_what_is_missing(tmp_path, capsys):
    from circuits.cli import main

    out = str(tmp_path / "c")
    base = ["discover", "--task", "sva-rc", "--n", "32", "--out", out, "--no-progress"]
    assert main([*base, "--memory-budget", "1GiB"]) == 2
    assert "--batch-size auto" in capsys.readouterr().err
    assert main([*base, "--batch-size", "auto"]) == 2
    assert "needs --memory-budget" in capsys.readouterr().err
    assert main([*base, "--batch-size", "auto", "--memory-budget", "400MiB"]) == 0
    assert "planned batch size" in capsys.readouterr().err

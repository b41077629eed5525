"""Data parallelism: `torchrun --nproc_per_node 2` (gloo, CPU) against one process, on the zoo.

The two runs must agree on every node effect, edge weight and score up to float reassociation;
a command that does not split its work refuses to run under torchrun.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from circuits.graph import Circuit

CIRCUITS = Path(sys.executable).with_name("circuits")
TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(
    not (CIRCUITS.exists() and TORCHRUN.exists()), reason="needs the circuits and torchrun scripts"
)


def run(argv: list[str], processes: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if processes == 1:
        command = [str(CIRCUITS), *argv]
    else:
        command = [str(TORCHRUN), "--nproc_per_node", str(processes), "--", str(CIRCUITS), *argv]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_find_and_score_the_same_circuit(tmp_path):
    common = ["--task", "sva-rc", "--n", "24", "--batch-size", "8", "--method", "atp",
              "--threads", "1", "--no-progress"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    for out, processes in ((one, 1), (two, 2)):
        done = run(["discover", *common, "--out", str(out)], processes)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = Circuit.load(one / "circuit.json"), Circuit.load(two / "circuit.json")
    assert set(a.graph) == set(b.graph) and a.num_nodes > 20
    for node in a.graph:
        if node != "y":
            assert b.effect(node) == pytest.approx(a.effect(node), rel=1e-5, abs=1e-7)
    weights_a, weights_b = a.edge_weights(), b.edge_weights()
    assert set(weights_a) == set(weights_b) and weights_a
    for edge, weight in weights_a.items():
        assert weights_b[edge] == pytest.approx(weight, rel=1e-5, abs=1e-7)

    evaluate = ["evaluate", str(one / "circuit.json"), "--task", "sva-rc", "--n", "24",
                "--batch-size", "8", "--sizes", "5", "20", "50", "--json", "--threads", "1",
                "--no-progress"]  # fmt: skip
    runs = [run(evaluate, processes) for processes in (1, 2)]
    assert all(done.returncode == 0 for done in runs), runs[1].stderr[-3000:]
    scores = [json.loads(done.stdout) for done in runs]
    flat = [_numbers(s) for s in scores]
    assert len(flat[0]) == len(flat[1]) > 3
    assert flat[1] == pytest.approx(flat[0], rel=1e-6, abs=1e-9)


def test_two_processes_plan_one_batch_size_for_both(tmp_path):
    common = ["--task", "sva-rc", "--n", "24", "--method", "atp", "--threads", "1",
              "--no-progress"]  # fmt: skip
    planned = run(["discover", *common, "--batch-size", "auto", "--memory-budget", "300MiB",
                   "--out", str(tmp_path / "two")], 2)  # fmt: skip
    assert planned.returncode == 0, planned.stderr[-3000:]
    size = re.search(r"planned batch size (\d+)", planned.stderr)
    assert size and planned.stderr.count("planned batch size") == 1  # rank 0 says it
    one = run(["discover", *common, "--batch-size", size[1], "--out", str(tmp_path / "one")], 1)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (Circuit.load(tmp_path / name / "circuit.json") for name in ("one", "two"))
    assert set(a.graph) == set(b.graph)
    for node in a.graph:
        if node != "y":
            assert b.effect(node) == pytest.approx(a.effect(node), rel=1e-5, abs=1e-7)


def test_two_processes_train_the_same_dictionaries(tmp_path):
    # A 32-document forward reads 4,096 tokens: buffers of 10,000 take three, split between the
    # processes, and 100 steps of 128 tokens refill them once. The 64 held-out documents are
    # two batches, one for each process.
    common = ["train-dictionaries", "--submodules", "embed", "mlp_1", "--width", "64", "--k", "4",
              "--steps", "100", "--batch-size", "128", "--buffer-tokens", "10000",
              "--eval-docs", "64", "--threads", "1", "--no-progress"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    for out, processes in ((one, 1), (two, 2)):
        done = run([*common, "--out", str(out)], processes)
        assert done.returncode == 0, done.stderr[-3000:]
    for folder in ("embed", "mlp_out_layer1"):
        a = torch.load(one / folder / "ae.pt", weights_only=True)
        b = torch.load(two / folder / "ae.pt", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        metrics = [json.loads((out / folder / "metrics.json").read_text()) for out in (one, two)]
        assert metrics[0].keys() == metrics[1].keys()
        assert _numbers(metrics[1]) == pytest.approx(_numbers(metrics[0]), rel=1e-9, abs=1e-12)


def test_commands_that_do_not_split_their_work_refuse_torchrun(tmp_path):
    done = run(["shift", "--json"], 2)
    assert done.returncode != 0  # each rank exits 2; torchrun reports the failure
    assert "`circuits shift` does not run distributed" in done.stderr


def _numbers(data) -> list[float]:
    """Every number in a JSON value, in order."""
    if isinstance(data, bool) or data is None or isinstance(data, str):
        return []
    if isinstance(data, (int, float)):
        return [float(data)]
    items = data.values() if isinstance(data, dict) else data
    return [x for item in items for x in _numbers(item)]

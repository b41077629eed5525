"""Atomic writes: concurrent writers and readers, planted links, interrupted writes."""

from __future__ import annotations

import json
import os
import threading

import pytest
from conftest import small_circuit

from circuits.files import replacing, write_text
from circuits.graph import Circuit


def test_concurrent_writers_never_show_a_reader_a_partial_file(tmp_path):
    path = tmp_path / "circuit.json"
    circuits = []
    for i in range(4):
        circuit = small_circuit()
        circuit.provenance["writer"] = i
        circuits.append(circuit)
    circuits[0].save(path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(circuit):
        try:
            for _ in range(50):
                circuit.save(path)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    def read():
        seen = set()
        while not stop.is_set():
            try:
                seen.add(Circuit.load(path).provenance["writer"])
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)
                return
        assert seen

    writers = [threading.Thread(target=write, args=(c,)) for c in circuits]
    reader = threading.Thread(target=read)
    reader.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert not errors, errors[:3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["circuit.json"]


def test_a_link_planted_at_a_temporary_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = tmp_path / "circuit.json"
    for name in ("circuit.json.partial", "circuit.json.tmp", ".circuit.json.partial"):
        (tmp_path / name).symlink_to(victim)
    small_circuit().save(path)
    assert victim.read_text() == "keep me"
    assert Circuit.load(path).provenance["model"] == "tiny"


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path = tmp_path / "out.txt"
    path.symlink_to(victim)
    write_text(path, "new")
    assert victim.read_text() == "keep me"
    assert not path.is_symlink() and path.read_text() == "new"


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "metrics.json"
    write_text(path, json.dumps({"old": True}))
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_permissions_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640

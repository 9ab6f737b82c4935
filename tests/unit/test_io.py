"""spos.io: a write either replaces the file whole or leaves the old one, never half."""

from __future__ import annotations

import json
import stat

import pytest

from spos.io import atomic_write_bytes, atomic_write_text, write_json


def test_text_and_json_writes_replace_the_file_and_create_parents(tmp_path):
    path = tmp_path / "a" / "b" / "file.json"
    write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1} and path.read_text().endswith("}\n")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["file.json"]


def test_a_failing_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "weights.bin"
    atomic_write_bytes(path, b"old")

    def half_then_fail(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_json_files_never_hold_non_finite_numbers(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"tau": float("nan"), "loss": [1.0, float("inf")], "ok": 2.5, "n": (1, -float("inf"))})
    assert json.loads(path.read_text()) == {"tau": None, "loss": [1.0, None], "ok": 2.5, "n": [1, None]}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()

"""Tests of jakiro.common.io: atomic writes keep the old file on failure and clean up temporaries."""

import pytest

from jakiro.common.io import atomic_write, atomic_write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_write_keeps_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_text(path, "old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / ".out.json.12345.tmp").write_text("left by a killed run")
    (tmp_path / ".other.json.1.tmp").write_text("another file's temporary: kept")
    atomic_write_text(tmp_path / "out.json", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.1.tmp", "out.json"]

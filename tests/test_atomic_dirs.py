"""Folders replaced whole (`sidecar.atomic.replacing_dir`): the trainer's resume state, kohya's tokenizer
cache and a dataset layout are read as they are, so a reader must find the old folder or the new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.atomic import replacing_dir


def test_a_folder_is_replaced_whole_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "spyke-state"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with replacing_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
        assert [p.name for p in target.iterdir()] == ["old.bin"]  # untouched until the block ends
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spyke-state"]


def test_a_failed_write_keeps_the_old_folder_and_removes_the_new(tmp_path: Path) -> None:
    target = tmp_path / "spyke-state"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(OSError), replacing_dir(target) as tmp:
        (tmp / "half.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert [p.name for p in target.iterdir()] == ["old.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spyke-state"]


def test_what_a_crashed_writer_left_is_cleared_by_the_next_write(tmp_path: Path) -> None:
    # A trainer killed mid-save leaves gigabytes under these fixed names; the next save reclaims them.
    (tmp_path / ".spyke-state.tmp").mkdir()
    (tmp_path / ".spyke-state.tmp" / "half.bin").write_bytes(b"half")
    (tmp_path / ".spyke-state.old").mkdir()
    with replacing_dir(tmp_path / "spyke-state") as tmp:
        assert list(tmp.iterdir()) == []
        (tmp / "state.pt").write_bytes(b"state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spyke-state"]

"""`sidecar serve` on a data dir that is not what it keeps there: one line naming the path and what to do,
exit 1, no traceback; and another program's SQLite file, or ours with a table gone, is never written."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.jobs.store import JobStore
from sidecar.sqlite_store import APPLICATION_ID
from tests.conftest_comfy import free_port
from tests.test_reliability import make_database


async def serve(tmp_path: Path, data: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "empty.toml"
    config.touch()
    # Attached to a ComfyUI that is not there: the checks come first, nothing else is reached.
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data), "--port", str(free_port()),
                         "--config", str(config), "--comfyui-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "sidecar starting" not in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("odd", ["data dir is a file", "sidecar.db is a folder", "outputs is a file",
                                 "logs is a file", "a file on the way"])
async def test_an_odd_data_dir_stops_serve_in_one_line_naming_the_path(tmp_path, odd) -> None:
    data = tmp_path / "data"
    culprit = {"data dir is a file": data, "sidecar.db is a folder": data / "sidecar.db",
               "outputs is a file": data / "outputs", "logs is a file": data / "logs",
               "a file on the way": tmp_path / "file"}[odd]
    culprit.parent.mkdir(parents=True, exist_ok=True)
    if odd == "sidecar.db is a folder":
        culprit.mkdir()
    else:
        culprit.write_text("not a folder\n")
    line = one_line(await serve(tmp_path, tmp_path / "file" / "data" if odd == "a file on the way" else data))
    assert str(culprit) in line and "data_dir_unusable" in line
    assert "mv " in line or "point data_dir" in line


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_another_program_s_database_is_refused_and_left_unwritten(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "sidecar.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
        conn.execute("INSERT INTO contacts VALUES ('ada', '123')")
    conn.close()
    before = digest(db)
    line = one_line(await serve(tmp_path, data))
    assert str(db) in line and "another program" in line
    assert db.read_bytes() and digest(db) == before
    with sqlite3.connect(db) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {"contacts"}
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    # Another program's mark (its own application_id) is refused too, even with a table named jobs.
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA application_id = 1234")
        conn.execute("CREATE TABLE jobs (x)")
    conn.close()
    before = digest(db)
    assert "another program" in one_line(await serve(tmp_path, data)) and digest(db) == before


async def test_our_database_with_its_jobs_table_dropped_is_refused_naming_it(tmp_path) -> None:
    data = tmp_path / "data"
    db = data / "sidecar.db"
    await make_database(db, jobs=2)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID  # marked as ours
        conn.execute("DROP TABLE jobs")
    conn.close()
    line = one_line(await serve(tmp_path, data))
    assert str(db) in line and "jobs table" in line
    with sqlite3.connect(db) as conn:
        assert "jobs" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()


async def test_a_database_from_before_the_mark_is_taken_and_marked(tmp_path) -> None:
    db = tmp_path / "sidecar.db"
    await make_database(db, jobs=2)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA application_id = 0")  # as every database was before
    conn.close()
    store = JobStore(db)
    await store.open()
    assert len(await store.list()) == 2
    await store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()


async def test_a_database_the_training_store_made_first_opens_for_the_jobs(tmp_path) -> None:
    """Either store may open a new data dir's database first (a run recorded before the daemon ever
    started): the other's tables are made then, not refused as lost."""
    from sidecar.training.store import TrainingStore

    db = tmp_path / "sidecar.db"
    training = TrainingStore(db)
    await training.open()
    await training.close()
    jobs = JobStore(db)
    await jobs.open()
    assert await jobs.list() == []
    await jobs.close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE jobs")  # and once made, a lost table is refused
    conn.close()
    with pytest.raises(Exception, match="lost its jobs table"):
        await JobStore(db).open()

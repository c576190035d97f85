"""SQLite persistence of training runs and their checkpoints (the daemon's database file, own tables).

Same database and access as the job store (`sidecar.sqlite_store`). A run row holds the resolved spec, where its
files are, status, progress, the trainer's process id (to find an orphan after a crash), a pending
resume point, warnings and the error; checkpoints are rows of their own. The allowed status
changes are listed here; the manager decides them.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from sidecar.errors import InvalidState
from sidecar.sqlite_store import SqliteStore, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS training_runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    engine TEXT NOT NULL,
    spec TEXT NOT NULL,
    work_dir TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    base_model TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    loss_smoothed REAL,
    final_file TEXT,
    pid INTEGER,
    device TEXT,
    resume_step INTEGER,
    resume_state TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]',
    error_code TEXT,
    error_message TEXT,
    error_details TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS training_runs_status ON training_runs(status);
-- A remote run's machine (sidecar.remote.state.RemoteState as JSON): its own table, so databases made
-- before remote training need no migration.
CREATE TABLE IF NOT EXISTS training_remote (
    run_id TEXT PRIMARY KEY,
    state TEXT NOT NULL
);
-- Images the trainer sampled while it trained (its own sampling), by step: a table of their own, so older
-- databases need no migration. `file` is relative to the run's output folder.
CREATE TABLE IF NOT EXISTS training_samples (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    file TEXT NOT NULL,
    PRIMARY KEY (run_id, file)
);
CREATE TABLE IF NOT EXISTS training_checkpoints (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    path TEXT NOT NULL,
    state_path TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
"""

JSON_COLUMNS = ("spec", "warnings", "error_details")

# Every allowed status change. `interrupted`: the daemon stopped while the run trained; a resume
# (or a cancel/failure with a saved state) goes back to `queued`.
TRANSITIONS: dict[str, set[str]] = {
    "queued": {"running", "cancelled", "failed"},
    "running": {"succeeded", "failed", "cancelled", "interrupted"},
    "interrupted": {"queued", "failed", "succeeded"},
    "cancelled": {"queued", "succeeded"},
    "failed": {"queued", "succeeded"},
    "succeeded": set(),
}


def check_transition(run_id: str, old: str, new: str) -> None:
    if new not in TRANSITIONS.get(old, set()):
        raise InvalidState(f"Training run {run_id} is {old}; it cannot become {new}.",
                           {"runId": run_id, "status": old, "requested": new})


@dataclass
class CheckpointRecord:
    run_id: str
    step: int
    path: str
    state_path: str | None = None
    created_at: str = field(default_factory=now_iso)


@dataclass
class RunRecord:
    id: str
    status: str
    engine: str
    spec: dict[str, Any]
    work_dir: str
    output_dir: str
    base_model: str
    created_at: str = field(default_factory=now_iso)
    step: int = 0
    total: int = 0
    loss: float | None = None
    loss_smoothed: float | None = None
    final_file: str | None = None
    pid: int | None = None
    device: str | None = None
    resume_step: int | None = None
    resume_state: str | None = None
    attempts: int = 0
    warnings: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    error_details: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    seq: int | None = None
    checkpoints: list[CheckpointRecord] = field(default_factory=list)
    remote: dict[str, Any] | None = None  # training_remote.state
    samples: dict[int, list[str]] = field(default_factory=dict)  # step -> files (relative to output_dir)


class TrainingStore(SqliteStore):
    schema = SCHEMA
    json_columns = JSON_COLUMNS

    def _run(self, row: sqlite3.Row) -> RunRecord:
        record = RunRecord(**self._decode(row))
        record.checkpoints = [
            CheckpointRecord(**dict(r))
            for r in self._exec("SELECT * FROM training_checkpoints WHERE run_id = ? ORDER BY step", (record.id,))
        ]
        remote = self._exec("SELECT state FROM training_remote WHERE run_id = ?", (record.id,))
        record.remote = json.loads(remote[0]["state"]) if remote else None
        for r in self._exec("SELECT step, file FROM training_samples WHERE run_id = ? ORDER BY step, file",
                            (record.id,)):
            record.samples.setdefault(r["step"], []).append(r["file"])
        return record

    def get_sync(self, run_id: str) -> RunRecord | None:
        rows = self._exec("SELECT * FROM training_runs WHERE id = ?", (run_id,))
        return self._run(rows[0]) if rows else None

    def _list(self, statuses: tuple[str, ...] | None, limit: int) -> list[RunRecord]:
        if statuses:
            marks = ", ".join("?" for _ in statuses)
            rows = self._exec(f"SELECT * FROM training_runs WHERE status IN ({marks}) ORDER BY seq DESC LIMIT ?",
                              (*statuses, limit))
        else:
            rows = self._exec("SELECT * FROM training_runs ORDER BY seq DESC LIMIT ?", (limit,))
        return [self._run(r) for r in rows]

    # -- async API
    async def insert(self, run: RunRecord) -> None:
        data = asdict(run)
        del data["seq"], data["checkpoints"], data["remote"], data["samples"]
        await self._insert("training_runs", data)

    async def update(self, run_id: str, **fields: Any) -> None:
        await self._update("training_runs", run_id, fields)

    async def add_checkpoint(self, ckpt: CheckpointRecord) -> None:
        await self._call(
            self._exec,
            "INSERT OR REPLACE INTO training_checkpoints (run_id, step, path, state_path, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (ckpt.run_id, ckpt.step, ckpt.path, ckpt.state_path, ckpt.created_at),
        )

    async def add_samples(self, run_id: str, samples: dict[int, list[str]]) -> None:
        rows = [(run_id, step, f) for step, names in samples.items() for f in names]
        await self._call(self._exec_many, "INSERT OR IGNORE INTO training_samples (run_id, step, file) "
                         "VALUES (?, ?, ?)", rows)

    def _exec_many(self, sql: str, rows: list[tuple]) -> None:
        for row in rows:
            self._exec(sql, row)

    async def set_remote(self, run_id: str, state: dict[str, Any]) -> None:
        await self._call(self._exec, "INSERT OR REPLACE INTO training_remote (run_id, state) VALUES (?, ?)",
                         (run_id, json.dumps(state)))

    async def get(self, run_id: str) -> RunRecord | None:
        return await self._call(self.get_sync, run_id)

    async def list(self, statuses: tuple[str, ...] | None = None, limit: int = 50) -> list[RunRecord]:
        return await self._call(self._list, statuses, limit)

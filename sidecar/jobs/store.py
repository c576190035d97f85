"""SQLite persistence of generation jobs (WAL, one connection, every call off the event loop).

A row keeps the request, the resolved params, the filled workflow, the backend's prompt id, status,
progress, output file, error and timestamps: enough to resume or reconcile after a restart. The
state machine lives in `states.py`; this module only stores what the runner decided.

Every call runs on one thread of the store's own, first come first served: a progress write the
runner did not wait for cannot land after a state change made later (with a pool of threads it
could). Each call is one autocommit statement: one transaction per state change.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    params TEXT NOT NULL,
    template TEXT,
    workflow TEXT NOT NULL,
    engine TEXT NOT NULL,
    device TEXT,
    prompt_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress_step INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    pose_image TEXT,
    output_file TEXT,
    error_code TEXT,
    error_message TEXT,
    error_details TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""

JSON_COLUMNS = ("request", "params", "workflow", "error_details")
T = TypeVar("T")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class JobRecord:
    id: str
    status: str
    request: dict[str, Any]
    params: dict[str, Any]
    template: str | None
    workflow: dict[str, Any]
    engine: str
    created_at: str = field(default_factory=now_iso)
    device: str | None = None
    prompt_id: str | None = None
    attempts: int = 0
    progress_step: int = 0
    progress_total: int = 0
    pose_image: str | None = None
    output_file: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_details: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    seq: int | None = None

    def duration_ms(self) -> int | None:
        if not (self.started_at and self.finished_at):
            return None
        start = datetime.fromisoformat(self.started_at.replace("Z", "+00:00"))
        end = datetime.fromisoformat(self.finished_at.replace("Z", "+00:00"))
        return int((end - start).total_seconds() * 1000)

    def to_api(self) -> dict[str, Any]:
        """The job as clients see it (camelCase, see sidecar.api.models.Job)."""
        return {
            "id": self.id,
            "status": self.status,
            "progress": {"step": self.progress_step, "total": self.progress_total},
            "params": self.params,
            "workflowTemplate": self.template,
            "workflow": self.workflow,
            "engine": self.engine,
            "device": self.device,
            "promptId": self.prompt_id,
            "attempts": self.attempts,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "durationMs": self.duration_ms(),
            "output": (
                {"fileName": Path(self.output_file).name, "url": f"/jobs/{self.id}/image"}
                if self.output_file and self.status == "succeeded"
                else None
            ),
            "error": (
                {"code": self.error_code, "message": self.error_message or "", "details": self.error_details or {}}
                if self.error_code
                else None
            ),
        }


class JobStore:
    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        self._conn = conn

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-store")
        await self._call(self._open)

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._call(conn.close)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, "store is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- sync helpers (run in a worker thread)
    def _row(self, row: sqlite3.Row) -> JobRecord:
        data = dict(row)
        for col in JSON_COLUMNS:
            if data[col] is not None:
                data[col] = json.loads(data[col])
        return JobRecord(**data)

    def _exec(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        # Only ever called on the store's one thread: the connection needs no lock.
        assert self._conn is not None, "store is not open"
        return self._conn.execute(sql, args).fetchall()

    # -- async API
    async def insert(self, job: JobRecord) -> None:
        # Field by field, not dataclasses.asdict: that deep-copies the workflow only to dump it.
        data = {f.name: getattr(job, f.name) for f in fields(JobRecord) if f.name != "seq"}
        for col in JSON_COLUMNS:
            if data[col] is not None:
                data[col] = json.dumps(data[col])
        cols = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        await self._call(self._exec, f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(data.values()))

    async def update(self, job_id: str, **values: Any) -> None:
        for col in JSON_COLUMNS:
            if col in values and values[col] is not None:
                values[col] = json.dumps(values[col])
        sets = ", ".join(f"{k} = ?" for k in values)
        await self._call(self._exec, f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._call(self._exec, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._row(rows[0]) if rows else None

    async def list(self, status: str | None = None, limit: int = 50) -> list[JobRecord]:
        if status:
            rows = await self._call(
                self._exec, "SELECT * FROM jobs WHERE status = ? ORDER BY seq DESC LIMIT ?", (status, limit)
            )
        else:
            rows = await self._call(self._exec, "SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,))
        return [self._row(r) for r in rows]

    async def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (what a restart must pick up)."""
        rows = await self._call(
            self._exec, "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq ASC"
        )
        return [self._row(r) for r in rows]

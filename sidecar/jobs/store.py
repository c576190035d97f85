"""SQLite persistence of generation jobs (WAL, one connection, every call off the event loop).

A row keeps the resolved params (a `JobParams`), the filled workflow, the backend's prompt id, status,
progress, output file, error and timestamps: enough to resume or reconcile after a restart. The
state machine lives in `states.py`; this module only stores what the runner decided.
How it talks to SQLite (one ordered thread, WAL, a transaction per change) is `sidecar.sqlite_store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from sidecar.jobs.pageref import PageRef, PageVersion
from sidecar.jobs.params import JobParams
from sidecar.sqlite_store import SqliteStore, now_iso

log = logging.getLogger("sidecar.jobs")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    request TEXT NOT NULL,  -- no longer used: written '{}' (databases from before keep the column)
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
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    body_sha256 TEXT NOT NULL,
    job_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_at);
CREATE TABLE IF NOT EXISTS queue_state (  -- the queue's own settings that outlive a restart (pause)
    key TEXT PRIMARY KEY,
    value TEXT
);
"""


JSON_COLUMNS = ("params", "workflow", "error_details", "page", "page_version")
REQUIRED_JSON = ("params", "workflow")
# Columns added after the first release: (name, declaration), added to an older database when it opens.
ADDED_COLUMNS = (("where_", "TEXT"), ("backend", "TEXT"), ("backend_reason", "TEXT"),
                 ("group_id", "TEXT"),  # the submission of `variations` this job is one of
                 ("retry_of", "TEXT"),  # the job this one retries (POST /jobs/{id}/retry)
                 ("front_rank", "INTEGER"),  # set when submitted with `front` (sidecar.jobs.queue orders by it)
                 ("upscaled_file", "TEXT"),  # the print upscale's image (`upscaleModel`), beside output_file
                 ("source", "TEXT"),  # who submitted it: studio, generate, grid, sweep, api (GET /jobs?source=)
                 ("page", "TEXT"),  # a page job's PageRef (JSON): the daemon writes its version
                 ("page_version", "TEXT"))  # the PageVersion written for it (JSON)
UPSCALED_SUFFIX = ".upscaled.png"  # <job id>.upscaled.png in the outputs dir, beside <job id>.png
ADDED_INDEXES = ("CREATE INDEX IF NOT EXISTS jobs_group ON jobs(group_id);\n"
                 "CREATE INDEX IF NOT EXISTS jobs_source ON jobs(source);")


@dataclass(frozen=True)
class IdempotencyClaim:
    """A submit's `Idempotency-Key` and the digest of its body; keys older than `expired_before`
    are dropped when a new one is stored."""

    key: str
    body_sha256: str
    expired_before: str


@dataclass
class JobRecord:
    id: str
    status: str
    params: JobParams
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
    # Several backends (sidecar/backends/): where the job may run, the one that ran it, and why that one.
    where_: str | None = None
    backend: str | None = None
    backend_reason: str | None = None
    group_id: str | None = None
    retry_of: str | None = None
    front_rank: int | None = None
    upscaled_file: str | None = None
    source: str | None = None  # who submitted it (`studio`, `generate`, ...; `api` when not said)
    page: PageRef | None = None  # a page job: the daemon writes its version when it succeeds
    page_version: PageVersion | None = None  # ... and this is the version it wrote
    # Live only (not a column): prompts ahead of this job in ComfyUI's own queue while it waits there.
    queued_behind: int | None = field(default=None, metadata={"column": False})

    def duration_ms(self) -> int | None:
        if not (self.started_at and self.finished_at):
            return None
        start = datetime.fromisoformat(self.started_at.replace("Z", "+00:00"))
        end = datetime.fromisoformat(self.finished_at.replace("Z", "+00:00"))
        return int((end - start).total_seconds() * 1000)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Typed column values (a PageRef, a PageVersion) as the JSON the store writes."""
    return {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in values.items()}


class JobStore(SqliteStore):
    schema = SCHEMA
    json_columns = JSON_COLUMNS

    def open_sync(self) -> None:
        super().open_sync()
        self._add_columns()

    def _add_columns(self) -> None:
        assert self._conn is not None
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for name, decl in ADDED_COLUMNS:
            if name not in have:
                self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        self._conn.executescript(ADDED_INDEXES)

    def _row(self, row: sqlite3.Row) -> JobRecord:
        data = self._decode(row)
        data.pop("request", None)
        for col in JSON_COLUMNS:  # params and workflow always hold an object; the others one or null
            if not isinstance(data.get(col), dict) and (col in REQUIRED_JSON or data.get(col) is not None):
                raise ValueError(f"{col} is not a JSON object")
        data["params"] = JobParams.from_stored(data["params"])
        data["page"] = PageRef.model_validate(data["page"], strict=False) if data.get("page") else None
        data["page_version"] = PageVersion.model_validate(data["page_version"]) if data.get("page_version") else None
        return JobRecord(**data)

    def _rows(self, rows: list[sqlite3.Row]) -> list[JobRecord]:
        """The readable rows as records. A row another program or a damaged page left unreadable (invalid
        JSON, params that no longer validate) is logged and left out, so one bad row never fails a list,
        a restart's recovery or retention; the row itself stays as it is for inspection."""
        records = []
        for row in rows:
            try:
                records.append(self._row(row))
            except (ValueError, TypeError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
                log.error("job %s (row %s) is unreadable and left out: %s", row["id"], row["seq"],
                          str(exc).splitlines()[0][:200])
        return records

    async def insert(self, job: JobRecord, claim: IdempotencyClaim | None = None) -> None:
        """The job, and with a claim its `Idempotency-Key`, in one transaction: a daemon killed
        mid-submit keeps both or neither, so a client's retry never makes a second job."""
        await self.insert_many([job], claim)

    async def insert_many(self, jobs: list[JobRecord], claim: IdempotencyClaim | None = None) -> None:
        """Several jobs (a group of variations), and with a claim its key (naming the first job), in one
        transaction: all of them are queued or none. Each record's `seq` is set to its row number."""
        rows = [self._encode(self._values(job)) for job in jobs]
        seqs = await self._call(self._insert_rows, rows, claim, jobs[0].id, jobs[0].created_at)
        for job, seq in zip(jobs, seqs):
            job.seq = seq

    @staticmethod
    def _values(job: JobRecord) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: that deep-copies the workflow only to dump it.
        values = {f.name: getattr(job, f.name) for f in fields(JobRecord)
                  if f.name != "seq" and f.metadata.get("column", True)}
        values.update(params=job.params.stored(), request="{}")
        return _plain(values)

    def _insert_rows(self, rows: list[dict[str, Any]], claim: IdempotencyClaim | None, job_id: str,
                     now: str) -> list[int]:
        assert self._conn is not None
        seqs: list[int] = []
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for data in rows:
                cols, marks = ", ".join(data), ", ".join("?" for _ in data)
                cur = self._conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(data.values()))
                seqs.append(int(cur.lastrowid or 0))
            if claim is not None:
                self._conn.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (claim.expired_before,))
                self._conn.execute("INSERT OR REPLACE INTO idempotency_keys (key, body_sha256, job_id, created_at) "
                                   "VALUES (?, ?, ?, ?)", (claim.key, claim.body_sha256, job_id, now))
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a full disk may refuse even this; SQLite then rolls back
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        return seqs

    async def group(self, group_id: str) -> list[JobRecord]:
        """The jobs of one group, in the order they were submitted."""
        rows = await self._call(self._exec, "SELECT * FROM jobs WHERE group_id = ? ORDER BY seq ASC", (group_id,))
        return self._rows(rows)

    # -- the queue's persisted state (pause)
    async def queue_state(self) -> dict[str, str | None]:
        rows = await self._call(self._exec, "SELECT key, value FROM queue_state")
        return {r["key"]: r["value"] for r in rows}

    async def set_queue_state(self, **values: str | None) -> None:
        def write() -> None:
            assert self._conn is not None
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                for key, value in values.items():
                    self._conn.execute("INSERT OR REPLACE INTO queue_state (key, value) VALUES (?, ?)", (key, value))

        await self._call(write)

    async def claimed(self, key: str, since: str) -> tuple[str, str] | None:
        """(body digest, job id) of a key claimed at or after `since`, if any."""
        rows = await self._call(self._exec, "SELECT body_sha256, job_id FROM idempotency_keys "
                                            "WHERE key = ? AND created_at >= ?", (key, since))
        return (rows[0]["body_sha256"], rows[0]["job_id"]) if rows else None

    async def update(self, job_id: str, **values: Any) -> None:
        await self._update("jobs", job_id, _plain(values))

    def update_soon(self, job_id: str, **values: Any) -> asyncio.Future[Any]:
        """Queued in call order behind every earlier write; await the future to know it is on disk."""
        return self._update_soon("jobs", job_id, _plain(values))

    async def exists(self, job_id: str) -> bool:
        return bool(await self._call(self._exec, "SELECT 1 FROM jobs WHERE id = ?", (job_id,)))

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._call(self._exec, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        found = self._rows(rows)
        return found[0] if found else None

    async def list(self, status: str | None = None, limit: int = 50, group: str | None = None,
                   source: str | None = None, before: str | None = None) -> list[JobRecord]:
        """Newest first; with `before` (a job id) only the jobs submitted before that one (the next page)."""
        where = [(f"{c} = ?", v) for c, v in (("status", status), ("group_id", group)) if v]
        if source is not None:  # rows from before `source` existed were submitted through the API
            where.append(("COALESCE(source, 'api') = ?", source))
        if before is not None:
            where.append(("seq < (SELECT seq FROM jobs WHERE id = ?)", before))
        clause = f"WHERE {' AND '.join(c for c, _ in where)} " if where else ""
        rows = await self._call(self._exec, f"SELECT * FROM jobs {clause}ORDER BY seq DESC LIMIT ?",
                                (*(v for _, v in where), limit))
        return self._rows(rows)

    async def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, oldest first (what a restart must pick up)."""
        rows = await self._call(
            self._exec, "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq ASC"
        )
        return self._rows(rows)

    # -- retention (sidecar.jobs.retention)
    async def finished_before(self, cutoff: str) -> list[JobRecord]:
        """Succeeded, failed and cancelled jobs that ended before `cutoff` (ISO, as stored), oldest first.
        Queued and running jobs are never listed, however old."""
        rows = await self._call(
            self._exec,
            "SELECT * FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
            "AND COALESCE(finished_at, created_at) < ? ORDER BY seq ASC", (cutoff,))
        return self._rows(rows)

    async def delete_finished(self, job_ids: list[str]) -> int:
        """Remove these jobs' rows, only while they are still finished (one transaction); the count removed."""
        def delete() -> int:
            assert self._conn is not None
            removed = 0
            with self._conn:  # one transaction: all rows or none
                self._conn.execute("BEGIN IMMEDIATE")
                for start in range(0, len(job_ids), 500):
                    chunk = job_ids[start:start + 500]
                    marks = ", ".join("?" for _ in chunk)
                    cur = self._conn.execute(
                        f"DELETE FROM jobs WHERE id IN ({marks}) AND status IN ('succeeded', 'failed', 'cancelled')",
                        tuple(chunk))
                    removed += cur.rowcount
            return removed

        return await self._call(delete)


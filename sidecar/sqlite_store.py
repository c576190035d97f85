"""What the daemon's SQLite stores share: one connection to the data dir's database (WAL, so the job
and training tables in the same file never block each other's readers), used from one thread of the
store's own so that every call stays off the event loop and runs in the order it was made (a progress
write nobody awaited cannot land after a later state change). Each call is one autocommit statement:
one transaction per state change. Rows are dataclass records with some JSON columns.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SqliteStore:
    schema: ClassVar[str]
    json_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle
    def open_sync(self) -> None:
        """Open for a caller without an event loop to keep free (a CLI): calls then run in its thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(self.schema)
        self._conn = conn

    def close_sync(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__)
        await self._call(self.open_sync)

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._call(self.close_sync)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, f"{type(self).__name__} is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- sync core (the store's thread, or the CLI's)
    def _exec(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        assert self._conn is not None, f"{type(self).__name__} is not open"
        return self._conn.execute(sql, args).fetchall()

    def _decode(self, row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        for col in self.json_columns:
            if data.get(col) is not None:
                data[col] = json.loads(data[col])
        return data

    def _encode(self, values: dict[str, Any]) -> dict[str, Any]:
        return {k: json.dumps(v) if k in self.json_columns and v is not None else v for k, v in values.items()}

    async def _insert(self, table: str, values: dict[str, Any]) -> None:
        data = self._encode(values)
        cols, marks = ", ".join(data), ", ".join("?" for _ in data)
        await self._call(self._exec, f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(data.values()))

    async def _update(self, table: str, row_id: str, values: dict[str, Any]) -> None:
        await self._update_soon(table, row_id, values)

    def _update_soon(self, table: str, row_id: str, values: dict[str, Any]) -> asyncio.Future[Any]:
        """Hand the write to the store's thread *now* (not when a task first runs) and return its future:
        any call made after this one is written after it, whether or not anyone awaits it."""
        assert self._executor is not None, f"{type(self).__name__} is not open"
        data = self._encode(values)
        sets = ", ".join(f"{k} = ?" for k in data)
        return asyncio.get_running_loop().run_in_executor(
            self._executor, self._exec, f"UPDATE {table} SET {sets} WHERE id = ?", (*data.values(), row_id))

"""What the daemon's SQLite stores share: one connection to the data dir's database (WAL, so the job
and training tables in the same file never block each other's readers), used from one thread of the
store's own so that every call stays off the event loop and runs in the order it was made (a progress
write nobody awaited cannot land after a later state change). Each call is one autocommit statement:
one transaction per state change. Rows are dataclass records with some JSON columns.

A full disk becomes `DiskFull` where it enters (here), so callers handle one error whichever write met
it. `check_database` is the start-up check: a damaged or foreign file stops the daemon with its path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sidecar.errors import DatabaseUnusable, DiskFull

T = TypeVar("T")
HEADER = b"SQLite format 3\x00"
# The mark of the daemon's own database (SQLite's header field for that: `PRAGMA application_id`), set
# when it is created: "SdCr". A non-empty database without it is another program's, and is never written.
APPLICATION_ID = 0x53644372
# The job table's columns that only our `jobs` table has: a database from before the mark had them.
OUR_JOB_COLUMNS = frozenset({"id", "status", "params", "workflow", "engine", "progress_step", "progress_total"})
CREATED_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)", re.IGNORECASE)
# Which stores have laid out their tables in this database (each by its first table's name). The job and
# training stores share the file and either may open it first: a store's tables are missing-and-refused
# only once it has registered them here, never because another store made the file.
REGISTRY = "CREATE TABLE IF NOT EXISTS sidecar_stores (name TEXT PRIMARY KEY)"


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SqliteStore:
    schema: ClassVar[str]
    json_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, *, share: SqliteStore | None = None):
        """`share`: another store on the same file whose connection and writer thread this one uses
        (one writer per database file: the daemon's stores all share the job store's). It must be
        opened before this one and closed after it."""
        self.path = share.path if share is not None else path
        self._share = share
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    # -- lifecycle
    def open_sync(self) -> None:
        """Open for a caller without an event loop to keep free (a CLI): calls then run in its thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            mark = self._ours(conn)  # before the first write (WAL mode is one)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._lay_out(conn)
            if mark:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @property
    def _tables(self) -> list[str]:
        return CREATED_TABLE.findall(self.schema)

    def _lay_out(self, conn: sqlite3.Connection) -> None:
        """Create this store's tables and register them as laid out."""
        conn.executescript(self.schema)
        conn.execute(REGISTRY)
        conn.execute("INSERT OR IGNORE INTO sidecar_stores (name) VALUES (?)", (self._tables[0],))

    def _laid_out(self, conn: sqlite3.Connection, tables: set[str]) -> bool:
        """Whether this store made its tables here before (so a missing one was lost, not never made)."""
        if "sidecar_stores" in tables:
            return conn.execute("SELECT 1 FROM sidecar_stores WHERE name = ?", (self._tables[0],)).fetchone() is not None
        return any(t in tables for t in self._tables)  # a database marked before the registry existed

    def _ours(self, conn: sqlite3.Connection) -> bool:
        """Whether the database is this daemon's to write, and still to be marked so. Ours: marked, and
        holding every table this store's schema creates (a table gone is refused, naming it, never
        recreated empty); or empty (new); or unmarked with our `jobs` table (made before the mark). Any
        other database is another program's: DatabaseUnusable, and nothing is written to it."""
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise DatabaseUnusable(self.path, f"cannot be read (SQLite: {exc})") from None
        tables.discard("sqlite_sequence")
        if app_id == APPLICATION_ID:
            missing = [t for t in self._tables if t not in tables]
            if missing and self._laid_out(conn, tables):
                raise DatabaseUnusable(self.path, f"is this daemon's but has lost its {missing[0]} table "
                                                  "(dropped by hand or another program?); it is not recreated "
                                                  "empty")
            return False
        if app_id != 0:
            raise DatabaseUnusable(self.path, f"belongs to another program (its SQLite application_id is "
                                              f"{app_id:#x}, not this daemon's)", foreign=True)
        if not tables:
            return True
        columns = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")} if "jobs" in tables else set()
        if not OUR_JOB_COLUMNS <= columns:
            raise DatabaseUnusable(self.path, f"is another program's SQLite database (tables "
                                              f"{', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''}"
                                              "; none of this daemon's)", foreign=True)
        return True

    def close_sync(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    async def open(self) -> None:
        if self._share is not None:
            assert self._share._conn is not None, f"open {type(self._share).__name__} before {type(self).__name__}"
            self._conn, self._executor = self._share._conn, self._share._executor
            await self._call(self._lay_out, self._conn)
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__)
        await self._call(self.open_sync)

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._share is not None:  # the connection is the sharer's to close
            self._conn = self._executor = None
            return
        await self._call(self.close_sync)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None, f"{type(self).__name__} is not open"
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise self._disk_full() from exc
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._disk_full() from exc
            raise

    def _disk_full(self) -> DiskFull:
        return DiskFull(f"No space left on the disk holding the database {self.path}: nothing could be "
                        "recorded. Free some space, then try again.", {"path": str(self.path)})

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
            self._executor, self._guarded, self._exec, f"UPDATE {table} SET {sets} WHERE id = ?",
            (*data.values(), row_id))


def check_database(path: Path) -> bool:
    """Whether a database is there (False: none yet, or an empty file SQLite will fill). Raises
    `DatabaseUnusable` for a file that is not SQLite's, is cut short, or fails SQLite's `quick_check`
    (a damaged page). Reads only: nothing is written, so a refused file is left exactly as found."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with path.open("rb") as fh:
        head = fh.read(100)
    if not head.startswith(HEADER):
        raise DatabaseUnusable(path, "is not an SQLite database (it does not start with SQLite's header)")
    wal = path.with_name(path.name + "-wal")
    if len(head) == 100 and not (wal.exists() and wal.stat().st_size):
        # Without a WAL to replay, the file must hold every page its header counts (valid when the
        # header's "version-valid-for" matches its change counter).
        page = int.from_bytes(head[16:18], "big")
        page = 65536 if page == 1 else page
        pages, counter, valid_for = (int.from_bytes(head[o:o + 4], "big") for o in (28, 24, 92))
        if page and (size % page or (counter == valid_for and pages * page > size)):
            raise DatabaseUnusable(path, f"is truncated ({size} bytes; its header counts {pages} pages "
                                         f"of {page} bytes)")
    elif len(head) < 100:
        raise DatabaseUnusable(path, f"is truncated ({size} bytes, less than SQLite's 100-byte header)")
    try:
        conn = sqlite3.connect(path, timeout=10)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise DatabaseUnusable(path, f"is damaged (SQLite: {exc})") from None
    problems = [r[0] for r in rows if r[0] != "ok"]
    if problems:
        more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
        raise DatabaseUnusable(path, f"is damaged (SQLite's quick_check: {problems[0]}{more})")
    return True

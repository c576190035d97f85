"""One daemon per data dir: an exclusive lock on `<data_dir>/sidecar.lock`, held for the daemon's life.

A second daemon on the same data dir would run recovery on the first one's state: stop its kohya process
group, mark its training interrupted, re-queue its jobs and reuse its ComfyUI client_id. So the lock is
taken before anything else touches the data dir (`sidecar serve` takes it first of all; every app built
by `create_app` takes it at start-up too, before its store opens), and a loser changes nothing.

`fcntl.flock` on an open file: the kernel drops the lock when its holder dies (`kill -9` included), so a
stale file never blocks a restart. The descriptor is not inheritable (PEP 446), so kohya or ComfyUI, once
orphaned, do not keep the lock of a dead daemon. The file holds the owner's pid, host and port (JSON), so
a second daemon (or `doctor --bench`) can name it. Not for NFS-mounted data dirs, where flock may be local
to one machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sidecar.errors import DataDirLocked

LOCK_NAME = "sidecar.lock"
OWNER_READ_TRIES = 20  # the owner writes its pid right after locking: wait that moment out (20 x 10 ms)


@dataclass(frozen=True)
class LockOwner:
    pid: int | None
    host: str | None
    port: int | None
    started_at: str | None

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid else "pid unknown"
        return f"{pid}, port {self.port}" if self.port else pid


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_NAME


def read_owner(path: Path) -> LockOwner:
    """What the lock file says of its owner (fields None when it cannot be read)."""
    for _ in range(OWNER_READ_TRIES):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            time.sleep(0.01)
            continue
        if isinstance(data, dict):
            pid, port = data.get("pid"), data.get("port")
            return LockOwner(pid if isinstance(pid, int) else None, data.get("host"),
                             port if isinstance(port, int) else None, data.get("startedAt"))
    return LockOwner(None, None, None, None)


def locked_by(data_dir: Path) -> LockOwner | None:
    """The daemon holding this data dir's lock, or None when none does. Changes nothing: a missing data
    dir or lock file means no daemon."""
    path = lock_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_owner(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class DataDirLock:
    """The lock of one data dir. `acquire` raises `DataDirLocked` naming the owner; `release` is idempotent."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.path = lock_path(data_dir)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, host: str | None, port: int | None) -> None:
        """Lock the data dir for this process (a daemon records where it listens; `sidecar gc` offline, None)."""
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: a loser must not erase the owner's pid and port.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = read_owner(self.path)
            raise DataDirLocked(
                f"The data dir {self.data_dir} is in use by another sidecar daemon ({owner.describe()}). "
                "Stop that one first, or give this one another --data-dir; nothing was changed.",
                {"dataDir": str(self.data_dir), "pid": owner.pid, "port": owner.port, "lockFile": str(self.path)},
            ) from None
        record = {"pid": os.getpid(), "host": host, "port": port,
                  "startedAt": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd

    def record_port(self, port: int) -> None:
        """Record the port actually bound (an in-process daemon binds port 0 and learns it after)."""
        if self._fd is None:
            return
        record = json.loads(os.pread(self._fd, 4096, 0) or b"{}")
        record["port"] = port
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # no stale owner for the next reader
        os.close(self._fd)  # closing the only descriptor drops the flock
        self._fd = None

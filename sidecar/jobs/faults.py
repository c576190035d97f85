"""Faults the job runner turns into job failures instead of dying on: a full disk (ENOSPC from the
backend's image write; the store raises `DiskFull` itself), the temp files a killed daemon left, and
store writes nobody awaits.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from pathlib import Path
from typing import Any

from sidecar.errors import DiskFull

log = logging.getLogger("sidecar.jobs")

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: OSError, what: str) -> DiskFull | None:
    """Our error for an OSError that means "no space left" (None for any other OSError)."""
    if exc.errno not in NO_SPACE:
        return None
    where = exc.filename or ""
    return DiskFull(f"No space left on the disk to write {what}{f' ({where})' if where else ''}. Free some "
                    "space; the next job runs as soon as there is room.", {"path": str(where)} if where else {})


def sweep_temp_files(directory: Path) -> list[Path]:
    """Remove the `.<name>.<tag>.tmp` files a killed daemon left in its outputs folder (the backends write
    an image there under a temp name, then rename it). Only one daemon uses a data dir, so at start no
    writer can own them."""
    removed = []
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def log_write_failure(written: asyncio.Future[Any]) -> None:
    """Progress writes nobody awaits: a failure (disk full) is logged, never left unretrieved."""
    if not written.cancelled() and written.exception() is not None:
        log.warning("a progress write failed: %s", written.exception())

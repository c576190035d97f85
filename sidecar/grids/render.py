"""Render many cells through the daemon: submitted in order with at most `window` waiting at once (a
large grid never meets `max_queue`), collected in order, each image saved under the output folder.
A refusal at submit (a model not installed, a size over the profile) or Ctrl-C cancels every cell
already queued, so nothing of a grid that stopped keeps the device busy.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from sidecar.atomic import write_bytes
from sidecar.statuses import JOB_TERMINAL

WINDOW = 32


class Cell(Protocol):
    job_id: str | None
    status: str
    image: str | None  # relative to the output folder
    error: str | None


class Client(Protocol):
    async def submit(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def image(self, job: str) -> bytes: ...

    async def wait(self, job_id: str, *, poll_interval: float, on_progress=None) -> dict[str, Any]: ...

    async def cancel_quietly(self, job_id: str) -> None: ...


async def render_cells(cells: Sequence[Any], client: Client, out: Path, *, body_of: Callable[[Any], dict[str, Any]],
                       image_name: Callable[[Any], str], on_done: Callable[[int, int, Any], None],
                       poll_interval: float = 1.0, window: int = WINDOW,
                       on_result: Callable[[Any, dict[str, Any]], None] | None = None, source: str = "grid") -> None:
    """Fill each cell's job_id, status, image (saved under `out`) or error; `on_done(done, total, cell)`
    after each; `on_result(cell, job)` with the finished job's JSON (its params, seed...). Each job is
    submitted with `source` (`grid`, `sweep`: GET /jobs?source= lists them)."""
    pending: deque[Any] = deque()
    submitted: list[Any] = []
    done = 0

    async def collect(cell: Any) -> None:
        nonlocal done
        result = await client.wait(cell.job_id, poll_interval=poll_interval)
        cell.status = result["status"]
        if cell.status == "succeeded":
            name = image_name(cell)
            data = await client.image(cell.job_id)
            await asyncio.to_thread(_save, out / name, data)
            cell.image = name
        else:
            err = result.get("error") or {}
            cell.error = f"{err.get('code', cell.status)}: {err.get('message', '')}".strip()
        if on_result is not None:
            on_result(cell, result)
        done += 1
        on_done(done, len(cells), cell)

    try:
        for cell in cells:
            while len(pending) >= window:
                await collect(pending.popleft())
            submitted_job = await client.submit({**body_of(cell), "source": source})
            cell.job_id, cell.status = submitted_job["id"], submitted_job["status"]
            pending.append(cell)
            submitted.append(cell)
        while pending:
            await collect(pending.popleft())
    except BaseException:
        for cell in submitted:
            if cell.status not in JOB_TERMINAL and cell.job_id:
                await client.cancel_quietly(cell.job_id)
        raise


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)

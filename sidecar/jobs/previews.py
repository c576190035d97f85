"""Live previews of running jobs: rate-limited, kept (the latest per job) and announced on the bus.

A backend offers a preview image while it samples (the embedded engine from its latent, ComfyUI from
its binary preview frames); what gets through is at most one per job per `preview_interval` seconds,
re-encoded as a small JPEG (`sidecar.previews`), kept as the job's latest (`GET /jobs/{id}/preview`)
and published as a `job.preview` event. `due()` lets a backend skip making a preview nobody will get.
With `previews` off nothing is made, kept or sent. Only the last `KEEP` jobs' previews are kept.

A preview belongs to an attempt: when a job runs again (its backend lost it), the first attempt's frame
is dropped, and one of its frames still being re-encoded is never kept, so `GET /jobs/{id}/preview`
never shows a picture from a run that was killed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.events import EventBus
from sidecar.previews import shrink

log = logging.getLogger("sidecar.previews")
KEEP = 32


@dataclass(frozen=True)
class Preview:
    """Published on the bus as `job.preview` (the API layer encodes it)."""

    job_id: str
    step: int
    total: int
    jpeg: bytes
    width: int
    height: int
    seq: int  # 1, 2, ... per job
    attempt: int = 0  # the job's `attempts` when the backend sent it


class Previews:
    def __init__(self, bus: EventBus, *, enabled: bool = True, interval: float = 1.0, keep: int = KEEP):
        self.bus = bus
        self.enabled = enabled
        self.interval = interval
        self.keep = keep
        self._latest: OrderedDict[str, Preview] = OrderedDict()
        self._last_at: dict[str, float] = {}  # job id -> when its last preview was let through
        self._order: dict[str, asyncio.Lock] = {}  # a job's previews are re-encoded and sent in order
        self._attempt: dict[str, int] = {}  # job id -> its current attempt (older attempts' frames are dropped)

    def begin(self, job_id: str, attempt: int) -> None:
        """A job's attempt starts: a preview of an earlier attempt is no longer the job's."""
        if job_id in self._attempt and attempt <= self._attempt[job_id]:
            return
        self._attempt[job_id] = attempt
        kept = self._latest.get(job_id)
        if kept is not None and kept.attempt < attempt:
            del self._latest[job_id]
            self._last_at.pop(job_id, None)

    def due(self, job_id: str) -> bool:
        """Would a preview for this job go out now? (Read from any thread: plain lookups.)"""
        if not self.enabled:
            return False
        last = self._last_at.get(job_id)
        return last is None or time.monotonic() - last >= self.interval

    def offer(self, job_id: str, step: int, total: int, image: bytes, attempt: int = 0) -> None:
        """On the event loop: a backend's preview image (JPEG or PNG) of this job at this step."""
        if attempt < self._attempt.get(job_id, 0) or not self.due(job_id):
            return
        self._last_at[job_id] = time.monotonic()
        lock = self._order.setdefault(job_id, asyncio.Lock())
        asyncio.get_running_loop().create_task(self._publish(lock, job_id, step, total, image, attempt))

    async def _publish(self, lock: asyncio.Lock, job_id: str, step: int, total: int, image: bytes,
                       attempt: int) -> None:
        async with lock:  # FIFO: previews go out in the order they came
            small = await asyncio.to_thread(shrink, image)
            if small is None:
                log.debug("job %s: a preview that is not a decodable image was dropped", job_id)
                return
            if attempt < self._attempt.get(job_id, 0):
                return  # the attempt that sent it was killed meanwhile
            self._put(job_id, step, total, *small, attempt)

    def _put(self, job_id: str, step: int, total: int, jpeg: bytes, width: int, height: int, attempt: int) -> None:
        previous = self._latest.pop(job_id, None)
        preview = Preview(job_id, step, total, jpeg, width, height, (previous.seq if previous else 0) + 1, attempt)
        self._latest[job_id] = preview
        while len(self._latest) > self.keep:
            old, _ = self._latest.popitem(last=False)
            self._last_at.pop(old, None)
            self._order.pop(old, None)
            self._attempt.pop(old, None)
        self.bus.publish(preview)

    def callbacks(self, job_id: str, loop: asyncio.AbstractEventLoop | None, loop_thread: int | None,
                  attempt: int = 0) -> tuple[Callable[[], bool] | None, Callable[[int, int, bytes], None] | None]:
        """A job's `RunContext.preview_due` and `on_preview` for this attempt (None, None when previews
        are off). The backend may call them from its worker thread: an offer is carried over to the loop."""
        if not self.enabled:
            return None, None
        self.begin(job_id, attempt)

        def due() -> bool:
            return self.due(job_id)

        def on_preview(step: int, total: int, image: bytes) -> None:
            if loop is not None and threading.get_ident() != loop_thread:
                loop.call_soon_threadsafe(self.offer, job_id, step, total, image, attempt)
            else:
                self.offer(job_id, step, total, image, attempt)

        return due, on_preview

    def latest(self, job_id: str) -> Preview | None:
        return self._latest.get(job_id)

    def forget(self, job_id: str) -> None:
        """A removed job (gc) keeps no preview."""
        self._latest.pop(job_id, None)
        self._last_at.pop(job_id, None)
        self._order.pop(job_id, None)
        self._attempt.pop(job_id, None)

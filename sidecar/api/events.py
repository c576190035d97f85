"""GET /events: a WebSocket streaming job and training events, so clients need not poll.

Each client has a bounded buffer (`events_buffer`): one that reads too slowly is disconnected with
close code 1008 rather than buffered without end. On shutdown every socket is closed (1001, going
away) so SIGTERM never waits on a listener.

`encode` is the bus's encoder (given to it by the app factory): a job event becomes the wire
`JobEvent` with the job's summary, a live preview a `JobPreviewEvent` with its JPEG in base64 (small:
at most 256 px a side, so the event carries it and the studio needs no second request), a training
event is already its wire model; both leave as the
same JSON the OpenAPI document's `Event` schema describes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import weakref
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel

from sidecar.api.keys import EVENTS, SOCKETS
from sidecar.api.operations import operation
from sidecar.api.responses import (
    BackendEvent, BackendState, Event, JobEvent, JobPreviewEvent, JobSummary, QueueEvent, QueueState,
)
from sidecar.backends.pool import BackendChanged
from sidecar.errors import WebSocketRequired
from sidecar.jobs.previews import Preview
from sidecar.jobs.queue import QueueChanged
from sidecar.jobs.ledger import JobChanged

log = logging.getLogger("sidecar.events")
routes = web.RouteTableDef()
CLOSE_TIMEOUT = 1.0  # a client that does not answer our close frame within this is cut
# No permessage-deflate: listeners are local, and compressing every event once per listener costs each
# of them a zlib context and the loop CPU time while jobs run.
COMPRESS = False


def new_socket_set() -> weakref.WeakSet[web.WebSocketResponse]:
    return weakref.WeakSet()


def encode(event: Any) -> dict[str, Any]:
    if isinstance(event, dict):
        return event  # already a body (a publisher outside the job and training layers)
    if isinstance(event, JobChanged):
        event = JobEvent(type=event.type, job=JobSummary.from_record(event.job))  # type: ignore[arg-type]
    elif isinstance(event, Preview):
        event = JobPreviewEvent(type="job.preview", job_id=event.job_id, step=event.step, total=event.total,
                                seq=event.seq, width=event.width, height=event.height,
                                image=base64.b64encode(event.jpeg).decode("ascii"),
                                url=f"/jobs/{event.job_id}/preview")
    elif isinstance(event, BackendChanged):
        event = BackendEvent(type=event.type, backend=BackendState.model_validate(event.backend))  # type: ignore[arg-type]
    elif isinstance(event, QueueChanged):
        event = QueueEvent(type=event.type, queue=QueueState(  # type: ignore[arg-type]
            paused=event.paused, paused_at=event.paused_at, depth=event.depth, running_job=event.running_job,
            order=list(event.order)))
    if not isinstance(event, BaseModel):
        raise TypeError(f"not an event: {event!r}")
    return event.model_dump(mode="json", by_alias=True)


@routes.get("/events")
@operation("WebSocket of job, queue, training and backend events", {101: Event}, errors=(WebSocketRequired,), websocket=True,
           description="Upgrade to a WebSocket; each text frame is one Event (a JobEvent with the job's "
                       "summary, a JobPreviewEvent, a QueueEvent when the queue is paused or resumed, a "
                       "TrainingEvent, or a BackendEvent when a backend joins or leaves routing). Clients only "
                       "listen.")
async def events(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30, timeout=CLOSE_TIMEOUT, compress=COMPRESS)
    if not ws.can_prepare(request).ok:
        raise WebSocketRequired("GET /events answers only a WebSocket upgrade (Upgrade: websocket).")
    await ws.prepare(request)
    bus = request.app[EVENTS]
    request.app[SOCKETS].add(ws)
    sub = bus.subscribe()

    async def drain_incoming() -> None:
        async for msg in ws:  # clients only listen; this notices the close
            if msg.type == WSMsgType.ERROR:
                break

    async def pump() -> None:
        while True:
            await ws.send_str((await sub.get()).text)

    reader = asyncio.create_task(drain_incoming())
    sender = asyncio.create_task(pump())
    overflow = asyncio.create_task(sub.overflowed.wait())
    try:
        await asyncio.wait({reader, sender, overflow}, return_when=asyncio.FIRST_COMPLETED)
        if overflow.done():
            log.warning("an /events client fell %d events behind: disconnected", bus.buffer)
            sender.cancel()
            await close(ws, request, WSCloseCode.POLICY_VIOLATION,
                        f"too slow: more than {bus.buffer} events unread; reconnect and GET /jobs")
    finally:
        bus.unsubscribe(sub)
        for task in (reader, sender, overflow):
            task.cancel()
        await close(ws, request, WSCloseCode.OK, "")
    return ws


async def close(ws: web.WebSocketResponse, request: web.Request, code: int, reason: str) -> None:
    """Close with `code`; a client that does not read (its socket full) cannot take the close frame in
    time, and its connection is cut instead."""
    if ws.closed:
        return
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:120]), CLOSE_TIMEOUT)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        if request.transport is not None:
            request.transport.abort()


async def close_all(app: web.Application) -> None:
    """on_shutdown: tell every listener the daemon is going away, at once and in parallel."""
    sockets = list(app[SOCKETS])
    if sockets:
        log.info("closing %d /events connection(s)", len(sockets))
    with contextlib.suppress(Exception):
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"daemon shutting down")
                               for ws in sockets if not ws.closed), return_exceptions=True)

"""In-process event bus feeding `GET /events` WebSocket clients.

Publishers (the job runner, the training manager) call `publish(event)`; every subscriber gets its
own bounded queue, so a slow client can never stall a job nor make the daemon buffer without end:
once its queue is full it is marked `overflowed`, gets nothing more, and the `/events` handler
disconnects it (a client that reconnects reads `GET /jobs` to catch up, rather than silently missing
a `job.succeeded` among dropped events).

Publishers pass their own typed event; the `encode` function the app gives the bus (the API layer's
wire models) turns it into the JSON body once, at publish time, before the publisher's live record
can change again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

DEFAULT_BUFFER = 1000


class Event(dict):
    """An event as published: a plain dict to read, plus `text`, its JSON, made once for every listener
    (20 listeners cost one serialization, not 20)."""

    __slots__ = ("text",)

    def __init__(self, event: dict[str, Any]):
        super().__init__(event)
        self.text = json.dumps(event, default=str)  # a stray Path must not break a publisher


class Subscription(asyncio.Queue):
    """A subscriber's queue of events, plus `overflowed`: set once it fell `maxsize` events behind."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize)
        self.overflowed = asyncio.Event()


def _as_is(event: Any) -> Any:
    return event


class EventBus:
    def __init__(self, buffer: int = DEFAULT_BUFFER, encode: Callable[[Any], dict[str, Any]] = _as_is) -> None:
        self.buffer = buffer
        self._encode = encode
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        q = Subscription(self.buffer)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)  # type: ignore[arg-type]

    def publish(self, event: Any) -> None:
        if not self._subscribers:
            return  # nobody listens: not even the encoding is paid
        published = Event(self._encode(event))
        for q in list(self._subscribers):
            if q.full():
                q.overflowed.set()  # too slow: its handler disconnects it
                self._subscribers.discard(q)
                continue
            q.put_nowait(published)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

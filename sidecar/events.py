"""In-process event bus feeding `GET /events` WebSocket clients.

Publishers (the job runner, the training manager) call `publish(event)`; every subscriber gets its
own bounded queue so a slow client can never stall a job (it loses the oldest events instead).
"""

from __future__ import annotations

import asyncio
from typing import Any

QUEUE_SIZE = 256


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)

    def publish(self, event: dict[str, Any]) -> None:
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()  # drop the oldest for this slow client
            q.put_nowait(event)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

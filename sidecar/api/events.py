"""GET /events: a WebSocket streaming job and training events, so clients need not poll."""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType, web

from sidecar.api.keys import EVENTS

routes = web.RouteTableDef()


@routes.get("/events")
async def events(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    bus = request.app[EVENTS]
    queue = bus.subscribe()

    async def drain_incoming() -> None:
        async for msg in ws:  # clients only listen; this notices the close
            if msg.type == WSMsgType.ERROR:
                break

    reader = asyncio.create_task(drain_incoming())
    try:
        while not ws.closed:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            await ws.send_json(getter.result())
    finally:
        bus.unsubscribe(queue)
        reader.cancel()
        await ws.close()
    return ws

"""`?size=N` on an image route: the image's thumbnail (`sidecar.thumbnails`) instead of the full PNG,
answered 304 when the client's If-None-Match is its ETag. Shared by the job and page-version images."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from sidecar.api.keys import RUNNER
from sidecar.api.operations import Query
from sidecar.errors import InvalidField
from sidecar.thumbnails import FOLDER, MAX_SIZE, MIN_SIZE, matches, thumbnail

SIZE_QUERY = Query("size", {"type": "integer", "minimum": MIN_SIZE, "maximum": MAX_SIZE},
                   "a thumbnail instead of the PNG: a JPEG at most this many pixels on its longer side (never "
                   "enlarged), cached by the daemon, with an ETag (If-None-Match: 304)")
IMAGE_TYPES = ("image/png", "image/jpeg")
THUMB_HEADERS = {200: {"ETag": "with ?size: the thumbnail's tag (send it back in If-None-Match)"}}


def thumb_size(request: web.Request) -> int | None:
    raw = request.query.get("size")
    if raw is None:
        return None
    if not raw.isdigit() or not MIN_SIZE <= int(raw) <= MAX_SIZE:
        raise InvalidField(f"size must be a whole number of pixels from {MIN_SIZE} to {MAX_SIZE}, got {raw[:20]!r}.",
                           {"field": "size", "min": MIN_SIZE, "max": MAX_SIZE})
    return int(raw)


async def image_response(request: web.Request, path: Path) -> web.StreamResponse:
    """The PNG at `path`, or with ?size its thumbnail (304 when the client already has it)."""
    size = thumb_size(request)
    if size is None:
        return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "no-cache"})
    thumb = await asyncio.to_thread(thumbnail, path, size, request.app[RUNNER].outputs_dir / FOLDER)
    headers = {"ETag": thumb.etag, "Cache-Control": "no-cache"}  # no-cache: revalidate, a 304 is cheap
    if matches(request.headers.get("If-None-Match"), thumb.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=await asyncio.to_thread(thumb.path.read_bytes), content_type="image/jpeg",
                        headers=headers)

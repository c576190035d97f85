"""Bounds on what an outside service (ComfyUI, a backend, Ollama) may answer the daemon.

An answer is read in pieces and refused past its bound, before it is held whole: a server that is broken
or hostile cannot make the daemon hold gigabytes (a 6.5 GB Ollama answer kept 12.3 GB). The whole time
of each call is its client's own timeout (aiohttp's `ClientTimeout(total=...)`, `asyncio.wait_for`
round an Ollama call); a bounded answer is what lets that timeout act, since one huge JSON line parsed
at once held the event loop 40 s past a 15 s `ollama_timeout`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the CLI's doctor too, which loads aiohttp only when it probes
    import aiohttp

MAX_JSON_ANSWER = 64 * 1024 * 1024  # ComfyUI's full /object_info is ~0.5 MB; a chat answer a few KB
MAX_FILE_ANSWER = 1024 * 1024 * 1024  # an image ComfyUI made (`/view`): a 4x print of a large page fits
READ_CHUNK = 1024 * 1024


class AnswerTooLarge(Exception):
    """An outside service answered more than `limit` bytes; each client turns it into its own code."""

    def __init__(self, limit: int, size: int | None = None):
        self.limit = limit
        self.size = size
        super().__init__(f"an answer of {size if size is not None else 'over ' + str(limit)} bytes; at most "
                         f"{limit} are read")


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of `resp`, read in pieces; `AnswerTooLarge` as soon as it passes `limit` (at once when
    Content-Length says so)."""
    if resp.content_length is not None and resp.content_length > limit:
        raise AnswerTooLarge(limit, resp.content_length)
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)

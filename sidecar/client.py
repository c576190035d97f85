"""The daemon's HTTP client, for every tool that talks to a running daemon: `generate`, `dataset reg`,
`loras sweep`, `doctor --bench`.

Transport failures and answers become two exceptions of the error tree (`sidecar.errors`), which
carry their exit codes:
`DaemonUnavailable` (nothing answers, or what answers is not the daemon) and `DaemonRefused` (the
daemon's error body: status, stable code, message, details; `device_busy` for a training in progress).

`run()` submits a job and follows it to the end: progress comes from the `GET /events` WebSocket,
opened *before* the job is posted so no event is missed, and `GET /jobs/{id}` is polled as a backstop
(a dropped socket, an event lost to a slow client). `wait()` only polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, Self

import aiohttp

from sidecar.errors import DaemonRefused, DaemonUnavailable
from sidecar.statuses import JOB_TERMINAL

if TYPE_CHECKING:
    from sidecar.config import Settings

POLL_INTERVAL = 2.0  # backstop poll while the event socket is up
POLL_INTERVAL_NO_EVENTS = 0.5


class DaemonClient:
    def __init__(self, base_url: str, *, timeout: float | None = None, token: str | None = None):
        """`timeout` bounds each request; None leaves a long job's requests unbounded (the daemon has
        its own inactivity timeout) while connecting and each read still time out. `token` is the daemon's
        (the `token` setting): sent as `Authorization: Bearer` on every request and the /events upgrade."""
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=10, sock_read=120)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_settings(cls, settings: Settings, url: str | None = None, *, timeout: float | None = None) -> Self:
        """A client of the daemon these settings describe: its URL (unless `url`) and its token."""
        return cls(url or settings.daemon_url, timeout=timeout, token=settings.token_value)

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with DaemonClient(...)`"
        return self._session

    def _down(self, exc: BaseException) -> DaemonUnavailable:
        return DaemonUnavailable(
            f"The sidecar daemon is not running at {self.base_url} (nothing answers there). "
            "Start it with `sidecar serve` (see `sidecar serve --help`).",
            {"url": self.base_url, "reason": f"{type(exc).__name__}: {exc}"},
        )

    async def request(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
                      raw: bool = False) -> Any:
        """The answer's JSON (its bytes with `raw`), or one of the two exceptions."""
        try:
            async with self.session.request(method, self.base_url + path, json=json, params=params) as resp:
                if raw and resp.status < 400:
                    return await resp.read()
                text = await resp.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise self._down(exc) from None
        try:
            body = jsonlib.loads(text) if text else None
        except ValueError:
            body = None
        if resp.status < 400 and body is not None:
            return body
        if resp.status < 400 and method != "GET":
            return None  # an empty 2xx answer (none of ours today, but not an error)
        self._raise_for(resp.status, body, text, f"{method} {path}")

    def _raise_for(self, status: int, body: Any, text: str, what: str) -> NoReturn:
        try:
            err = body["error"]
            code, message = str(err["code"]), str(err["message"])
        except (KeyError, TypeError):
            # Not our error shape: something else listens there (another service on the port).
            raise DaemonUnavailable(
                f"What answers at {self.base_url} is not the sidecar daemon ({status} to {what}, not its JSON). "
                "Start the daemon with `sidecar serve`.",
                {"url": self.base_url, "status": status, "body": text[:200]},
            ) from None
        raise DaemonRefused(status, code, message, err.get("details") or {})

    # -- the generation API
    async def health(self) -> dict[str, Any]:
        return await self.request("GET", "/health")

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.request("POST", "/jobs", json=body)

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self.request("GET", f"/jobs/{job_id}")

    async def image(self, job: str | dict[str, Any]) -> bytes:
        """A finished job's PNG, by id or from the job's own `output.url`."""
        if isinstance(job, dict):
            url = (job.get("output") or {}).get("url") or f"/jobs/{job['id']}/image"
        else:
            url = f"/jobs/{job}/image"
        return await self.request("GET", url, raw=True)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        return await self.request("POST", f"/jobs/{job_id}/cancel")

    async def cancel_quietly(self, job_id: str) -> None:
        """Best effort, on the way out (Ctrl-C): never raises, never waits long."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.cancel(job_id), 5)

    async def wait(self, job_id: str, *, poll_interval: float,
                   on_progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Poll until the job ends; `on_progress(step, total)` on every answer."""
        while True:
            job = await self.job(job_id)
            if on_progress is not None:
                progress = job.get("progress") or {}
                on_progress(int(progress.get("step") or 0), int(progress.get("total") or 0))
            if job.get("status") in JOB_TERMINAL:
                return job
            await asyncio.sleep(poll_interval)

    async def run(self, body: dict[str, Any], on_update: Callable[[dict[str, Any]], None],
                  on_preview: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Submit a job and follow it to a terminal state; returns the final job JSON. If we are
        cancelled (Ctrl-C) while it is queued or running, the job is cancelled on the daemon too.
        `on_preview` gets the job's `job.preview` events (live previews) as they come."""
        ws = await self._events()
        job: dict[str, Any] | None = None
        try:
            job = await self.submit(body)
            on_update(job)
            return await self._follow(job, ws, on_update, on_preview)
        except asyncio.CancelledError:
            if job is not None:
                await self.cancel_quietly(job["id"])
            raise
        finally:
            if ws is not None:
                await ws.close()

    async def _events(self) -> aiohttp.ClientWebSocketResponse | None:
        try:
            return await self.session.ws_connect(self.base_url + "/events", heartbeat=30)
        except aiohttp.WSServerHandshakeError:
            return None  # no event stream: polling alone still works
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise self._down(exc) from None

    async def _follow(self, job: dict[str, Any], ws: aiohttp.ClientWebSocketResponse | None,
                      on_update: Callable[[dict[str, Any]], None],
                      on_preview: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        job_id = job["id"]
        while job["status"] not in JOB_TERMINAL:
            event = None
            if ws is not None and not ws.closed:
                try:
                    async with asyncio.timeout(POLL_INTERVAL):  # not wait_for: on 3.11 it can drop a Ctrl-C
                        msg = await ws.receive()
                except TimeoutError:
                    msg = None
                if msg is not None:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        with contextlib.suppress(ValueError):
                            event = msg.json()
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                      aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                        ws = None
                        continue
            else:
                await asyncio.sleep(POLL_INTERVAL_NO_EVENTS)
            if isinstance(event, dict) and event.get("type") == "job.preview":
                if on_preview is not None and event.get("jobId") == job_id:
                    on_preview(event)
                continue
            if event is not None:
                seen = event.get("job") if isinstance(event, dict) else None
                if not isinstance(seen, dict) or seen.get("id") != job_id:
                    continue
                job = seen
            else:
                try:
                    job = await self.job(job_id)
                except DaemonUnavailable as exc:
                    raise DaemonUnavailable(
                        f"The sidecar daemon at {self.base_url} stopped answering while job {job_id} was "
                        f"{job['status']}. Start it again with `sidecar serve`: it keeps its jobs, and "
                        "running this command again submits a new one.", {**exc.details, "jobId": job_id},
                    ) from None
            on_update(job)
        # The event's snapshot may predate the stored record (output, timings): read it once more.
        return await self.job(job_id)

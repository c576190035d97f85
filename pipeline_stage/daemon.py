"""HTTP client for the sidecar daemon: submit a job, follow it to the end, fetch its image, cancel it.

Progress comes from the `GET /events` WebSocket, opened *before* the job is posted so no event is
missed; `GET /jobs/{id}` is polled as a backstop (a dropped socket, an event lost to a slow client).
Daemon answers become the stage's errors here, once: refused connection -> DaemonNotRunning,
409 training -> DeviceBusy, other 4xx -> RequestRefused, 5xx -> JobFailedError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
from collections.abc import Callable
from typing import Any, NoReturn

import aiohttp

from pipeline_stage.errors import DaemonNotRunning, DeviceBusy, JobFailedError, RequestRefused

DEFAULT_URL = "http://127.0.0.1:3000"
TERMINAL = {"succeeded", "failed", "cancelled"}
POLL_INTERVAL = 2.0  # backstop poll while the WebSocket is up
POLL_INTERVAL_NO_EVENTS = 0.5


def format_eta(seconds: float | None) -> str:
    if not seconds:
        return "ETA unknown"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"about {hours} h {minutes:02d} min left"
    return f"about {minutes} min {secs:02d} s left" if minutes else f"about {secs} s left"


def busy_error(body: dict[str, Any]) -> DeviceBusy:
    err = body.get("error", {})
    training = (err.get("details") or {}).get("training") or {}
    step, total = training.get("step"), training.get("total")
    progress = f"step {step}/{total}" if step is not None and total else "starting"
    return DeviceBusy(
        f"The device is busy with LoRA training {training.get('id', '?')} ({progress}, "
        f"{format_eta(training.get('etaSeconds'))}). Generation is refused until it ends; run again then.",
        {"training": training, "daemonMessage": err.get("message")},
    )


class DaemonClient:
    def __init__(self, base_url: str = DEFAULT_URL):
        self.base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DaemonClient:
        # No total timeout: a render can take minutes; the daemon has its own inactivity timeout.
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_read=120))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use `async with DaemonClient(...)`"
        return self._session

    def _down(self, exc: BaseException) -> DaemonNotRunning:
        return DaemonNotRunning(
            f"The sidecar daemon is not running at {self.base_url} (nothing answers there). Start it with "
            "`sidecar serve` (see `sidecar serve --help`), or point --daemon at the one running.",
            {"url": self.base_url, "reason": f"{exc.__class__.__name__}: {exc}"},
        )

    async def _request(self, method: str, path: str, *, json: Any = None, raw: bool = False) -> Any:
        try:
            async with self.session.request(method, self.base_url + path, json=json) as resp:
                if raw and resp.status < 400:
                    return await resp.read()
                text = await resp.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise self._down(exc) from None
        try:
            body = jsonlib.loads(text)
        except ValueError:
            body = None
        if resp.status < 400 and body is not None:
            return body
        self._raise_for(resp.status, body, text, path)

    def _raise_for(self, status: int, body: Any, text: str, path: str) -> NoReturn:
        try:
            err = body["error"]
            code, message = str(err["code"]), str(err["message"])
        except (KeyError, TypeError):
            # Not our error shape: something else listens there (another service on the port).
            raise DaemonNotRunning(
                f"What answers at {self.base_url} is not the sidecar daemon ({status} to {path}, not its JSON). "
                "Start the daemon with `sidecar serve`, or point --daemon at it.",
                {"url": self.base_url, "status": status, "body": text[:200]},
            ) from None
        details = {"status": status, "daemonCode": code, **(err.get("details") or {})}
        if status == 409 and code == "training_in_progress":
            raise busy_error(body)
        if 400 <= status < 500:
            raise RequestRefused(f"The daemon refused the request: {message}", details, code=code)
        raise JobFailedError(f"The daemon could not run the job: {message}", details, code=code)

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", "/jobs", json=body)

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/jobs/{job_id}")

    async def image(self, job: dict[str, Any]) -> bytes:
        url = (job.get("output") or {}).get("url") or f"/jobs/{job['id']}/image"
        return await self._request("GET", url, raw=True)

    async def cancel(self, job_id: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._request("POST", f"/jobs/{job_id}/cancel"), 5)

    async def _events(self) -> aiohttp.ClientWebSocketResponse | None:
        try:
            return await self.session.ws_connect(self.base_url + "/events", heartbeat=30)
        except aiohttp.WSServerHandshakeError:
            return None  # no event stream: polling alone still works
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise self._down(exc) from None

    async def run(self, body: dict[str, Any], on_update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Submit a job and follow it to a terminal state; returns the final job JSON. If we are
        cancelled (Ctrl-C) while it is queued or running, the job is cancelled on the daemon too."""
        ws = await self._events()
        job: dict[str, Any] | None = None
        try:
            job = await self.submit(body)
            on_update(job)
            return await self._follow(job, ws, on_update)
        except asyncio.CancelledError:
            if job is not None:
                await self.cancel(job["id"])
            raise
        finally:
            if ws is not None:
                await ws.close()

    async def _follow(self, job: dict[str, Any], ws: aiohttp.ClientWebSocketResponse | None,
                      on_update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        job_id = job["id"]
        while job["status"] not in TERMINAL:
            event = None
            if ws is not None and not ws.closed:
                try:
                    msg = await asyncio.wait_for(ws.receive(), POLL_INTERVAL)
                except asyncio.TimeoutError:
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
            if event is not None:
                seen = event.get("job") if isinstance(event, dict) else None
                if not isinstance(seen, dict) or seen.get("id") != job_id:
                    continue
                job = seen
            else:
                try:
                    job = await self.job(job_id)
                except DaemonNotRunning as exc:
                    raise DaemonNotRunning(
                        f"The sidecar daemon at {self.base_url} stopped answering while job {job_id} was "
                        f"{job['status']}. Start it again with `sidecar serve`: it keeps its jobs, and "
                        "running this command again submits a new one.", {**exc.details, "jobId": job_id},
                    ) from None
            on_update(job)
        # The event's snapshot may predate the stored record (output, timings): read it once more.
        return await self.job(job_id)

"""A small HTTP client of the daemon's generation API (POST /jobs, GET /jobs/{id}, its image, cancel)
for the tools that render through a running daemon (`dataset reg`, `doctor --bench`).

It turns transport failures and error bodies into three exceptions the CLIs map to exit codes:
the daemon is not there, the device is busy training, or it refused/failed the job.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

TERMINAL = {"succeeded", "failed", "cancelled"}


class DaemonUnavailable(Exception):
    """Nothing answers at the daemon's URL."""


class DaemonRefused(Exception):
    """An error body from the daemon: `code`, `message`, `details`, and the HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}

    @property
    def device_busy(self) -> bool:
        return self.code == "training_in_progress"


class DaemonClient:
    def __init__(self, base_url: str, *, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> DaemonClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()

    async def _request(self, method: str, path: str, **kwargs) -> aiohttp.ClientResponse:
        assert self._session is not None, "use `async with DaemonClient(...)`"
        try:
            resp = await self._session.request(method, f"{self.base_url}{path}", **kwargs)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise DaemonUnavailable(
                f"The daemon does not answer at {self.base_url} ({type(exc).__name__}); "
                "start it with `sidecar serve`."
            ) from None
        if resp.status >= 400:
            body: Any = None
            try:
                body = await resp.json(content_type=None)
            except (ValueError, aiohttp.ClientError):
                pass
            resp.release()
            err = body.get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                raise DaemonRefused(resp.status, str(err.get("code")), str(err.get("message")), err.get("details"))
            raise DaemonRefused(resp.status, "http_error", f"{method} {path} answered HTTP {resp.status}.")
        return resp

    async def health(self) -> dict[str, Any]:
        resp = await self._request("GET", "/health")
        return await resp.json()

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self._request("POST", "/jobs", json=body)
        return await resp.json()

    async def job(self, job_id: str) -> dict[str, Any]:
        resp = await self._request("GET", f"/jobs/{job_id}")
        return await resp.json()

    async def image(self, job_id: str) -> bytes:
        resp = await self._request("GET", f"/jobs/{job_id}/image")
        return await resp.read()

    async def cancel(self, job_id: str) -> None:
        resp = await self._request("POST", f"/jobs/{job_id}/cancel")
        resp.release()

    async def wait(self, job_id: str, *, poll_interval: float, on_progress=None) -> dict[str, Any]:
        """Poll until the job ends; `on_progress(step, total)` on every answer."""
        while True:
            job = await self.job(job_id)
            if on_progress is not None:
                progress = job.get("progress") or {}
                on_progress(int(progress.get("step") or 0), int(progress.get("total") or 0))
            if job.get("status") in TERMINAL:
                return job
            await asyncio.sleep(poll_interval)

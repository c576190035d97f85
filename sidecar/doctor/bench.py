"""`sidecar doctor --bench`: the hardware check of INFRA-04 (512x512, 20 steps, Euler a, the configured
checkpoint, under 2 minutes) through a running daemon or, when none answers, an in-process one.

Never an in-process daemon on a data dir another daemon owns (its lock): that one is used, at the port
its lock file records, or the bench says it does not answer.
"""

from __future__ import annotations

import time
from typing import Any

from sidecar.config import Settings, http_url
from sidecar.datadir_lock import locked_by
from sidecar.errors import DataDirLocked

BENCH_LIMIT_S = 120.0  # INFRA-04: under 2 minutes
BENCH_PROMPT = "anime character, full body, standing, simple background"


async def run_bench(settings: Settings, url: str, runs: int, poll_interval: float,
                    backend: Any = None) -> dict[str, Any]:
    """Render the INFRA-04 job `runs` times through the daemon at `url`, or, when none answers there,
    through an in-process daemon on the configured engine (`backend` overrides it, for tests)."""
    from sidecar.client import DaemonClient, DaemonUnavailable

    result: dict[str, Any] = {"resolution": "512x512", "steps": 20, "sampler": "euler_ancestral",
                              "checkpoint": settings.checkpoint, "limitSeconds": BENCH_LIMIT_S, "runs": []}
    runner = None
    try:
        async with DaemonClient(url, timeout=30, token=settings.token_value) as probe:
            health = await probe.health()
        result["source"] = f"daemon at {url}"
    except DaemonUnavailable:
        owner = locked_by(settings.data_dir)
        if owner is not None:
            url, health = await _owner_daemon(settings, url, owner)
            result["source"] = f"daemon at {url} (the one that owns {settings.data_dir})"
        else:
            # The in-process daemon takes the lock itself: one started meanwhile makes it fail, not share.
            runner, url, health = await _start_in_process(settings, backend)
            result["source"] = "in-process daemon (no daemon was running)"
    result.update(engine=health.get("engine"), device=health.get("device"))
    try:
        async with DaemonClient(url, timeout=60, token=settings.token_value) as client:
            for i in range(runs):
                body = {"prompt": BENCH_PROMPT, "seed": 42 + i, "steps": 20, "cfg": 7.0, "sampler": "euler_ancestral",
                        "scheduler": "normal", "resolution": {"width": 512, "height": 512},
                        "checkpoint": settings.checkpoint}
                started = time.monotonic()
                job = await client.submit(body)
                job = await client.wait(job["id"], poll_interval=poll_interval)
                seconds = time.monotonic() - started
                run = {"jobId": job["id"], "status": job["status"], "seconds": round(seconds, 2),
                       "renderSeconds": round(job["durationMs"] / 1000, 2) if job.get("durationMs") else None}
                if job.get("error"):
                    run["error"] = job["error"]
                result["runs"].append(run)
                if job["status"] != "succeeded":
                    break
    finally:
        if runner is not None:
            await runner.cleanup()
    last = result["runs"][-1] if result["runs"] else None
    result["underLimit"] = bool(last and last["status"] == "succeeded" and last["seconds"] < BENCH_LIMIT_S)
    return result


async def _owner_daemon(settings: Settings, url: str, owner: Any) -> tuple[str, dict[str, Any]]:
    """The daemon that owns the data dir, at the port its lock records; DataDirLocked when it does not answer."""
    from sidecar.client import DaemonClient, DaemonUnavailable

    if owner.port:
        owner_url = settings.model_copy(update={"port": owner.port}).daemon_url
        if owner_url != url:
            try:
                async with DaemonClient(owner_url, timeout=30, token=settings.token_value) as probe:
                    return owner_url, await probe.health()
            except DaemonUnavailable:
                pass
    raise DataDirLocked(
        f"No daemon answers at {url}, and the data dir {settings.data_dir} belongs to another sidecar daemon "
        f"({owner.describe()}) that does not answer either: the bench starts no second daemon on it. Start the "
        "bench again once that daemon answers (or stop it), or pass --url.",
        {"dataDir": str(settings.data_dir), "pid": owner.pid, "port": owner.port, "url": url},
    )


async def _start_in_process(settings: Settings, backend: Any = None):
    from aiohttp import web

    from sidecar.api.app import create_app
    from sidecar.api.keys import DATADIR_LOCK
    from sidecar.client import DaemonClient

    runner = web.AppRunner(create_app(settings, backend), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    runner.app[DATADIR_LOCK].record_port(port)
    url = http_url("127.0.0.1", port)
    async with DaemonClient(url, token=settings.token_value) as client:
        health = await client.health()
    return runner, url, health



"""Issue 23: how long `/health` takes while the daemon is busy with requests, not with rendering.

    .venv/bin/python bench/health_under_load.py              # 100 concurrent submits; 20 x 1 MB full listings
    .venv/bin/python bench/health_under_load.py --submits 50

A real `sidecar serve` in its own process (embedded engine, tiny models made in a temp dir, so the jobs
queue and render as they would). A separate thread with its own event loop and connection polls
`/health` every 10 ms, so the client's own work never delays a probe. Two loads, one after the other:

1. full listings: 20 jobs whose workflows are 1 MB each (written into the database before the start),
   and `GET /jobs?full=1` (its default page) asked 10 times, 4 at a time (a dashboard showing workflows);
2. submits: `--submits` `POST /jobs` sent at once (what `generate --all` on a long chapter does), first
   with the queue paused (the request path alone), then again with the tiny renders running.

Prints p50, p99 and max of `/health` during each load (and idle, for scale), the bytes of one full
listing page, and writes `bench/results/health-under-load.json`. The goal in the issue: p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, record, stats  # noqa: E402
from sidecar.jobs.params import JobParams  # noqa: E402
from sidecar.jobs.store import JobRecord, JobStore  # noqa: E402

GOAL_MS = 50.0
BIG_JOBS, BIG_BYTES = 20, 1_000_000


class Prober(threading.Thread):
    """Polls /health from its own loop; `mark(name)` starts recording under that name."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.phase, self.stop = url, "idle", False
        self.times: dict[str, list[float]] = {}

    def run(self) -> None:
        asyncio.run(self._poll())

    async def _poll(self) -> None:
        async with aiohttp.ClientSession() as http:
            while not self.stop:
                started = time.perf_counter()
                async with http.get(f"{self.url}/health") as resp:
                    await resp.read()
                self.times.setdefault(self.phase, []).append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.01)


async def big_jobs(db: Path) -> None:
    store = JobStore(db)
    await store.open()
    for i in range(BIG_JOBS):
        await store.insert(JobRecord(id=f"big{i:029d}", status="succeeded", params=JobParams(prompt="p"),
                                     template=None, engine="embedded",
                                     workflow={"1": {"class_type": "Note", "inputs": {"text": "w" * BIG_BYTES}}}))
    await store.close()


async def load(url: str, prober: Prober, submits: int) -> dict[str, int]:
    sizes = {}
    async with aiohttp.ClientSession() as http:
        prober.phase = "full listings"
        gate = asyncio.Semaphore(4)

        async def listing() -> int:
            async with gate, http.get(f"{url}/jobs?full=1") as resp:
                return len(await resp.read())

        pages = await asyncio.gather(*(listing() for _ in range(10)))
        sizes["fullPageBytes"] = max(pages)
        prober.phase = "between"
        body = {"prompt": "spyke_plasma_v1, full body", "steps": 2, "resolution": {"width": 64, "height": 64}}

        async def submit(seed: int) -> int:
            async with http.post(f"{url}/jobs", json={**body, "seed": seed}) as resp:
                await resp.read()
                return resp.status

        async def pause(paused: bool) -> None:
            async with http.post(f"{url}/queue/{'pause' if paused else 'resume'}") as resp:
                await resp.read()

        # The submits alone (the queue paused: nothing renders), then with the renders running.
        await pause(True)
        await asyncio.sleep(0.5)
        prober.phase = "submits, paused"
        statuses = await asyncio.gather(*(submit(s) for s in range(submits)))
        await asyncio.sleep(0.5)
        prober.phase = "between"
        await pause(False)
        await asyncio.sleep(0.5)
        prober.phase = "submits, rendering"
        statuses += await asyncio.gather(*(submit(s) for s in range(submits, 2 * submits)))
        await asyncio.sleep(0.5)
        sizes["submitsAccepted"] = sum(1 for s in statuses if s == 202)
        prober.phase = "after"
        await pause(True)  # the rest stays queued: a quick stop
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submits", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models, data = Path(tmp) / "models", Path(tmp) / "data"
        subprocess.run([sys.executable, "-m", "sidecar.cli", "models", "make-tiny", "--out", str(models)],
                       check=True, capture_output=True)
        asyncio.run(big_jobs(data / "sidecar.db"))
        port = free_port()
        config = Path(tmp) / "empty.toml"
        config.touch()
        env = {**os.environ, "SIDECAR_MODELS_DIR": str(models), "SIDECAR_CHECKPOINT": "tiny-sd15.safetensors",
               "SIDECAR_ENGINE": "embedded", "SIDECAR_DEVICE": "cpu"}
        proc = subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--data-dir",
                                 str(data), "--config", str(config)],
                                env=env, stdout=subprocess.DEVNULL, stderr=(Path(tmp) / "serve.log").open("wb"))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"the daemon did not start: {(Path(tmp) / 'serve.log').read_text()[-2000:]}")
                    time.sleep(0.2)
            prober = Prober(url)
            prober.start()
            time.sleep(2.0)
            sizes = asyncio.run(load(url, prober, args.submits))
            time.sleep(1.0)
            prober.stop = True
            prober.join(timeout=10)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    result = {"benchmark": "health-under-load", "submits": args.submits, "bigJobs": BIG_JOBS,
              "bigWorkflowBytes": BIG_BYTES, **sizes, "goalMs": GOAL_MS, "machine": platform.platform(),
              "cpus": os.cpu_count(), "loadavg": os.getloadavg()[0],
              "recordedAt": time.strftime("%Y-%m-%dT%H:%M:%S"), "healthMs": {}}
    for phase in ("idle", "full listings", "submits, paused", "submits, rendering"):
        figures = stats(prober.times.get(phase, [0.0]))
        result["healthMs"][phase] = figures
        print(f"/health during {phase:<20} p50 {figures['p50']} ms  p99 {figures['p99']} ms  max {figures['max']} ms"
              f"  ({figures['n']} probes)")
    print(json.dumps(sizes))
    record("health-under-load", result)


if __name__ == "__main__":
    main()

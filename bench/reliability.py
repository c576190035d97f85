"""Reliability soak: load, listeners, kill -9 and SIGTERM against the real daemon.

    .venv/bin/python bench/reliability.py                      # 100 jobs, 20 listeners, 5 kill rounds
    .venv/bin/python bench/reliability.py --jobs 30 --kills 2  # quicker

`sidecar serve` runs as a real subprocess attached to the fake ComfyUI (`tests/fake_comfyui.py`), which
runs on its own event loop in a thread of this process (the listeners and submitters use the main
loop); `/health` is timed from a separate process, so its figures are the daemon's, not this script's.

1. Load: 20 `/events` listeners, then `--jobs` POST /jobs at once, `/health` polled every 20 ms until
   all are done. Checked: every job succeeds; jobs start in submission order (FIFO); ComfyUI never holds
   two of our prompts at once; every listener sees every job's `job.succeeded`. Reported: `/health`
   p50/p99/max (issue 11's goal: p99 < 50 ms), jobs per second.
2. SIGTERM with the 20 listeners still connected: seconds until the process exits (issue 18: within 5 s;
   it was 32-46 s with one listener).
3. Kill soak: `--kills` rounds of a submit burst cut by SIGKILL at a random moment, then a restart.
   Checked at the end: every job that exists succeeded, each one's prompt ran exactly once in ComfyUI,
   every PNG decodes, no temp file is left.

Writes `bench/results/reliability.json` and prints the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, stats  # noqa: E402
from tests.fake_comfyui import FakeComfyUI, make_comfy_home  # noqa: E402

DONE = {"succeeded", "failed", "cancelled"}
BODY = {"prompt": "spyke_plasma_v1, full body", "loraId": "spyke_plasma_v1", "steps": 4}


# Times GET /health every 20 ms over one keep-alive connection until the stop file appears, and the
# fake ComfyUI's GET /system_stats (which /health asks) just before each, to tell the daemon's share.
HEALTH_POLLER = """
import http.client, json, os, sys, time
daemon = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
comfy = http.client.HTTPConnection("127.0.0.1", int(sys.argv[3]), timeout=60)
out = {"health": [], "comfyui_system_stats": []}
while not os.path.exists(sys.argv[2]):
    for conn, path, key in ((comfy, "/system_stats", "comfyui_system_stats"), (daemon, "/health", "health")):
        t = time.perf_counter()
        conn.request("GET", path)
        conn.getresponse().read()
        out[key].append((time.perf_counter() - t) * 1000)
    time.sleep(0.02)
print(json.dumps(out))
"""


class ComfyThread:
    """The fake ComfyUI on its own loop and thread."""

    def __init__(self, home: Path, step_delay: float):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake = self.call(self._make(home, step_delay))

    async def _make(self, home: Path, step_delay: float) -> FakeComfyUI:
        fake = FakeComfyUI(make_comfy_home(home), step_delay=step_delay)
        await fake.start()
        return fake

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self) -> None:
        self.call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Daemon:
    def __init__(self, data_dir: Path, comfy: FakeComfyUI):
        self.data_dir, self.comfy = data_dir, comfy
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        config = self.data_dir.parent / "empty.toml"
        config.touch()
        log = (self.data_dir.parent / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--comfyui-url", self.comfy.url, "--config", str(config)],
            env={**os.environ, "SIDECAR_HISTORY_POLL_INTERVAL": "0.5"}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited {self.proc.returncode}; see {log.name}")
            try:
                async with http.get(self.url + "/health") as resp:
                    if resp.status == 200 and (await resp.json())["comfyui"]:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise SystemExit("the daemon did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


async def submit(http: aiohttp.ClientSession, d: Daemon, seed: int) -> dict[str, Any] | None:
    try:
        async with http.post(d.url + "/jobs", json={**BODY, "seed": seed}) as resp:
            return await resp.json() if resp.status == 202 else None
    except aiohttp.ClientError:
        return None  # cut by a kill: the job may or may not exist, and must come out right either way


async def wait_all(http: aiohttp.ClientSession, d: Daemon, timeout: float = 600) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(d.url + "/jobs?limit=500") as resp:
            jobs = (await resp.json())["jobs"]
        if all(j["status"] in DONE for j in jobs) or time.monotonic() > deadline:
            return jobs
        await asyncio.sleep(0.2)


async def listen(ws: aiohttp.ClientWebSocketResponse, seen: set[str]) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(msg.data)
            if event["type"] == "job.succeeded":
                seen.add(event["job"]["id"])


async def load(http: aiohttp.ClientSession, d: Daemon, comfy: FakeComfyUI, jobs: int, listeners: int) -> dict:
    overlaps: list[tuple[list[str], str | None]] = []
    accept = comfy._accept

    def checked_accept(state: Any, *args: Any, **kwargs: Any) -> str:
        overlaps.append(([i.prompt_id for i in state.pending], state.running.prompt_id if state.running else None))
        return accept(state, *args, **kwargs)

    comfy._accept = checked_accept  # type: ignore[method-assign]
    sockets = [await http.ws_connect(d.url + "/events") for _ in range(listeners)]
    seen: list[set[str]] = [set() for _ in sockets]
    readers = [asyncio.create_task(listen(ws, s)) for ws, s in zip(sockets, seen)]
    # Baseline: /health with the listeners connected and nothing running, on this machine as it is now.
    idle_stop = d.data_dir.parent / "stop-idle-poller"
    idle = subprocess.Popen([sys.executable, "-c", HEALTH_POLLER, str(d.port), str(idle_stop), str(comfy.port)],
                            stdout=subprocess.PIPE, text=True)
    await asyncio.sleep(5)
    idle_stop.touch()
    idle_ms = json.loads((await asyncio.to_thread(idle.communicate, None, 60))[0])
    stop_file = d.data_dir.parent / "stop-health-poller"
    poller = subprocess.Popen([sys.executable, "-c", HEALTH_POLLER, str(d.port), str(stop_file), str(comfy.port)],
                              stdout=subprocess.PIPE, text=True)
    started = time.perf_counter()
    accepted = [j for j in await asyncio.gather(*(submit(http, d, seed) for seed in range(jobs))) if j]
    done = await wait_all(http, d)
    elapsed = time.perf_counter() - started
    stop_file.touch()
    health_ms = json.loads((await asyncio.to_thread(poller.communicate, None, 60))[0])
    await asyncio.sleep(0.5)  # the last events in flight
    by_start = sorted(done, key=lambda j: j["startedAt"] or "")
    fifo = [j["createdAt"] for j in by_start] == sorted(j["createdAt"] for j in done)
    result = {
        "jobs": jobs, "listeners": listeners, "accepted": len(accepted),
        "statuses": dict(Counter(j["status"] for j in done)),
        "fifo": fifo,
        "never_two_at_once": all(pending == [] and running is None for pending, running in overlaps),
        "every_listener_saw_every_job": all(s >= {j["id"] for j in done} for s in seen),
        "health_ms": stats(health_ms["health"]), "comfyui_system_stats_ms": stats(health_ms["comfyui_system_stats"]),
        "health_idle_ms": stats(idle_ms["health"]), "jobs_per_s": round(len(done) / elapsed, 1),
    }
    comfy._accept = accept  # type: ignore[method-assign]
    # 2. SIGTERM with every listener connected.
    assert d.proc is not None
    t = time.perf_counter()
    d.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(d.proc.wait, 60)
    result["sigterm_with_listeners_s"] = round(time.perf_counter() - t, 2)
    result["sigterm_exit_code"] = code
    await asyncio.wait(readers, timeout=5)  # each reader ends on the daemon's close frame
    result["listener_close_codes"] = dict(Counter(str(ws.close_code) for ws in sockets))
    for r in readers:
        r.cancel()
    return result


async def kill_soak(http: aiohttp.ClientSession, d: Daemon, comfy: FakeComfyUI, rounds: int, burst: int,
                    seed: int) -> dict:
    rng = random.Random(seed)
    executions_before = len(comfy.executions)
    with_answer = 0
    for r in range(rounds):
        batch = asyncio.gather(*(submit(http, d, 1000 + r * burst + i) for i in range(burst)))
        await asyncio.sleep(rng.uniform(0.05, 1.5))
        d.kill()
        with_answer += sum(1 for j in await batch if j)
        await d.start(http)
    jobs = await wait_all(http, d)
    ours = {j["promptId"] for j in jobs}
    ran = Counter(p for p in comfy.executions[executions_before:] if p in ours)
    outputs = d.data_dir / "outputs"
    torn = 0
    for j in jobs:
        if j["status"] == "succeeded":
            try:
                with Image.open(outputs / j["output"]["fileName"]) as img:
                    img.load()
            except OSError:
                torn += 1
    return {
        "rounds": rounds, "burst": burst, "jobs_answered_202": with_answer, "jobs_stored": len(jobs),
        "statuses": dict(Counter(j["status"] for j in jobs)),
        "prompts_run_twice": sum(1 for n in ran.values() if n > 1),
        "jobs_not_run": sum(1 for j in jobs if j["status"] == "succeeded" and ran[j["promptId"]] == 0
                            and j["promptId"] not in comfy.executions),
        "torn_pngs": torn, "temp_files_left": len(list(outputs.glob(".*"))),
    }


async def main(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        comfy_thread = ComfyThread(Path(tmp) / "comfy", args.step_delay)
        comfy = comfy_thread.fake
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            d = Daemon(Path(tmp) / "data", comfy)
            await d.start(http)
            loaded = await load(http, d, comfy, args.jobs, args.listeners)
            await d.start(http)
            soak = await kill_soak(http, d, comfy, args.kills, args.burst, args.seed)
            assert d.proc is not None
            d.proc.terminate()
            d.proc.wait(30)
        comfy_thread.stop()
    return {"load": loaded, "kill_soak": soak}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--listeners", type=int, default=20)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.005, help="the fake ComfyUI's seconds per step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    args = parser.parse_args()
    figures = asyncio.run(main(args))
    figures["conditions"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                             "load_average": os.getloadavg(), "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))

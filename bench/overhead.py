"""Daemon overhead: jobs through `sidecar serve` vs the same prompts posted straight to ComfyUI.

    .venv/bin/python bench/overhead.py            # 100 jobs each way, 20 steps, 512x768
    .venv/bin/python bench/overhead.py --jobs 20  # quicker

The fake ComfyUI (`tests/fake_comfyui.py`, no step delay) runs in this process; the daemon runs as a
real subprocess attached to it. Jobs alternate: one through the daemon (POST /jobs, done when
`job.succeeded` arrives on /events; the daemon has fetched and written the PNG by then), then the
daemon's own filled workflow with a new seed posted straight to the fake the way a minimal client
would (WebSocket open, POST /prompt, wait for `executing null`, GET /history, GET /view). Added
latency = daemon job time - direct time, per pair. Completion notice = when `job.succeeded` reached
this process minus when the fake sent `executing null` for that prompt (same clock; negative when the
daemon finished on `execution_success`, which comes first). Issue 3's goal: added p50 <= 5 ms,
p99 <= 20 ms, completion noticed within 50 ms. Writes `bench/results/overhead.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, stats  # noqa: E402
from tests.fake_comfyui import FakeComfyUI, make_comfy_home  # noqa: E402

GOALS = {"added_p50_ms": 5.0, "added_p99_ms": 20.0, "notice_max_ms": 50.0}


async def wait_healthy(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with code {proc.returncode}")
        try:
            async with http.get(url + "/health") as resp:
                if resp.status == 200 and (await resp.json()).get("comfyui"):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("the daemon did not become healthy")


class Events:
    """The daemon's /events stream: job id -> time.monotonic() of its terminal event."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.done: dict[str, tuple[float, dict[str, Any]]] = {}
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(msg.data)
            if event.get("type") in ("job.succeeded", "job.failed", "job.cancelled"):
                self.done[event["job"]["id"]] = (time.monotonic(), event)
                self.changed.set()

    async def wait(self, job_id: str) -> tuple[float, dict[str, Any]]:
        while job_id not in self.done:
            self.changed.clear()
            await self.changed.wait()
        return self.done[job_id]


class DirectClient:
    """What a client without the daemon does: one socket, post, wait `executing null`, fetch."""

    def __init__(self, http: aiohttp.ClientSession, url: str):
        self.http = http
        self.url = url
        self.client_id = str(uuid.uuid4())
        self.finished: dict[str, asyncio.Event] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ws = await self.http.ws_connect(f"{self.url}/ws?clientId={self.client_id}", max_msg_size=0)
        await ws.receive()  # status with our sid: the socket is registered
        self.task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                m = json.loads(msg.data)
                data = m.get("data") or {}
                if m["type"] == "executing" and data.get("node") is None and "prompt_id" in data:
                    self.finished.setdefault(data["prompt_id"], asyncio.Event()).set()

    async def run(self, workflow: dict[str, Any]) -> float:
        prompt_id = str(uuid.uuid4())
        done = self.finished.setdefault(prompt_id, asyncio.Event())
        t0 = time.monotonic()
        async with self.http.post(f"{self.url}/prompt", json={"prompt": workflow, "client_id": self.client_id,
                                                               "prompt_id": prompt_id}) as resp:
            assert resp.status == 200, await resp.text()
        await done.wait()
        async with self.http.get(f"{self.url}/history/{prompt_id}") as resp:
            entry = (await resp.json())[prompt_id]
        image = next(iter(entry["outputs"].values()))["images"][0]
        async with self.http.get(f"{self.url}/view", params=image) as resp:
            assert resp.status == 200
            await resp.read()
        return time.monotonic() - t0


async def bench(jobs: int, warmup: int, steps: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]  # the machine is shared: other work shows up as added latency
    tmp = Path(tempfile.mkdtemp(prefix="sidecar-overhead-"))
    fake = FakeComfyUI(make_comfy_home(tmp / "ComfyUI"))
    await fake.start()
    port = free_port()
    daemon_url = f"http://127.0.0.1:{port}"
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115
    env = {**os.environ, "SIDECAR_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "serve", "--port", str(port), "--data-dir", str(tmp / "data"),
         "--comfyui-url", fake.url],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    added: list[float] = []
    daemon_s: list[float] = []
    direct_s: list[float] = []
    notice: list[float] = []
    submit: list[float] = []  # POST /jobs answered
    to_comfy: list[float] = []  # POST /jobs sent -> ComfyUI queued the prompt
    in_comfy: list[float] = []  # queued -> `executing null` (the fake's own work)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, daemon_url, proc)
            events = Events(await http.ws_connect(f"{daemon_url}/events"))
            direct = DirectClient(http, fake.url)
            await direct.start()
            for i in range(warmup + jobs):
                body = {"prompt": f"spyke_plasma_v1, panel {i}", "loraId": "spyke_plasma_v1", "seed": i,
                        "steps": steps}
                t0 = time.monotonic()
                async with http.post(f"{daemon_url}/jobs", json=body) as resp:
                    assert resp.status == 202, await resp.text()
                    job_id = (await resp.json())["id"]
                t_submitted = time.monotonic()
                t_event, event = await events.wait(job_id)
                job = event["job"]
                assert job["status"] == "succeeded", job
                through_daemon = t_event - t0
                # Events carry the job's summary; the filled workflow is on GET /jobs/{id} (untimed).
                async with http.get(f"{daemon_url}/jobs/{job_id}") as resp:
                    workflow = copy.deepcopy((await resp.json())["workflow"])
                for node in workflow.values():
                    if node["class_type"] == "KSampler":
                        node["inputs"]["seed"] = 1_000_000 + i  # a new seed: no cache hit
                straight = await direct.run(workflow)
                if i < warmup:
                    continue
                daemon_s.append(through_daemon)
                direct_s.append(straight)
                added.append((through_daemon - straight) * 1000)
                pid = job["promptId"]
                notice.append((t_event - fake.finished_at[pid]) * 1000)
                submit.append((t_submitted - t0) * 1000)
                to_comfy.append((fake.accepted_at[pid] - t0) * 1000)
                in_comfy.append((fake.finished_at[pid] - fake.accepted_at[pid]) * 1000)
    except BaseException:
        print(f"daemon log kept in {tmp / 'daemon.log'}", file=sys.stderr)
        raise
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        await fake.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "benchmark": "overhead",
        "jobs": jobs,
        "warmup_jobs": warmup,
        "steps": steps,
        "resolution": "512x768",
        "added_ms": stats(added),
        "daemon_job_ms": stats([s * 1000 for s in daemon_s]),
        "direct_job_ms": stats([s * 1000 for s in direct_s]),
        "completion_notice_ms": stats(notice),
        "daemon_phases_ms": {"post_jobs_answered": stats(submit), "until_prompt_queued": stats(to_comfy),
                             "prompt_in_comfyui": stats(in_comfy)},
        "goals": GOALS,
        "met": {
            "added_p50": stats(added)["p50"] <= GOALS["added_p50_ms"],
            "added_p99": stats(added)["p99"] <= GOALS["added_p99_ms"],
            "notice": stats(notice)["max"] <= GOALS["notice_max_ms"],
        },
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]},
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    args = parser.parse_args()
    result = asyncio.run(bench(args.jobs, args.warmup, args.steps))
    a, n = result["added_ms"], result["completion_notice_ms"]
    print(f"{args.jobs} jobs, {args.steps} steps, 512x768")
    print(f"daemon job  p50 {result['daemon_job_ms']['p50']:.1f} ms   direct p50 {result['direct_job_ms']['p50']:.1f} ms")
    print(f"added       p50 {a['p50']:.2f} ms   p99 {a['p99']:.2f} ms   (goal <= 5 / <= 20)")
    print(f"completion noticed after executing-null: p50 {n['p50']:.2f} ms  max {n['max']:.2f} ms  (goal <= 50)")
    ph = result["daemon_phases_ms"]
    print(f"daemon phases p50: POST /jobs answered {ph['post_jobs_answered']['p50']:.2f} ms, prompt queued in "
          f"ComfyUI after {ph['until_prompt_queued']['p50']:.2f} ms, ComfyUI work {ph['prompt_in_comfyui']['p50']:.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""A chapter over several backends: makespan against the ideal, and what routing costs per job.

    .venv/bin/python bench/backends.py              # 40 pages x 10 steps over 1, 2 and 4 backends
    .venv/bin/python bench/backends.py --pages 12   # quicker

Fake ComfyUI servers (`tests/fake_comfyui.py`) run in this process at different speeds (seconds per
sampler step: 0.05, 0.08, 0.12, 0.2; the first N for an N-backend run), each attached as one
`[[backends]]` table of a real daemon app (`create_app`, served on a local port, driven over HTTP).
All pages are submitted at once with `where = "pool"`, as `generate --where pool -c 1 --all` does.

- makespan: first submit to the last `succeeded`.
- ideal: total work / total speed = pages x steps / sum(1 / s_per_step): every backend busy until the
  same instant, with zero overhead and perfect foresight of the speeds.
- ideal with each server's own time per job (the fake's node work and PNG encoding on top of the
  steps, measured from its accept and finish times): pages / sum(1 / mean time per job), what perfect
  routing with zero daemon overhead would reach on these servers. makespan / this isolates the daemon.
- routing overhead per job: the time the router's planning takes for each pick (`router.plan` over the
  queue, timed), and each backend's idle gap between one prompt ending and its next prompt arriving
  (routing + fetching the image + writing the job; ComfyUI would be idle meanwhile).
Writes `bench/results/backends.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sidecar.backends.router as router  # noqa: E402
import sidecar.jobs.lanes as lanes_module  # noqa: E402
from sidecar.api.app import create_app  # noqa: E402
from sidecar.config.backends import BackendSpec  # noqa: E402
from sidecar.config import Settings  # noqa: E402
from tests.fake_comfyui import FakeComfyUI, make_comfy_home  # noqa: E402

SPEEDS = (0.05, 0.08, 0.12, 0.2)  # seconds per step of backends 1..4


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


async def run_once(n: int, pages: int, steps: int, tmp: Path) -> dict:
    fakes = []
    for i, delay in enumerate(SPEEDS[:n]):
        fake = FakeComfyUI(make_comfy_home(tmp / f"comfy{n}-{i}"), step_delay=delay, device_type="cuda")
        await fake.start()
        fakes.append(fake)
    settings = Settings(
        data_dir=tmp / f"data{n}", engine="embedded", history_poll_interval=1.0, backend_probe_interval=2.0,
        default_where="pool", max_queue=1000,
        # b0 stands for the laptop (local: the device lock), the others for remote GPUs.
        backends=[BackendSpec(name=f"b{i}", kind="comfyui", url=f.url, profile="cuda-24gb", tags=("pool",),
                              local=i == 0) for i, f in enumerate(fakes)])
    plan_times: list[float] = []
    real_plan = router.plan

    def timed_plan(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real_plan(*args, **kwargs)
        finally:
            plan_times.append(time.perf_counter() - t0)

    lanes_module.plan = timed_plan  # the lanes' picks (and /health's, not called here)
    app = create_app(settings)
    app_runner = web.AppRunner(app, access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{app_runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            start = time.monotonic()
            ids = []
            for page in range(pages):
                async with http.post(url + "/jobs", json={"prompt": f"spyke_plasma_v1, page {page + 1}",
                                                          "steps": steps, "seed": page}) as resp:
                    assert resp.status == 202, await resp.text()
                    ids.append((await resp.json())["id"])
            pending = set(ids)
            backends: dict[str, int] = {}
            while pending:
                await asyncio.sleep(0.05)
                for job_id in list(pending):
                    async with http.get(f"{url}/jobs/{job_id}") as resp:
                        job = await resp.json()
                    if job["status"] in ("succeeded", "failed", "cancelled"):
                        assert job["status"] == "succeeded", job
                        pending.discard(job_id)
                        backends[job["backend"]] = backends.get(job["backend"], 0) + 1
            makespan = time.monotonic() - start
    finally:
        lanes_module.plan = real_plan
        await app_runner.cleanup()
        for fake in fakes:
            await fake.stop()
    speed = sum(1 / d for d in SPEEDS[:n])  # steps per second, all backends together
    ideal = pages * steps / speed
    gaps = []
    per_job = []  # each server's mean seconds from accepting a prompt to finishing it
    for fake in fakes:
        runs = [fake.finished_at[p] - fake.accepted_at[p] for p in fake.accepted_at if p in fake.finished_at]
        per_job.append(statistics.fmean(runs))
        spans = sorted((fake.accepted_at[p], fake.finished_at[p]) for p in fake.accepted_at)
        gaps += [(b[0] - a[1]) * 1000 for a, b in zip(spans, spans[1:])]
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), "two prompts at once on one server"
    return {
        "backends": n, "secondsPerStep": list(SPEEDS[:n]), "pages": pages, "steps": steps,
        "makespanS": round(makespan, 2), "idealS": round(ideal, 2), "overIdeal": round(makespan / ideal, 3),
        "serverSecondsPerJob": [round(t, 3) for t in per_job],
        "idealWithServerTimeS": round(pages / sum(1 / t for t in per_job), 2),
        "overIdealWithServerTime": round(makespan / (pages / sum(1 / t for t in per_job)), 3),
        "jobsPerBackend": {f"b{i} ({SPEEDS[i]} s/step)": backends.get(f"b{i}", 0) for i in range(n)},
        "planMs": {"p50": round(pct(plan_times, 0.5) * 1000, 3), "p99": round(pct(plan_times, 0.99) * 1000, 3),
                   "calls": len(plan_times)},
        "idleGapMs": {"p50": round(pct(gaps, 0.5), 1), "p99": round(pct(gaps, 0.99), 1),
                      "mean": round(statistics.fmean(gaps), 1) if gaps else 0.0},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=40)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        for n in (1, 2, 4):
            result = await run_once(n, args.pages, args.steps, Path(tmp))
            runs.append(result)
            print(f"{n} backend(s): makespan {result['makespanS']} s, ideal {result['idealS']} s "
                  f"(x{result['overIdeal']}), with server time {result['idealWithServerTimeS']} s "
                  f"(x{result['overIdealWithServerTime']}), jobs {result['jobsPerBackend']}, plan p50 {result['planMs']['p50']} ms "
                  f"p99 {result['planMs']['p99']} ms, idle gap p50 {result['idleGapMs']['p50']} ms", flush=True)
    out = ROOT / "bench" / "results" / "backends.json"
    out.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                               "runs": runs}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())

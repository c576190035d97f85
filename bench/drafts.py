"""Issue 14: the draft funnel end to end against 13 full renders, side by side in one run.

    .venv/bin/python bench/drafts.py                      # tiny models, CPU, 512x768, 20 full / 8 draft steps
    .venv/bin/python bench/drafts.py --rounds 2 --width 256 --height 384

Starts the daemon in this process on the embedded engine (tiny random-weight models made in a temp
dir) and runs the real `generate` command as a subprocess, as the artist would, on a copy of the
example chapter:

- funnel:   `generate -c 1 --page 1 --drafts 12 --draft-steps 8`, then `generate ... --from-draft 1`
            (12 cheap drafts, then the chosen one at full steps as the page's version);
- baseline: 13 full-step renders of the same page through the same path (`--drafts 13 --draft-steps
            20`: the same variations group and the same saving, only the steps differ).

Rounds alternate funnel and baseline so load on the machine hits both alike. Prints the two side by
side (wall seconds, steps rendered, seconds per step) with their ratio, and writes
`bench/results/drafts-cpu.json` with the machine's load average before and after (a shared machine's
other work slows both arms alike, but the absolute figures move with it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web

from sidecar.api.app import create_app
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.config import Settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import record  # noqa: E402


class Daemon:
    """The daemon on its own loop in a thread, so `generate` subprocesses can reach it over HTTP."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> Daemon:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(600)
        return self

    async def _start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __exit__(self, *exc: object) -> None:
        assert self.runner is not None
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(600)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def generate(project: Path, url: str, *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline_stage", "--comfyui", "--root", str(project),
                           "--daemon", url, "-c", "1", "--page", "1", "--json", *args],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"generate {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def fresh_project(base: Path, name: str) -> Path:
    project = base / name
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), project)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drafts", type=int, default=12)
    parser.add_argument("--draft-steps", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="full steps")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    size = ["--no-lora", "--width", str(args.width), "--height", str(args.height), "--steps", str(args.steps)]
    funnel: list[float] = []
    baseline: list[float] = []
    drafts_part: list[float] = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        subprocess.run([sys.executable, "-m", "sidecar.cli", "models", "make-tiny", "--out", str(base / "models")],
                       check=True, capture_output=True)
        settings = Settings(data_dir=base / "data", engine="embedded", device="cpu", models_dir=base / "models",
                            checkpoint="tiny-sd15.safetensors", keep_alive="-1")
        with Daemon(settings) as daemon:
            generate(fresh_project(base, "warm"), daemon.url, *size, "--drafts", "1", "--draft-steps", "1")
            for r in range(args.rounds):
                project = fresh_project(base, f"funnel-{r}")
                d = generate(project, daemon.url, *size, "--drafts", str(args.drafts),
                             "--draft-steps", str(args.draft_steps))
                f = generate(project, daemon.url, "--steps", str(args.steps), "--from-draft", "1")
                funnel.append(d + f)
                drafts_part.append(d)
                project = fresh_project(base, f"full-{r}")
                baseline.append(generate(project, daemon.url, *size, "--drafts", str(args.drafts + 1),
                                         "--draft-steps", str(args.steps)))
                print(f"round {r + 1}: funnel {funnel[-1]:.1f} s ({d:.1f} drafts + {f:.1f} final), "
                      f"{args.drafts + 1} full renders {baseline[-1]:.1f} s")
    load_after = os.getloadavg()
    f_med, b_med = statistics.median(funnel), statistics.median(baseline)
    funnel_steps = args.drafts * args.draft_steps + args.steps
    full_steps = (args.drafts + 1) * args.steps
    result = {
        "benchmark": "draft-funnel", "engine": "embedded", "device": "cpu", "model": "tiny",
        "resolution": f"{args.width}x{args.height}", "drafts": args.drafts, "draftSteps": args.draft_steps,
        "fullSteps": args.steps, "rounds": args.rounds, "machine": platform.platform(),
        "recordedAt": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "funnelSeconds": [round(v, 2) for v in funnel], "draftsSeconds": [round(v, 2) for v in drafts_part],
        "fullRendersSeconds": [round(v, 2) for v in baseline],
        "funnelMedian": round(f_med, 2), "fullRendersMedian": round(b_med, 2),
        "funnelOverFull": round(f_med / b_med, 3),
        "funnelSteps": funnel_steps, "fullRendersSteps": full_steps,
        "cpuCount": os.cpu_count(), "loadAverageBefore": [round(v, 2) for v in load_before],
        "loadAverageAfter": [round(v, 2) for v in load_after],
    }
    rows = [("", "draft funnel", f"{args.drafts + 1} full renders"),
            ("renders", f"{args.drafts} x {args.draft_steps} steps + 1 x {args.steps}",
             f"{args.drafts + 1} x {args.steps} steps"),
            ("sampler steps", str(funnel_steps), str(full_steps)),
            ("wall s (median)", f"{f_med:.1f}", f"{b_med:.1f}"),
            ("s per step", f"{f_med / funnel_steps:.3f}", f"{b_med / full_steps:.3f}"),
            ("vs full renders", f"{f_med / b_med:.2f}x", "1.00x")]
    for name, a, b in rows:
        print(f"{name:<17}{a:<32}{b}")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, {os.cpu_count()} CPUs")
    record("drafts-cpu", result)


if __name__ == "__main__":
    main()

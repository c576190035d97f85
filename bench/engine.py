"""Embedded-engine benchmark: seconds per sampler step and peak memory for a 512x768, 20-step job.

    .venv/bin/python bench/engine.py                                  # tiny random model, CPU
    .venv/bin/python bench/engine.py --model sd15 --device cuda       # full-size random SD1.5 (GPU)
    .venv/bin/python bench/engine.py --model sd15 --models-dir ~/ComfyUI/models \\
        --comfyui-url http://127.0.0.1:8188                           # the same workflow on both
    .venv/bin/python bench/engine.py --model sdxl --width 1024 --height 1024 --device mps  # SDXL

SDXL (`--model sdxl`: full-size random SDXL in SGM layout, fp16, written by `sidecar models make-tiny
--family sdxl --full-size --fp16`; `--model tiny-sdxl`: the tiny one) runs our `sdxl-txt2img(-lora)`
templates. Full-size SDXL is 6.9 GB in fp16 and ~13.5 GB once the CPU casts it to fp32: two engines
holding it at once may not fit a small machine's memory, so `--sequential` runs all of one engine's
jobs, unloads it, then the other's (the machine's load then changes between them: say so with the
figures). Measured so far (bench/results/engine-cpu.json, `sdxl-256x256-3steps*`): the embedded engine
alone on a shared 2-core CPU, 256x256, no LoRA (its weight backups would not fit beside the other
processes' memory there): 8.0 s/step at load ~3, 17-21 at load 5-7, 84 at load 7-15; 15.3-15.7 GB peak
RSS. ComfyUI's SDXL figures are NOT measured yet
(it was not installable on that machine): run this with `--comfyui-url`/`--comfyui-pid` (and
`--sequential` under 32 GB of RAM) where a ComfyUI is, ideally on MPS or CUDA at 1024x1024.

Runs the real backends' `run()` on our `txt2img-lora` template, filled as the daemon fills it.
Random weights cost the same time as real ones, so `--model sd15` writes SD1.5's real architecture
with random fp16 weights (`sidecar models make-tiny --full-size --fp16`, in a child process) into
a temp dir, or into `--models-dir` when that is given without `--checkpoint` (give ComfyUI's
models dir to compare: both then load the same files). The first job (load, warm-up) is reported
apart; s/step is the median interval between progress reports of the timed jobs (UNet + scheduler,
CFG batch of 2); job seconds include text encoding, VAE decode and PNG writing.
Peak memory, embedded: the torch allocator's peak (CUDA), MPS driver memory sampled at each step,
and the process's peak RSS. ComfyUI: its `torch_vram_total` (the allocator's reserved memory, from
GET /system_stats) sampled every 0.25 s; on the CPU that field is the machine's RAM, so give
`--comfyui-pid` (a local ComfyUI) to record its process peak RSS (`VmHWM` of /proc/PID/status, Linux)
instead: like with like, both processes' lifetime peaks (start ComfyUI fresh for the run).
With `--comfyui-url` the jobs alternate between the two engines (first jobs apart, as warm-up), so a
change in the machine's load hits both alike. Run timed benchmarks alone on the machine. Prints the
figures and merges them into `bench/results/engine-<device>.json` (one entry per model and size; give
`--key` for another name). Goal (issue 4): within 5% of ComfyUI's s/step on the same device and dtype,
peak memory at most ComfyUI's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB


def family(args: argparse.Namespace) -> str:
    return "sdxl" if args.model in ("sdxl", "tiny-sdxl") else "sd15"


def workflow(checkpoint: str, lora: str | None, args: argparse.Namespace, seed: int) -> dict:
    from sidecar.assets import WORKFLOWS, asset_path
    from sidecar.workflows import load_templates

    name = ("sdxl-" if family(args) == "sdxl" else "") + ("txt2img-lora" if lora else "txt2img")
    tpl = load_templates(asset_path(WORKFLOWS))[name]
    slots = {"checkpoint_name": checkpoint, "prompt_text": "spyke_plasma_v1, full body, standing, city street",
             "negative_prompt": "lowres, bad anatomy, bad hands, blurry", "seed": seed, "steps": args.steps,
             "cfg": 7.0, "sampler_name": args.sampler, "scheduler": args.scheduler, "denoise": 1.0,
             "width": args.width, "height": args.height, "batch_size": 1}
    if lora:
        slots.update(lora_name=lora, lora_strength=0.8)
    return tpl.fill({k: v for k, v in slots.items() if tpl.has_slot(k)})


class Runner:
    """One backend under test: a job at a time, with the figures of each job kept."""

    def __init__(self, backend: Any, checkpoint: str, lora: str | None, args: argparse.Namespace, work: Path,
                 on_step: Callable[[], None] = lambda: None, finish: Callable[[], None] = lambda: None):
        self.backend, self.checkpoint, self.lora, self.args, self.work = backend, checkpoint, lora, args, work
        self.on_step, self.finish = on_step, finish
        self.first: float | None = None
        self.jobs: list[float] = []
        self.steps: list[float] = []

    async def one(self, seed: int, *, timed: bool) -> None:
        from sidecar.backend import RunContext

        async def noop(_: str) -> None:
            return None

        stamps: list[float] = []

        def on_progress(step: int, total: int) -> None:
            stamps.append(time.perf_counter())
            self.on_step()

        start = time.perf_counter()
        name = self.backend.name
        await self.backend.run(RunContext(job_id=f"bench-{name}-{seed}",
                                          workflow=workflow(self.checkpoint, self.lora, self.args, seed),
                                          output_path=self.work / f"{name}-{seed}.png", on_progress=on_progress,
                                          on_prompt_id=noop, cancel_event=asyncio.Event()))
        self.finish()
        seconds = time.perf_counter() - start
        if timed:
            self.jobs.append(seconds)
            self.steps.extend(b - a for a, b in itertools.pairwise(stamps))
        else:
            self.first = seconds
        intervals = [b - a for a, b in itertools.pairwise(stamps)]
        step = f", median step {statistics.median(intervals):.3f} s" if intervals else ""
        print(f"  {name} job seed {seed}: {seconds:.1f} s{step}", flush=True)

    def figures(self) -> dict[str, Any]:
        return {
            "secondsPerStep": round(statistics.median(self.steps), 4) if self.steps else None,
            "secondsPerStepMean": round(statistics.fmean(self.steps), 4) if self.steps else None,
            "jobSeconds": round(statistics.median(self.jobs), 3),
            "firstJobSeconds": round(self.first or 0.0, 3),
        }


async def run_all(runners: list[Runner], runs: int, after_first: Callable[[], None]) -> None:
    """First jobs apart (load, warm-up), then the timed jobs alternating between the runners; every
    runner gets the same seeds."""
    for r in runners:
        await r.one(0, timed=False)
    after_first()
    for i in range(runs):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            await r.one(i + 1, timed=True)


def proc_status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


async def bench(args: argparse.Namespace, models_dir: Path, checkpoint: str, lora: str | None,
                work: Path) -> list[dict[str, Any]]:
    import torch

    from sidecar.config import Settings
    from sidecar.engine.backend import EmbeddedBackend

    backend = EmbeddedBackend(Settings(data_dir=work / "data", engine="embedded", device=args.device,
                                       models_dir=models_dir))
    await backend.start()
    health = await backend.health()
    if not health.available:
        raise SystemExit(f"engine unavailable: {health.warnings}")
    device = health.device
    mps_peak = 0

    def on_step() -> None:
        nonlocal mps_peak
        if device == "mps":
            mps_peak = max(mps_peak, torch.mps.driver_allocated_memory())

    def after_first() -> None:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def finish() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    runners = [Runner(backend, checkpoint, lora, args, work, on_step, finish)]
    comfy = ComfyProbe(args, work) if args.comfyui_url else None
    try:
        if args.sequential:
            await run_all(runners, args.runs, after_first)
            loaded = (await backend.health()).extra.get("loaded", {})
            await backend.unload()  # its memory back before the other engine loads the same model
            if comfy is not None:
                runners.append(Runner(await comfy.start(), checkpoint, lora, args, work))
                await run_all(runners[1:], args.runs, lambda: None)
        else:
            if comfy is not None:
                runners.append(Runner(await comfy.start(), checkpoint, lora, args, work))
            await run_all(runners, args.runs, after_first)
            loaded = (await backend.health()).extra.get("loaded", {})
        comfy_result = await comfy.result() if comfy is not None else None
    finally:
        await backend.stop()
        if comfy is not None:
            await comfy.stop()
    peak = {"rssMB": round(peak_rss_bytes() / 2**20, 1)}
    if device == "cuda":
        peak["cudaAllocatedMB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        peak["cudaReservedMB"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    if device == "mps":
        peak["mpsDriverMB"] = round(mps_peak / 2**20, 1)
    results = [{"engine": "embedded", "device": device, "dtypes": health.dtypes, **runners[0].figures(),
                "peakMemory": peak, "loaded": loaded, "torch": torch.__version__,
                "threads": torch.get_num_threads()}]
    if comfy_result is not None:
        results.append({**comfy_result, **runners[1].figures()})
    return results


class ComfyProbe:
    """The ComfyUI side: our real ComfyBackend, plus a sampler of its memory while jobs run."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.peak_vram = 0
        self.peak_rss_kb = 0
        self.device: str | None = None
        self.backend: Any = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Any:
        from sidecar.comfyui.backend import ComfyBackend
        from sidecar.config import Settings

        self.backend = ComfyBackend(Settings(data_dir=self.work / "comfy-data", engine="comfyui",
                                             comfyui_url=self.args.comfyui_url))
        await self.backend.start()
        self.task = asyncio.create_task(self._sample())
        return self.backend

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                stats = await self.backend.client.system_stats(timeout=2)
                dev = stats["devices"][0]
                self.device = dev.get("type")
                self.peak_vram = max(self.peak_vram, int(dev.get("torch_vram_total") or 0))
            if self.args.comfyui_pid:
                self.peak_rss_kb = max(self.peak_rss_kb, proc_status_kb(self.args.comfyui_pid, "VmRSS") or 0)
            await asyncio.sleep(0.25)

    async def result(self) -> dict[str, Any]:
        stats = await self.backend.client.system_stats(timeout=5)
        health = await self.backend.health()
        peak: dict[str, float] = {}
        if self.device == "cpu" and self.args.comfyui_pid:
            hwm = proc_status_kb(self.args.comfyui_pid, "VmHWM")
            peak["rssMB"] = round(max(hwm or 0, self.peak_rss_kb) / 1024, 1)
            peak["rssSampledMB"] = round(self.peak_rss_kb / 1024, 1)
        elif self.device != "cpu":
            peak["torchVramReservedMB"] = round(self.peak_vram / 2**20, 1)
        system = stats["system"]
        return {"engine": "comfyui", "device": self.device, "dtypes": health.dtypes, "argv": system.get("argv"),
                "comfyuiVersion": system.get("comfyui_version"), "comfyuiCommit": self.args.comfyui_commit,
                "torch": system.get("pytorch_version"), "peakMemory": peak}

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.backend is not None:
            await self.backend.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "sd15", "tiny-sdxl", "sdxl"], default="tiny")
    parser.add_argument("--models-dir", type=Path,
                        help="models dir to use (with --checkpoint) or to write the random set into")
    parser.add_argument("--checkpoint", help="an existing checkpoint in --models-dir")
    parser.add_argument("--lora", help="LoRA name in --models-dir (default: the random set's LoRA)")
    parser.add_argument("--no-lora", action="store_true", help="run the txt2img template (no LoRA)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="euler_ancestral")
    parser.add_argument("--scheduler", default="normal")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sequential", action="store_true",
                        help="all embedded jobs, then unload, then all ComfyUI jobs (when both models do not fit)")
    parser.add_argument("--comfyui-url", help="also run the same workflow on this ComfyUI (sharing --models-dir)")
    parser.add_argument("--comfyui-pid", type=int, help="that ComfyUI's process id (local): record its peak RSS")
    parser.add_argument("--comfyui-commit", help="that ComfyUI's git commit, recorded with the results")
    parser.add_argument("--key", help="name of the entry in the results file (default: model-WxH)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if args.comfyui_url and not args.models_dir:
        parser.error("--comfyui-url needs --models-dir (ComfyUI's models dir, so both load the same files)")

    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        work = Path(tmp)
        models_dir = args.models_dir or work / "models"
        checkpoint, lora = args.checkpoint, args.lora
        if not checkpoint:
            # In a child process, so this process's peak RSS is the engine's alone.
            t = time.perf_counter()
            cmd = [sys.executable, "-m", "sidecar", "models", "make-tiny", "--out", str(models_dir), "--json"]
            if args.model in ("sd15", "sdxl"):
                cmd += ["--full-size", "--fp16"]
            if family(args) == "sdxl":
                cmd += ["--family", "sdxl"]
            made = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(f"random {args.model} model set written to {models_dir} in {time.perf_counter() - t:.1f}s",
                  flush=True)
            checkpoint, lora = Path(made["checkpoint"]).name, lora or Path(made["lora"]).name
        lora = None if args.no_lora else lora
        results = asyncio.run(bench(args, models_dir, checkpoint, lora, work))

    common = {"model": args.model, "family": family(args), "sequential": args.sequential, "checkpoint": checkpoint,
              "lora": lora, "width": args.width,
              "height": args.height, "steps": args.steps, "sampler": args.sampler, "scheduler": args.scheduler,
              "cfg": 7.0, "runs": args.runs, "machine": platform.platform(),
              "processor": platform.processor() or platform.machine(),
              "loadAverageAtEnd": [round(x, 2) for x in os.getloadavg()],  # 1/5/15 min: how quiet the machine was
              "measuredAt": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(f"{args.model}, {args.width}x{args.height}, {args.steps} steps {args.sampler}/{args.scheduler}, cfg 7"
          f"{', LoRA ' + lora if lora else ''}:")
    for r in results:
        dtypes = f" ({', '.join(f'{k} {v}' for k, v in r['dtypes'].items())})" if r.get("dtypes") else ""
        print(f"  {r['engine']:<8} on {r['device']}{dtypes}: {r['secondsPerStep']} s/step (median; mean "
              f"{r['secondsPerStepMean']}), {r['jobSeconds']} s/job warm, first job {r['firstJobSeconds']} s")
        print(f"           peak memory: {', '.join(f'{k} {v}' for k, v in r['peakMemory'].items())}")
    if len(results) == 2 and results[0]["secondsPerStep"] and results[1]["secondsPerStep"]:
        ratio = results[0]["secondsPerStep"] / results[1]["secondsPerStep"]
        print(f"  embedded / ComfyUI s/step: {ratio:.3f} (goal <= 1.05)")
        common["embeddedOverComfyuiSecondsPerStep"] = round(ratio, 3)
        rss = results[0]["peakMemory"].get("rssMB"), results[1]["peakMemory"].get("rssMB")
        if all(rss):
            print(f"  embedded / ComfyUI peak RSS: {rss[0] / rss[1]:.3f} (goal <= 1.0)")
            common["embeddedOverComfyuiPeakRss"] = round(rss[0] / rss[1], 3)
    args.out.mkdir(parents=True, exist_ok=True)
    device = results[0]["device"]
    path = args.out / f"engine-{device}.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    key = args.key or f"{args.model if not args.checkpoint else checkpoint}-{args.width}x{args.height}"
    existing[key] = {**common, **results[0], **({"comfyui": results[1]} if len(results) == 2 else {})}
    path.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()

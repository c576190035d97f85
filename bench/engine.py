"""Embedded-engine benchmark: seconds per sampler step and peak memory for a 512x768, 20-step job.

    .venv/bin/python bench/engine.py                                  # tiny random model, CPU
    .venv/bin/python bench/engine.py --model sd15 --device cuda       # full-size random SD1.5 (GPU)
    .venv/bin/python bench/engine.py --model sd15 --models-dir ~/ComfyUI/models \\
        --comfyui-url http://127.0.0.1:8188                           # the same workflow on both

Runs the real backends' `run()` on our `txt2img-lora` template, filled as the daemon fills it.
Random weights cost the same time as real ones, so `--model sd15` writes SD1.5's real architecture
with random fp16 weights (`sidecar models make-tiny --full-size --fp16`, in a child process) into
a temp dir, or into `--models-dir` when that is given without `--checkpoint` (give ComfyUI's
models dir to compare: both then load the same files). The first job (load, warm-up) is reported
apart; s/step is the median interval between progress reports of the timed jobs (UNet + scheduler,
CFG batch of 2); job seconds include text encoding, VAE decode and PNG writing.
Peak memory, embedded: the torch allocator's peak (CUDA), MPS driver memory sampled at each step,
and the process's peak RSS. ComfyUI: its `torch_vram_total` (the allocator's reserved memory, from
GET /system_stats) sampled every 0.25 s. Prints the figures and merges them into
`bench/results/engine-<device>.json` (one entry per model and size). Goal (issue 4): within 5% of
ComfyUI's s/step on the same device and dtype, peak memory at most ComfyUI's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
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


def workflow(checkpoint: str, lora: str | None, args: argparse.Namespace, seed: int) -> dict:
    from sidecar.workflows import load_templates

    name = "txt2img-lora" if lora else "txt2img"
    tpl = load_templates(ROOT / "workflows")[name]
    slots = {"checkpoint_name": checkpoint, "prompt_text": "spyke_plasma_v1, full body, standing, city street",
             "negative_prompt": "lowres, bad anatomy, bad hands, blurry", "seed": seed, "steps": args.steps,
             "cfg": 7.0, "sampler_name": args.sampler, "scheduler": args.scheduler, "denoise": 1.0,
             "width": args.width, "height": args.height, "batch_size": 1}
    if lora:
        slots.update(lora_name=lora, lora_strength=0.8)
    return tpl.fill({k: v for k, v in slots.items() if tpl.has_slot(k)})


async def timed_runs(backend: Any, args: argparse.Namespace, checkpoint: str, lora: str | None, work: Path,
                     on_step: Callable[[], None] = lambda: None, after_first: Callable[[], None] = lambda: None,
                     finish: Callable[[], None] = lambda: None) -> dict[str, Any]:
    from sidecar.backend import RunContext

    async def noop(_: str) -> None:
        return None

    async def one(seed: int) -> tuple[float, list[float]]:
        stamps: list[float] = []

        def on_progress(step: int, total: int) -> None:
            stamps.append(time.perf_counter())
            on_step()

        start = time.perf_counter()
        await backend.run(RunContext(job_id=f"bench-{backend.name}-{seed}", workflow=workflow(checkpoint, lora, args, seed),
                                     output_path=work / f"{backend.name}-{seed}.png", on_progress=on_progress,
                                     on_prompt_id=noop, cancel_event=asyncio.Event()))
        finish()
        return time.perf_counter() - start, [b - a for a, b in zip(stamps, stamps[1:])]

    first, _ = await one(0)
    after_first()
    jobs, steps = [], []
    for i in range(args.runs):
        seconds, intervals = await one(i + 1)
        jobs.append(seconds)
        steps.extend(intervals)
    return {
        "secondsPerStep": round(statistics.median(steps), 4) if steps else None,
        "secondsPerStepMean": round(statistics.fmean(steps), 4) if steps else None,
        "jobSeconds": round(statistics.median(jobs), 3),
        "firstJobSeconds": round(first, 3),
    }


async def bench_embedded(args: argparse.Namespace, models_dir: Path, checkpoint: str, lora: str | None,
                         work: Path) -> dict[str, Any]:
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

    try:
        figures = await timed_runs(backend, args, checkpoint, lora, work, on_step, after_first, finish)
        loaded = (await backend.health()).extra.get("loaded", {})
    finally:
        await backend.stop()
    peak = {"rssMB": round(peak_rss_bytes() / 2**20, 1)}
    if device == "cuda":
        peak["cudaAllocatedMB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        peak["cudaReservedMB"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    if device == "mps":
        peak["mpsDriverMB"] = round(mps_peak / 2**20, 1)
    return {"engine": "embedded", "device": device, "dtypes": health.dtypes, **figures, "peakMemory": peak,
            "loaded": loaded, "torch": torch.__version__, "threads": torch.get_num_threads()}


async def bench_comfyui(args: argparse.Namespace, checkpoint: str, lora: str | None, work: Path) -> dict[str, Any]:
    from sidecar.comfy.backend import ComfyBackend
    from sidecar.config import Settings

    backend = ComfyBackend(Settings(data_dir=work / "comfy-data", engine="comfyui", comfyui_url=args.comfyui_url))
    await backend.start()
    peak = 0
    device = None

    async def sample() -> None:
        nonlocal peak, device
        while True:
            with contextlib.suppress(Exception):
                stats = await backend.client.system_stats(timeout=2)
                dev = stats["devices"][0]
                device = dev.get("type")
                peak = max(peak, int(dev.get("torch_vram_total") or 0))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample())
    try:
        figures = await timed_runs(backend, args, checkpoint, lora, work)
        argv = (await backend.client.system_stats(timeout=5))["system"].get("argv")
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await backend.stop()
    return {"engine": "comfyui", "device": device, "argv": argv, **figures,
            "peakMemory": {"torchVramReservedMB": round(peak / 2**20, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
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
    parser.add_argument("--comfyui-url", help="also run the same workflow on this ComfyUI (sharing --models-dir)")
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
            if args.model == "sd15":
                cmd += ["--full-size", "--fp16"]
            made = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            print(f"random {args.model} model set written to {models_dir} in {time.perf_counter() - t:.1f}s",
                  flush=True)
            checkpoint, lora = Path(made["checkpoint"]).name, lora or Path(made["lora"]).name
        lora = None if args.no_lora else lora
        results = [asyncio.run(bench_embedded(args, models_dir, checkpoint, lora, work))]
        if args.comfyui_url:
            results.append(asyncio.run(bench_comfyui(args, checkpoint, lora, work)))

    common = {"model": args.model, "checkpoint": checkpoint, "lora": lora, "width": args.width,
              "height": args.height, "steps": args.steps, "sampler": args.sampler, "scheduler": args.scheduler,
              "cfg": 7.0, "runs": args.runs, "machine": platform.platform(),
              "processor": platform.processor() or platform.machine(),
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
    args.out.mkdir(parents=True, exist_ok=True)
    device = results[0]["device"]
    path = args.out / f"engine-{device}.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    key = f"{args.model if not args.checkpoint else checkpoint}-{args.width}x{args.height}"
    existing[key] = {**common, **results[0], **({"comfyui": results[1]} if len(results) == 2 else {})}
    path.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"  -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()

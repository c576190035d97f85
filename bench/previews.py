"""What live previews cost the embedded engine: seconds per step with and without them, side by side.

    .venv/bin/python bench/previews.py                        # tiny random model, CPU, 512x768
    .venv/bin/python bench/previews.py --model sd15 --device cuda --width 512 --height 768

Runs `EmbeddedBackend.run()` on our `txt2img-lora` template (as the daemon fills it), alternating jobs
with previews at every step (the worst case: `preview_interval = 0`) and without (`previews = false`),
the first job of each apart as warm-up, so a change in the machine's load hits both alike. s/step is
the median interval between progress reports of the timed jobs; the preview's own cost (latent to RGB
plus the small JPEG, in the engine's thread) is timed apart too. `--model sd15` writes SD1.5's real
architecture with random fp16 weights (`sidecar models make-tiny --full-size --fp16`) into a temp dir:
random weights cost the time real ones do. Prints the figures and merges them into
`bench/results/previews-<device>.json`. Goal (issue 14): previews slow a step by at most a few per cent.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def workflow(checkpoint: str, lora: str, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from sidecar.assets import WORKFLOWS, asset_path
    from sidecar.workflows import load_templates

    tpl = load_templates(asset_path(WORKFLOWS))["txt2img-lora"]
    return tpl.fill({"checkpoint_name": checkpoint, "prompt_text": "spyke_plasma_v1, full body, standing",
                     "negative_prompt": "lowres, blurry", "seed": seed, "steps": args.steps, "cfg": 7.0,
                     "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "width": args.width,
                     "height": args.height, "batch_size": 1, "lora_name": lora, "lora_strength": 0.8})


class Side:
    def __init__(self, name: str, previews: bool):
        self.name, self.previews = name, previews
        self.steps: list[float] = []
        self.jobs: list[float] = []
        self.made = 0

    async def one(self, backend: Any, checkpoint: str, lora: str, args: argparse.Namespace, work: Path,
                  seed: int, timed: bool) -> None:
        from sidecar.backend import RunContext

        async def noop(_: str) -> None:
            return None

        stamps: list[float] = []

        def on_preview(step: int, total: int, jpeg: bytes) -> None:
            self.made += 1

        start = time.perf_counter()
        await backend.run(RunContext(
            job_id=f"bench-{self.name}-{seed}", workflow=workflow(checkpoint, lora, args, seed),
            output_path=work / f"{self.name}-{seed}.png", on_progress=lambda s, t: stamps.append(time.perf_counter()),
            on_prompt_id=noop, cancel_event=asyncio.Event(),
            preview_due=(lambda: True) if self.previews else None, on_preview=on_preview if self.previews else None))
        seconds = time.perf_counter() - start
        intervals = [b - a for a, b in itertools.pairwise(stamps)]
        if timed:
            self.jobs.append(seconds)
            self.steps.extend(intervals)
        print(f"  {self.name}: job {seconds:.2f} s, median step {statistics.median(intervals):.4f} s", flush=True)

    def figures(self) -> dict[str, Any]:
        return {"secondsPerStep": round(statistics.median(self.steps), 5),
                "secondsPerStepMean": round(statistics.fmean(self.steps), 5),
                "jobSeconds": round(statistics.median(self.jobs), 3), "previewsMade": self.made}


def preview_cost(width: int, height: int, device: str, repeats: int = 50) -> float:
    """Median seconds of one preview (a random latent of the job's size to a small JPEG) on `device`."""
    import torch

    from sidecar.engine.preview import preview_jpeg

    latent = torch.randn(1, 4, height // 8, width // 8, device=device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        preview_jpeg(latent)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def bench(args: argparse.Namespace, models: Path, checkpoint: str, lora: str, work: Path) -> dict[str, Any]:
    from sidecar.config import Settings
    from sidecar.engine.backend import EmbeddedBackend

    settings = Settings(data_dir=work / "data", engine="embedded", device=args.device, models_dir=models,
                        checkpoint=checkpoint, keep_alive=-1)
    backend = EmbeddedBackend(settings)
    await backend.start()
    try:
        health = await backend.health()
        device = health.device or "cpu"
        sides = [Side("previews", True), Side("no-previews", False)]
        print(f"embedded engine on {device}, {args.width}x{args.height}, {args.steps} steps, {args.runs} timed "
              "jobs per side (first jobs apart)", flush=True)
        for side in sides:
            await side.one(backend, checkpoint, lora, args, work, 0, timed=False)
        for i in range(args.runs):
            for side in (sides if i % 2 == 0 else sides[::-1]):
                await side.one(backend, checkpoint, lora, args, work, i + 1, timed=True)
    finally:
        await backend.stop()
    on, off = (s.figures() for s in sides)
    cost = preview_cost(args.width, args.height, device)
    return {"device": device, "model": args.model, "width": args.width, "height": args.height,
            "steps": args.steps, "runs": args.runs, "withPreviews": on, "withoutPreviews": off,
            "slowdownPercent": round(100 * (on["secondsPerStep"] / off["secondsPerStep"] - 1), 2),
            "previewSeconds": round(cost, 5),
            "previewPercentOfStep": round(100 * cost / off["secondsPerStep"], 2)}


def make_models(args: argparse.Namespace, out: Path) -> tuple[str, str]:
    cmd = [sys.executable, "-m", "sidecar.cli", "models", "make-tiny", "--out", str(out)]
    if args.model == "sd15":
        cmd += ["--full-size", "--fp16"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    ckpt = next((out / "checkpoints").glob("*.safetensors")).name
    lora = next((out / "loras").glob("*.safetensors")).name
    return ckpt, lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--runs", type=int, default=4, help="timed jobs per side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-previews-") as tmp:
        work = Path(tmp)
        checkpoint, lora = make_models(args, work / "models")
        result = asyncio.run(bench(args, work / "models", checkpoint, lora, work))
    result.update(python=platform.python_version(), machine=platform.machine(),
                  recordedAt=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(f"s/step with previews at every step: {result['withPreviews']['secondsPerStep']:.4f}, without: "
          f"{result['withoutPreviews']['secondsPerStep']:.4f} ({result['slowdownPercent']:+.2f} %); one preview "
          f"{1000 * result['previewSeconds']:.2f} ms = {result['previewPercentOfStep']:.2f} % of a step")
    out = ROOT / "bench" / "results" / f"previews-{result['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.is_file() else {}
    existing[f"{args.model}-{args.width}x{args.height}"] = result
    out.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"recorded in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

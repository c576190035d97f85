"""Embedded-trainer benchmark: steps/s and peak memory at 512x512, batch 1, LoRA dim 32 (alpha 16).

    .venv/bin/python bench/train.py                       # tiny random model (CPU-friendly)
    .venv/bin/python bench/train.py --model sd15 --device cuda   # full-size random SD1.5 (GPU)
    .venv/bin/python bench/train.py --base random-sd15.safetensors --resolution 256 --steps 10 \
        --kohya-dir ~/sd-scripts --kohya-python ~/sd-scripts/venv/bin/python   # side by side with kohya

Runs the real trainer (`sidecar.training.embedded`) on the engine's random model files (as `sidecar
models make-tiny` writes them; speed and memory do not depend on the weights) and a synthetic
captioned set, prints the figures and merges them into `bench/results/train-<device>.json` (one
entry per model). Issue 5's goal, on the target: at least kohya's steps/s at no more than its peak
memory, under 10 GB at 512x512 fp16. The rate excludes the first step (allocator and kernel
warm-up); memory is the CUDA allocator's peak on GPU, the process's peak RSS elsewhere (which
includes writing and loading the model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `bench.*` when run as a script
from bench.train_data import TRIGGER, dataset  # noqa: E402
from sidecar.config import Settings  # noqa: E402
from sidecar.training.dataset import load_dataset  # noqa: E402
from sidecar.training.embedded import EmbeddedTrainer, pick_device  # noqa: E402
from sidecar.training.spec import TrainerHooks, TrainJob, TrainSpec  # noqa: E402


def models(model: str, root: Path) -> Path:
    """The engine's random model set, as files (tiny, or SD1.5's real architecture in fp16), so the
    trainer loads it the way it loads a real checkpoint."""
    from sidecar.engine.tiny import make_models

    return make_models(root, full_size=model == "sd15", dtype=torch.float16 if model == "sd15" else torch.float32).root


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # macOS reports bytes, Linux KiB


def run(model: str, device: str, steps: int, resolution: int, dim: int, base: Path | None = None,
        dataset_dir: Path | None = None) -> dict:
    """One embedded training run in this process. `base`/`dataset_dir` reuse existing files (the
    side-by-side mode hands both trainers the same ones); otherwise a model set and a set are made."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    if base is None:
        models_dir = models(model, tmp / "models")
        base = next((models_dir / "checkpoints").glob("*.safetensors"))
    else:
        models_dir = base.parent.parent
    spec = TrainSpec(output_name="bench", dataset_dir=str(dataset_dir or tmp / "ds"), steps=steps,
                     resolution=resolution, network_dim=dim, network_alpha=dim / 2, learning_rate=1e-4,
                     save_every=10**6, seed=1, engine="embedded", trigger_word=TRIGGER, checkpoint=model)
    ds = load_dataset(dataset_dir or dataset(tmp / "ds", resolution), TRIGGER)
    (tmp / "run").mkdir()
    job = TrainJob("bench", spec, ds, tmp / "run", tmp / "run" / "out", base)
    times: dict[int, float] = {}
    mps_peak = 0

    def progress(step: int, total: int, loss: float | None) -> None:
        nonlocal mps_peak
        times[step] = time.perf_counter()
        if device == "mps":
            mps_peak = max(mps_peak, torch.mps.driver_allocated_memory())

    logs: list[str] = []
    hooks = TrainerHooks(progress=progress, checkpoint=lambda *a: None, log=logs.append, warning=print)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = EmbeddedTrainer(Settings(data_dir=tmp / "data", device=device, models_dir=models_dir))
    started = time.perf_counter()
    asyncio.run(trainer.run(job, hooks))
    wall = time.perf_counter() - started
    first = min(k for k in times if k >= 1)
    per_step = (times[steps] - times[first]) / (steps - first) if steps > first else float("nan")
    if device == "cuda":
        memory, kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    elif device == "mps":
        memory, kind = mps_peak, "mps driver_allocated_memory (sampled per step)"
    else:
        memory, kind = peak_rss_bytes(), "process peak RSS"
    return {
        "model": model, "device": device, "resolution": resolution, "batch": 1, "network_dim": dim,
        "network_alpha": dim / 2, "steps": steps, "seconds_per_step": round(per_step, 4),
        "steps_per_second": round(1 / per_step, 4), "peak_memory_bytes": memory,
        "peak_memory_gib": round(memory / 2**30, 3), "memory_kind": kind,
        "mixed_precision": "fp16" if device == "cuda" else "no", "wall_seconds": round(wall, 1),
        "torch": torch.__version__, "platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "lora_modules": next((line for line in logs if line.startswith("LoRA modules")), None),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    ap.add_argument("--steps", type=int, default=None, help="default: 12 (tiny), 30 (sd15)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--base", type=Path, help="an existing checkpoint file instead of a made model set")
    ap.add_argument("--dataset", type=Path, help="an existing captioned set instead of a made one")
    ap.add_argument("--json-out", type=Path, help="write the result here and record nothing (a child run)")
    side = ap.add_argument_group("side by side with kohya sd-scripts (bench/train_vs_kohya.py)")
    side.add_argument("--kohya-dir", type=Path, help="sd-scripts checkout: run its train_network.py beside ours")
    side.add_argument("--kohya-python", type=Path, help="python of kohya's venv")
    side.add_argument("--rounds", type=int, default=2, help="interleaved runs of each trainer")
    side.add_argument("--lock", default="/tmp/bench.lock", help="flock file every timed run holds ('' = none)")
    args = ap.parse_args()
    if args.kohya_dir is not None:
        from bench.train_vs_kohya import side_by_side

        side_by_side(args)
        return
    device = pick_device(args.device)
    steps = args.steps or (12 if args.model == "tiny" else 30)
    result = run(args.model, device, steps, args.resolution, args.dim, args.base, args.dataset)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        return
    for k, v in result.items():
        print(f"{k:>18}: {v}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"train-{device}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"benchmark": "embedded trainer", "results": []}
    data["results"] = [r for r in data["results"] if r["model"] != args.model] + [result]
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

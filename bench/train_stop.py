"""How fast a cancel stops the embedded trainer while it caches latents (issue 11: 31-38 s for 5,000
images before the trainer looked at the stop flag between images).

    .venv/bin/python bench/train_stop.py                  # 5,000 images, tiny random model, CPU
    .venv/bin/python bench/train_stop.py --images 500 --size 512

Runs the real trainer on the engine's tiny random model files and a synthetic captioned set, cancels
once caching has reported progress, and prints the seconds from the cancel to the trainer's end and
how far caching had come. Merges the figures into `bench/results/train-stop-<device>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path

from PIL import Image

from sidecar.config import Settings
from sidecar.errors import JobCancelled
from sidecar.training.dataset import load_dataset
from sidecar.training.embedded import EmbeddedTrainer, pick_device
from sidecar.training.spec import TrainerHooks, TrainJob, TrainSpec

ROOT = Path(__file__).resolve().parents[1]
TRIGGER = "spyke_plasma_v1"


def dataset(folder: Path, n: int, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), (i % 256, (i * 7) % 256, 120)).save(folder / f"img{i:05d}.png")
        (folder / f"img{i:05d}.txt").write_text(f"{TRIGGER}, pose {i}\n", encoding="utf-8")
    return folder


async def measure(images: int, size: int, resolution: int, device: str) -> dict:
    from sidecar.engine.tiny import make_models

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = make_models(root / "models")
        models, base = made.root, made.checkpoint
        data = dataset(root / "data", images, size)
        settings = Settings(data_dir=root / "sidecar", engine="embedded", device=device, models_dir=models)
        spec = TrainSpec(output_name="stop", dataset_dir=str(data), steps=10, resolution=resolution, network_dim=4,
                         network_alpha=2.0, learning_rate=1e-4, save_every=5, seed=1, engine="embedded",
                         trigger_word=TRIGGER, checkpoint=base.name)
        work = root / "run"
        work.mkdir()
        job = TrainJob("bench", spec, load_dataset(data, TRIGGER), work, work / "out", base)
        cancel = asyncio.Event()
        caching: list[str] = []
        hooks = TrainerHooks(progress=lambda *a: None, checkpoint=lambda *a: None,
                             log=lambda line: caching.append(line) if line.startswith("caching latents") else None,
                             warning=lambda _: None, cancel=cancel)
        task = asyncio.ensure_future(EmbeddedTrainer(settings).run(job, hooks))
        while not caching and not task.done():
            await asyncio.sleep(0.01)
        cancelled_at = time.perf_counter()
        cancel.set()
        try:
            await task
            outcome = "finished"
        except JobCancelled:
            outcome = "cancelled"
        stop_s = time.perf_counter() - cancelled_at
        return {"images": images, "imageSize": size, "resolution": resolution, "device": pick_device(device),
                "outcome": outcome, "secondsToStop": round(stop_s, 3),
                "cachedWhenCancelled": caching[0].split()[2] if caching else None,
                "platform": platform.platform(), "measuredAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64, help="pixels of each synthetic image")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = asyncio.run(measure(args.images, args.size, args.resolution, args.device))
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / f"train-stop-{result['device']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[f"{args.images}x{args.size}px@{args.resolution}"] = result
    out.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()

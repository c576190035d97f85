"""What the likeness judge costs on the CPU: milliseconds per 512x768 image, one at a time and batched.

    .venv/bin/python bench/likeness.py                                   # make-tiny's random ccip-tiny
    .venv/bin/python bench/likeness.py --models-dir ~/models --model ccip-caformer-24-randaug-pruned

Times `Judge.score` as the daemon runs it (CCIP's exact preprocessing: decode, white background, 384x384
bilinear, normalise; the feature model; the metric model over references + images) on distinct random
images, so the feature cache never hits, except in the `cached` row (the same images again: hashing and
the metric model only). The preprocessing is timed apart: it is CCIP's real cost whatever model follows.
With the tiny model the model rows are NOT CCIP's cost (a 4x4 pooling and one matrix): the figure for the
real caformer weights needs `sidecar models fetch ccip` and this script run with `--model`. The sweep's
added time is the batched figure times its images (an estimate, printed as such).
Goal (issue 26): at most 150 ms an image on 2 cores. Writes bench/results/likeness-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import record  # noqa: E402


def images(folder: Path, n: int, seed: int, size: tuple[int, int]) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = folder / f"img{seed}-{i}.png"
        # Blocks of colour, not per-pixel noise: PNGs the size of rendered pages (noise would inflate decoding).
        cells = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        Image.fromarray(cells.repeat(16, 0).repeat(16, 1)).save(path)
        out.append(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=None, help="[default: make-tiny's model in a temp dir]")
    parser.add_argument("--model", default="ccip-tiny")
    parser.add_argument("--images", type=int, default=24, help="images per timed pass")
    parser.add_argument("--refs", type=int, default=6, help="references in the set")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from sidecar.likeness.ccip import CcipScorer, preprocess
    from sidecar.likeness.judge import Judge
    from sidecar.likeness.tiny import make_tiny_likeness

    work = Path(tempfile.mkdtemp(prefix="likeness-bench-"))
    models = args.models_dir
    if models is None:
        models = work / "models"
        make_tiny_likeness(models)
    scorer = CcipScorer.open(models, args.model)
    size = (512, 768)
    refs = images(work, args.refs, 0, size)
    judge = Judge(scorer)
    judge.score(images(work, 2, 99, size), refs)  # warm-up: sessions open, references cached

    pre = []
    for path in images(work, args.images, 1, size):
        with Image.open(path) as im:
            im.load()
            t = time.perf_counter()
            preprocess(im)
            pre.append((time.perf_counter() - t) * 1000)

    single, batched, cached = [], [], []
    for r in range(args.repeats):
        for path in images(work, args.images // 2, 10 + r, size):
            t = time.perf_counter()
            judge.score([path], refs)
            single.append((time.perf_counter() - t) * 1000)
        batch = images(work, args.images, 100 + r, size)
        t = time.perf_counter()
        judge.score(batch, refs)
        batched.append((time.perf_counter() - t) * 1000 / len(batch))
        t = time.perf_counter()
        judge.score(batch, refs)
        cached.append((time.perf_counter() - t) * 1000 / len(batch))

    per_image = statistics.median(batched)
    result = {
        "device": "cpu", "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "model": args.model, "tiny": args.model == "ccip-tiny",
        "note": ("tiny random model: the model rows are not CCIP's cost; the real weights' figure is pending "
                 "(`sidecar models fetch ccip`, then --model ccip-caformer-24-randaug-pruned)")
                if args.model == "ccip-tiny" else "real CCIP weights",
        "image": f"{size[0]}x{size[1]} PNG", "references": args.refs,
        "preprocess_ms_p50": round(statistics.median(pre), 2),
        "single_ms_p50": round(statistics.median(single), 2),
        "batched_ms_per_image_p50": round(per_image, 2),
        "cached_ms_per_image_p50": round(statistics.median(cached), 2),
        "sweep_added_s_estimate_45_images": round(45 * per_image / 1000, 2),
        "goal_ms_per_image": 150,
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine slows every row alike
    }
    for key, value in result.items():
        print(f"{key:>34}: {value}")
    record("likeness-cpu", result)


if __name__ == "__main__":
    main()

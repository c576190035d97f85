"""What the embedded engine's print upscale costs, tiled (as the daemon runs it) and whole-image, side by side.

    .venv/bin/python bench/upscale.py                               # ESRGAN x4 at real size, 128x192 in, CPU
    .venv/bin/python bench/upscale.py --width 512 --height 768 --modes tiled      # a whole page, tiled only
    .venv/bin/python bench/upscale.py --arch srvgg                  # Real-ESRGAN compact (realesr-general-x4v3)

The network has the real architecture of 4x-UltraSharp / RealESRGAN_x4plus (RRDBNet: 64 features, 23
blocks, growth 32; 16.7 M parameters) or realesr-general-x4v3 (SRVGGNetCompact: 64 features, 32 convs),
with random weights: random weights cost the time real ones do. Each mode runs in its own process so its
peak RSS (`ru_maxrss`) is its own: `tiled` is `sidecar.engine.upscale.upscale_image` with the daemon's
default tile (256) and overlap (32); `whole` the same network over the whole image at once (tile 0). The
default input is small because a whole 512x768 page at 4x needs tens of GB in fp32 on a CPU. Prints the
figures and writes `bench/results/upscale-<device>-<arch>.json` (wall and CPU seconds: on a shared machine the
CPU seconds are the comparable figure).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(args: argparse.Namespace) -> dict:
    """In a child process: build the network, upscale once, report time and peak RSS."""
    import numpy as np
    import torch
    from PIL import Image

    from sidecar.engine.sr_arch import RRDBNet, SRVGGNetCompact, build_upscaler
    from sidecar.engine.upscale import upscale_image

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    net = RRDBNet(3, 3, 64, 23, 32, 2, 1) if args.arch == "esrgan" else SRVGGNetCompact(3, 3, 64, 32, 4)
    up = build_upscaler(net.state_dict())
    del net
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (args.height, args.width, 3), dtype=np.uint8))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    start = time.perf_counter()
    out = upscale_image(up, image, tile=args.tile if args.mode == "tiled" else 0, overlap=args.overlap,
                        device=args.device)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss
    # CPU seconds as well as wall seconds: on a shared machine the wall clock measures the neighbours.
    return {"mode": args.mode, "seconds": round(seconds, 2), "cpuSeconds": round(usage.ru_utime - cpu, 2),
            "peakRssMb": round(peak / 1024, 1),
            "rssBeforeMb": round(before / 1024, 1), "output": list(out.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("esrgan", "srvgg"), default="esrgan")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="tiled,whole")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # the child's one mode
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--mode", mode, *sys.argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            rows.append({"mode": mode, "error": done.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    result = {"arch": args.arch, "input": [args.width, args.height], "tile": args.tile, "overlap": args.overlap,
              "device": args.device, "threads": args.threads, "machine": platform.machine(),
              "python": platform.python_version(), "runs": rows}
    out = ROOT / "bench" / "results" / f"upscale-{args.device}-{args.arch}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

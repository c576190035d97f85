"""What `--force-fp16` costs a CPU ComfyUI: seconds per UNet step with fp16 weights cast to fp32 at every
layer (what ComfyUI does on the CPU under `--force-fp16`) against fp32 weights (what it does without).

    .venv/bin/python bench/comfy_cpu_dtype.py                      # SD1.5's UNet, 512x768, CFG batch 2
    .venv/bin/python bench/comfy_cpu_dtype.py --width 256 --height 384 --steps 3

Why this is the comparison (ComfyUI 0.3.64, read from its source): `comfy/cli_args.py` turns
`--force-fp16` into `--fp16-unet`, so `unet_dtype()` stores the UNet in fp16 on any device; on the CPU
`should_use_fp16()` is False, so `unet_manual_cast()` picks fp32 compute and `comfy.ops.manual_cast`
casts each layer's fp16 weight (and bias) to fp32 on every call. Without the flag the CPU's weights are
fp32 and nothing is cast. Our templates' `ModelComputeDtype fp32` on a CPU server is the same compute in
both cases, so the difference is the per-layer cast. Random weights cost the same time as real ones.

The two setups alternate step by step (the machine's load hits both alike); the first step of each is
warm-up. Reported: the median step, the fastest step (least disturbed by other load) and the median of
the per-pair ratios, with the load average at the end. Prints the figures and merges them into `bench/results/comfy-cpu-dtype.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class CastOnCall(nn.Module):
    """A layer whose weight is stored in `store` and cast to `compute` on every call (comfy.ops.manual_cast)."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, store: torch.dtype, compute: torch.dtype):
        super().__init__()
        self.layer = layer.to(store)
        self.compute = compute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight.to(self.compute)
        bias = self.layer.bias.to(self.compute) if self.layer.bias is not None else None
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, bias)
        return nn.functional.linear(x, weight, bias)


def manual_cast(module: nn.Module, store: torch.dtype, compute: torch.dtype) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            setattr(module, name, CastOnCall(child, store, compute))
        else:
            manual_cast(child, store, compute)
    return module


def unet(tiny: bool) -> nn.Module:
    from diffusers import UNet2DConditionModel

    from sidecar.engine.models import shipped_config
    from sidecar.engine.tiny import TINY_UNET

    torch.manual_seed(0)
    return UNet2DConditionModel.from_config({**shipped_config("unet"), **(TINY_UNET if tiny else {})}).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--steps", type=int, default=4, help="timed steps of each setup (after one warm-up each)")
    ap.add_argument("--tiny", action="store_true", help="the test suite's tiny UNet instead of SD1.5's")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    fp32 = unet(args.tiny)
    cast = manual_cast(unet(args.tiny), torch.float16, torch.float32)
    # The UNet's norms and embeddings ComfyUI also keeps in the weight dtype; only conv/linear dominate.
    latent = torch.randn(2, 4, args.height // 8, args.width // 8)  # CFG: conditioned and unconditioned
    context = torch.randn(2, 77, fp32.config.cross_attention_dim)
    times: dict[str, list[float]] = {"fp32 weights (no --force-fp16)": [], "fp16 weights cast per layer (--force-fp16)": []}
    models = dict(zip(times, (fp32, cast), strict=True))
    with torch.inference_mode():
        for step in range(args.steps + 1):
            for name, model in models.items():
                started = time.perf_counter()
                model(latent, torch.tensor([999 - step]), encoder_hidden_states=context)
                if step:  # the first is warm-up
                    times[name].append(time.perf_counter() - started)
                print(f"step {step} {name}: {time.perf_counter() - started:.2f} s", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    fastest = {name: min(t) for name, t in times.items()}  # least disturbed by other load on the machine
    paired = [b / a for a, b in zip(*times.values(), strict=True)]  # the same moment's load on both
    a, b = medians.values()
    result = {
        "model": "tiny" if args.tiny else "sd15-unet", "width": args.width, "height": args.height,
        "cfgBatch": 2, "steps": args.steps, "threads": torch.get_num_threads(),
        "machine": platform.platform(), "processor": platform.processor(),
        "measuredAt": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "secondsPerStep": {name: round(m, 3) for name, m in medians.items()},
        "fastestStep": {name: round(m, 3) for name, m in fastest.items()},
        "forceFp16SlowerBy": round(b / a, 3),
        "forceFp16SlowerByFastest": round(list(fastest.values())[1] / list(fastest.values())[0], 3),
        "forceFp16SlowerByPairedMedian": round(statistics.median(paired), 3),
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / "comfy-cpu-dtype.json"
    existing = json.loads(out.read_text()) if out.exists() else {}
    existing[f"{result['model']}-{args.width}x{args.height}"] = result
    out.write_text(json.dumps(existing, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Which dtypes a ComfyUI server computes in, and fitting our templates' precision to its device.

Our templates ask for an fp16 UNet (`ModelComputeDtype`), which is right on MPS and CUDA. On the CPU
ComfyUI obeys it too and computes in fp16, measured 3.5-7x slower than fp32 on this project's CPU
(`shared/comfyui-protocol.md` section 7; 10 s/step vs 1.4 s at 64x96), while the embedded engine keeps
fp32 on the CPU. So a job sent to a CPU ComfyUI has that node set to `default`, which on the CPU is
fp32 (ComfyUI's `should_use_fp16` is false for a CPU device, even under `--force-fp16`). The job's
stored workflow keeps the template's value: the same graph, resubmitted, is fitted again.
"""

from __future__ import annotations

import copy
from typing import Any

HALF = ("fp16", "bf16")


def fit_to_device(workflow: dict[str, Any], device: str | None) -> tuple[dict[str, Any], list[str]]:
    """A copy of `workflow` whose ModelComputeDtype nodes do not ask a CPU for half precision, and the
    ids of the nodes changed. Other devices get the workflow unchanged."""
    if device != "cpu":
        return workflow, []
    changed = [nid for nid, node in workflow.items()
               if isinstance(node, dict) and node.get("class_type") == "ModelComputeDtype"
               and (node.get("inputs") or {}).get("dtype") in HALF]
    if not changed:
        return workflow, []
    graph = copy.deepcopy(workflow)
    for nid in changed:
        graph[nid]["inputs"]["dtype"] = "default"
    return graph, changed


def server_dtypes(device: str | None, argv: list[str]) -> dict[str, str]:
    """The compute dtypes of our templates' jobs on a ComfyUI started with `argv` on `device`."""
    flags = set(argv)
    vae = next((name for flag, name in (("--fp32-vae", "fp32"), ("--fp16-vae", "fp16"), ("--bf16-vae", "bf16"))
                if flag in flags), None)
    if device == "cpu":
        # fp16 weights (--force-fp16) are cast to fp32 per layer on the CPU: the compute is fp32.
        return {"unet": "fp32", "vae": vae or "fp32"}
    return {"unet": "fp16", "vae": vae or "default"}

"""Which dtypes a ComfyUI server computes in, and fitting our templates' precision to its device.

Our templates ask for an fp16 UNet (`ModelComputeDtype`), which is right on MPS and CUDA. On the CPU
ComfyUI obeys it and computes in fp16, 3.5-30x slower than fp32 (`shared/comfyui-protocol.md` section
7, `view-metadata-and-launch.json`: 260 s/step against 8.3 at 256x384). The node's `default` is no way
out: it means "the weights' dtype", and under `--force-fp16` (our managed launch) the weights are fp16,
so a CPU computes in fp16 again. A job sent to a CPU server therefore asks for what we mean: `fp32`.
The job records the graph as posted (`ComfyBackend.run`), so a saved workflow replays the same pixels.

`server_dtypes` says what a server will really do for our templates' jobs, from its device (from
`/system_stats`), its launch flags (its argv) and the node's value once fitted.
"""

from __future__ import annotations

from typing import Any

from sidecar.graph import Graph

NODE = "ModelComputeDtype"
TEMPLATE_UNET = "fp16"  # what our templates' ModelComputeDtype asks for

# Launch flags that set a component's weight dtype (ComfyUI's `cli_args`), first match wins.
UNET_FLAGS = (("--fp32-unet", "fp32"), ("--fp64-unet", "fp64"), ("--bf16-unet", "bf16"), ("--fp16-unet", "fp16"),
              ("--fp8_e4m3fn-unet", "fp8_e4m3fn"), ("--fp8_e5m2-unet", "fp8_e5m2"))
VAE_FLAGS = (("--fp16-vae", "fp16"), ("--bf16-vae", "bf16"), ("--fp32-vae", "fp32"))
TEXT_FLAGS = (("--fp8_e4m3fn-text-enc", "fp8_e4m3fn"), ("--fp8_e5m2-text-enc", "fp8_e5m2"),
              ("--fp16-text-enc", "fp16"), ("--bf16-text-enc", "bf16"), ("--fp32-text-enc", "fp32"))


def _flag(argv: list[str], table: tuple[tuple[str, str], ...]) -> str | None:
    flags = set(argv)
    return next((name for flag, name in table if flag in flags), None)


def unet_weight_dtype(device: str | None, argv: list[str]) -> str:
    """The UNet's weight dtype: what ModelComputeDtype `default` computes in."""
    explicit = _flag(argv, UNET_FLAGS)
    if explicit:
        return explicit
    if "--force-fp16" in argv:
        return "fp16"  # recorded on a CPU server too: its weights and compute are fp16
    return "fp32" if device == "cpu" else "fp16"


def wanted_unet(device: str | None, requested: str | None) -> str | None:
    """The dtype to send for a ModelComputeDtype that asks for `requested`, or None to leave it.

    On a CPU half precision is never meant (it is the templates' GPU choice): ask for fp32, also for
    `default`, which computes in the weights' dtype (fp16 under `--force-fp16`)."""
    if device == "cpu" and requested in ("fp16", "bf16", "default"):
        return "fp32"
    return None


def fit_to_device(workflow: dict[str, Any], device: str | None) -> tuple[dict[str, Any], list[str]]:
    """A copy of `workflow` whose ModelComputeDtype nodes ask for what the device should compute in,
    and the ids of the nodes changed. A graph that needs no change is returned as it is."""
    graph = Graph(workflow)
    changes = {}
    for node in graph.of_type(NODE):
        want = wanted_unet(device, node.inputs.get("dtype"))
        if want is not None:
            changes[node.id] = want
    if not changes:
        return workflow, []
    return graph.with_inputs({nid: {"dtype": want} for nid, want in changes.items()}).raw, sorted(changes)


def server_dtypes(device: str | None, argv: list[str]) -> dict[str, str]:
    """The dtypes of our templates' jobs on a ComfyUI started with `argv` on `device`.

    `unet`: the compute dtype of the template's node as we send it; `vae`: its launch flag, else fp32
    on a CPU (and with `--cpu-vae`), fp16 under `--force-fp16`, else ComfyUI's per-card choice
    (`default`); `text_encoder`: its weight dtype (flag, else fp16 as ComfyUI loads it everywhere)."""
    sent = wanted_unet(device, TEMPLATE_UNET) or TEMPLATE_UNET
    vae = _flag(argv, VAE_FLAGS)
    if vae is None:
        if device == "cpu" or "--cpu-vae" in argv:
            vae = "fp32"
        elif "--force-fp16" in argv:
            vae = "fp16"
        else:
            vae = "default"
    return {"unet": sent, "text_encoder": _flag(argv, TEXT_FLAGS) or "fp16", "vae": vae}


def vae_warning(device: str | None, argv: list[str]) -> str | None:
    """The fp16 VAE gives black or washed-out images on Apple MPS only: warn there, nowhere else."""
    if device != "mps" or "--fp32-vae" in argv or "--cpu-vae" in argv:
        return None
    return ("ComfyUI runs on Apple MPS without --fp32-vae: its fp16 VAE gives black or washed-out images. "
            "Restart it with --fp32-vae (the daemon's managed mode does).")

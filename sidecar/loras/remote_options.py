"""`sidecar loras train --remote vast|ssh [--estimate]`: the `remote` object of the request from options
(any key left out comes from the daemon's `[remote.vast]` / `[remote.ssh]` tables), and the plan
`--estimate` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

# option -> (request key, click type, help); the same keys as the request's `remote` object.
VAST_OPTIONS = {
    "max_price_per_hour": ("maxPricePerHour", click.FloatRange(min=0, min_open=True), "most $/hour an offer may cost"),
    "max_total_cost": ("maxTotalCost", click.FloatRange(min=0, min_open=True),
                       "stop the run (keeping its last checkpoint) when it has cost this, $"),
    "max_hours": ("maxHours", click.FloatRange(min=0, min_open=True), "stop the run after this many hours rented"),
    "min_gpu_memory_gb": ("minGpuMemoryGb", click.FloatRange(min=0, min_open=True), "least GPU memory, GB"),
    "min_cuda_version": ("minCudaVersion", click.FloatRange(min=0), "least CUDA version"),
    "min_reliability": ("minReliability", click.FloatRange(0, 1), "least host reliability, 0-1"),
    "min_disk_gb": ("minDiskGb", click.FloatRange(min=0, min_open=True), "disk rented with the instance, GB"),
    "image": ("image", str, "docker image with PyTorch and CUDA"),
}
SSH_OPTIONS = {
    "host": ("host", str, "user@host of the SSH machine"),
    "port": ("port", click.IntRange(1, 65535), "its SSH port"),
    "identity_file": ("identityFile", click.Path(dir_okay=False), "SSH private key"),
    "remote_kohya_dir": ("kohyaDir", str, "sd-scripts folder on the machine"),
    "remote_python": ("python", str, "kohya venv's python on the machine"),
    "ai_toolkit_dir": ("aiToolkitDir", str, "ai-toolkit folder on the machine"),
    "ai_toolkit_python": ("aiToolkitPython", str, "ai-toolkit venv's python on the machine"),
    "work_dir": ("workDir", str, "folder for runs on the machine"),
    "device": ("device", click.Choice(["cuda", "mps", "cpu"]), "what the machine trains on"),
}


def remote_options(f: Callable) -> Callable:
    opts = [
        click.option("--remote", type=click.Choice(["vast", "ssh"]), default=None,
                     help="train on a rented GPU (vast.ai) or an SSH host instead of here"),
        click.option("--estimate", is_flag=True, help="print the plan (steps, time here and there, cost, the offer "
                                                     "and why) and rent nothing"),
    ]
    for name, (_, kind, text) in {**VAST_OPTIONS, **SSH_OPTIONS}.items():
        flag = "--" + name.removeprefix("remote_").replace("_", "-")
        opts.append(click.option(flag, name, type=kind, default=None,
                                 help=f"--remote {'vast' if name in VAST_OPTIONS else 'ssh'}: {text} "
                                      "[default: the daemon's configuration]"))
    for opt in reversed(opts):
        f = opt(f)
    return f


def remote_body(provider: str | None, params: dict[str, Any]) -> dict[str, Any] | None:
    """Pops the remote options from `params`; the request's `remote` object, or None."""
    values = {name: params.pop(name, None) for name in (*VAST_OPTIONS, *SSH_OPTIONS)}
    if provider is None:
        given = [n for n, v in values.items() if v is not None]
        if given:
            raise click.UsageError(f"--{given[0].removeprefix('remote_').replace('_', '-')} needs --remote vast|ssh")
        return None
    table, other = (VAST_OPTIONS, SSH_OPTIONS) if provider == "vast" else (SSH_OPTIONS, VAST_OPTIONS)
    wrong = [n for n in other if values[n] is not None]
    if wrong:
        raise click.UsageError(f"--{wrong[0].removeprefix('remote_').replace('_', '-')} is not an option of "
                               f"--remote {provider}")
    body: dict[str, Any] = {"provider": provider}
    for name, (key, _, _) in table.items():
        if values[name] is not None:
            body[key] = values[name]
    if "identityFile" in body:  # a path on this machine; the daemon may run elsewhere in the tree
        body["identityFile"] = str(Path(body["identityFile"]).expanduser().resolve())
    return body


def describe_remote(remote: dict[str, Any] | None) -> str | None:
    if not remote:
        return None
    where = remote.get("gpu") or remote.get("host") or remote["provider"]
    cost = f", ${remote['costSoFar']:.2f} so far" if remote["provider"] == "vast" else ""
    return f"{remote['provider']} {where}: {remote['state']}{cost}"



def plan_lines(est: dict[str, Any]) -> list[str]:
    """The estimate as the artist reads it."""
    lines = [f"steps: {est['steps']}"]
    here = est.get("hoursHere")
    lines.append(f"here: {duration(here)} at {est['secondsPerStepHere']} s/step (measured)"
                 if here is not None else "here: unknown (no local run has finished yet)")
    offer = est.get("offer")
    if est.get("provider"):
        if est.get("hoursThere") is not None:
            lines.append(f"there: {duration(est['hoursThere'])} incl. set-up, about "
                         f"{est['secondsPerStepThere']} s/step on {offer['gpu'] if offer else '?'}")
        if est.get("expectedCost") is not None:
            lines.append(f"expected cost: ${est['expectedCost']:.2f}")
        if offer:
            lines.append(f"offer: {offer['id']}: {offer['gpu']} {offer['gpuMemoryGb']:.0f} GB at "
                         f"${offer['pricePerHour']:.3f}/h" + (f", reliability {offer['reliability']:.3f}"
                                                             if offer.get("reliability") is not None else ""))
        if est.get("why"):
            lines.append(f"why: {est['why']}")
    if est.get("memory"):
        lines.append(f"GPU memory ({est.get('family')}, {est.get('trainer')}):")
        lines += [f"  {a['gpuMemoryGb']:>3} GB: {a['how']}" for a in est["memory"]]
    lines += [f"note: {w}" for w in est.get("warnings") or []]
    lines.append("nothing was rented")
    return lines


def duration(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"

"""How managed mode launches ComfyUI: its command line (with the device flag it needs and the user's
extra flags) and what its log says about a run that ended.

The command is `<comfyui_python> main.py [--force-fp16] --fp32-vae --listen 127.0.0.1 --port P
[--cpu] [--preview-method latent2rgb] [extra...]` (`--force-fp16` only where ComfyUI runs on a GPU:
see `precision_flags`). ComfyUI picks CUDA unless told otherwise, and on a machine with neither CUDA nor
MPS it exits 1 at import ("Found no NVIDIA driver on your system", recorded in
`view-metadata-and-launch.json`), so `--cpu` is added where ComfyUI's own torch sees neither (or the
`device` setting says `cpu`). The user's `comfyui_extra_args` come last: argparse lets a later flag win.
The supervisor writes a marker line before each run and after each exit, so the last run's command,
exit code and output can be read back from the log by the daemon and by `sidecar doctor`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sidecar.comfyui.supervisor")

BASE_FLAGS = ("--force-fp16", "--fp32-vae")
# Flags by which the user already chose ComfyUI's device: no automatic --cpu then.
DEVICE_CHOICE = ("--cpu", "--directml", "--cuda-device", "--default-device", "--oneapi-device-selector")
PROBE_TIMEOUT = 120.0  # importing torch in ComfyUI's venv: 2-10 s, longer on a cold disk
# Asks ComfyUI's own torch which accelerators it sees (our venv's torch may be another build).
TORCH_PROBE = (
    "import json, torch\n"
    "mps = getattr(torch.backends, 'mps', None)\n"
    "xpu = getattr(torch, 'xpu', None)\n"
    "print(json.dumps({'cuda': torch.cuda.is_available(), 'mps': bool(mps and mps.is_available()),\n"
    "                  'xpu': bool(xpu and xpu.is_available())}))\n"
)
START_MARK = "=== "  # the supervisor's lines in the log start so; ComfyUI's own output does not
EXIT_RE = re.compile(r"^=== .* ComfyUI \(pid (\d+)\) exited with code (-?\d+|None)( \(stopped by the daemon\))?")
STOPPED_MARK = " (stopped by the daemon)"  # after the exit code when the daemon stopped it (SIGTERM): no failure
TAIL_LINES = 20


def extra_args(value: str) -> list[str]:
    """`comfyui_extra_args` split as a shell would (quotes kept together)."""
    return shlex.split(value)


def chosen_by_user(extra: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in DEVICE_CHOICE for arg in extra)


async def probe_accelerators(python: Path, cwd: Path | None = None) -> dict[str, bool] | None:
    """Which accelerators ComfyUI's python sees ({"cuda", "mps", "xpu"}), or None when it cannot tell
    (no torch there, a timeout): then no flag is added and ComfyUI's own error reaches the log."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(python), "-c", TORCH_PROBE, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        log.warning("cannot run %s to see its devices: %s", python, exc)
        return None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        log.warning("%s took over %g s to import torch; launching ComfyUI without a device flag", python,
                    PROBE_TIMEOUT)
        return None
    try:
        found = json.loads(out.decode().strip().splitlines()[-1])
        return {k: bool(found.get(k)) for k in ("cuda", "mps", "xpu")}
    except (ValueError, IndexError, AttributeError):
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        log.warning("%s cannot import torch (%s); launching ComfyUI without a device flag", python, tail[0])
        return None


def device_flags(device_setting: str, extra: list[str], found: dict[str, bool] | None) -> list[str]:
    """`--cpu` where ComfyUI would otherwise die looking for CUDA; nothing where it finds its device."""
    if chosen_by_user(extra):
        return []
    if device_setting == "cpu":
        return ["--cpu"]
    if device_setting != "auto" or found is None:
        return []
    return [] if any(found.values()) else ["--cpu"]


def preview_flags(previews: bool, extra: list[str]) -> list[str]:
    """`--preview-method latent2rgb` when the daemon forwards live previews: ComfyUI sends none by
    default. latent2rgb needs no extra model (taesd would) and costs next to nothing per step; a
    `--preview-method` of the user's own in `comfyui_extra_args` wins."""
    if not previews or any(a == "--preview-method" or a.startswith("--preview-method=") for a in extra):
        return []
    return ["--preview-method", "latent2rgb"]


def precision_flags(device: list[str], extra: list[str]) -> list[str]:
    """`--force-fp16 --fp32-vae` for a GPU server; only `--fp32-vae` for a CPU one (`--cpu` ours or the
    user's). `--force-fp16` makes ComfyUI store the UNet in fp16 on any device (cli_args.py sets
    `fp16_unet`), and on the CPU, which computes in fp32, it then casts every layer's weights to fp32 at
    every call. Measured: the real ComfyUI 0.3.64 on a 2-core CPU ran 1.2-1.45x slower per step with the
    flag than with fp32 weights; bench/comfy_cpu_dtype.py (SD1.5's UNet, 256x384, at load 7.9 on 2
    cores) 1.66x on the least disturbed step, 1.10x on the median of paired steps, 0.99x on the plain
    medians (bench/results/comfy-cpu-dtype.json). Never measured faster with the flag: a CPU server gets
    fp32 weights. On MPS and CUDA fp16 halves the memory and runs faster."""
    on_cpu = "--cpu" in device or "--cpu" in extra
    return [f for f in BASE_FLAGS if not (on_cpu and f == "--force-fp16")]


def launch_command(python: Path, port: int, device: list[str] | None = None,
                   extra: list[str] | None = None, previews: list[str] | None = None) -> list[str]:
    return [str(python), "main.py", *precision_flags(device or [], extra or []), "--listen", "127.0.0.1",
            "--port", str(port), *(device or []), *(previews or []), *(extra or [])]


@dataclass
class StartupFailure:
    """ComfyUI exited before it ever answered: how, how often, and the end of what it printed."""

    exit_code: int | None
    exits: int  # consecutive start-up exits so far
    log_tail: list[str]
    command: list[str]
    log_path: Path
    gave_up: bool = False
    at: float = field(default_factory=time.time)

    def message(self) -> str:
        last = next((line for line in reversed(self.log_tail) if line.strip()), "no output")
        how = f"exit code {self.exit_code}" if self.exit_code is not None else "it could not be started"
        times = f"{self.exits} times in a row" if self.exits > 1 else "once"
        then = ("the daemon stopped restarting it: fix the cause (`sidecar doctor` shows the launch; "
                "`comfyui_extra_args` adds flags such as --cpu) and restart the daemon"
                if self.gave_up else "restarting it")
        return (f"ComfyUI exits during start-up ({how}, {times}): {last.strip()} -- see {self.log_path}; "
                f"{then}.")

    def as_dict(self) -> dict[str, Any]:
        return {"exitCode": self.exit_code, "exits": self.exits, "gaveUp": self.gave_up,
                "logTail": self.log_tail, "command": self.command, "log": str(self.log_path)}


@dataclass
class LastRun:
    """What the log says of the last run (for `sidecar doctor`, which may run with no daemon)."""

    command: str | None
    exit_code: int | None  # None: still running, killed with the daemon, or unknown
    ended: bool
    tail: list[str]
    stopped: bool = False  # the daemon stopped it: its exit code (-15) is no failure


def last_run(path: Path, max_bytes: int = 64 * 1024) -> LastRun | None:
    """The last run in ComfyUI's log (its end only is read: the log can be 10 MB), or None."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    starts = [m for m in re.finditer(r"^=== \S+ \S+ sidecar starts ComfyUI: (.*)$", text, re.M)]
    if not starts:
        return None
    run = text[starts[-1].end():].splitlines()
    exit_code, ended, stopped = None, False, False
    for line in run:
        m = EXIT_RE.match(line)
        if m:
            ended, stopped = True, m.group(3) is not None
            exit_code = None if m.group(2) == "None" else int(m.group(2))
    command = re.sub(r" \(cwd .*\)$", "", starts[-1].group(1))
    tail = [line for line in run if line and not line.startswith(START_MARK)][-TAIL_LINES:]
    return LastRun(command=command, exit_code=exit_code, ended=ended, tail=tail, stopped=stopped)

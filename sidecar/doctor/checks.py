"""The doctor's checks: one function per thing the stack needs, each returning a `Check` with a status
and, when something is missing, the fix. The network is asked once (`probe_network`) and shared.

Why one module of over 400 lines: one small function per check, all sharing the one `Probe`; split by
topic they would scatter the one list that `sidecar doctor` and the studio's Doctor view both read.
"""

from __future__ import annotations

import asyncio
import json
import os
import plistlib
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.answer_limits import MAX_JSON_ANSWER, AnswerTooLarge, read_bounded
from sidecar.comfyui.launch import (
    chosen_by_user,
    device_flags,
    extra_args,
    last_run,
    launch_command,
    preview_flags,
    probe_accelerators,
)
from sidecar.config import Settings
from sidecar.doctor.remote import check_remote
from sidecar.doctor.report import Check, needed

GIB = 1024**3
FP32_VAE = "--fp32-vae"
FORCE_FP16 = "--force-fp16"


@dataclass
class Probe:
    """What the network told us, gathered once: ComfyUI's /system_stats and model lists, the daemon."""

    comfy_stats: dict[str, Any] | None = None
    comfy_models: dict[str, list[str]] = field(default_factory=dict)
    daemon_health: dict[str, Any] | None = None
    daemon_unauthorized: bool = False  # the daemon answered 401: it has a token, and not the one configured here
    port_open: bool = False
    comfy_port_open: bool = False  # something listens on comfyui_port (managed mode's port)


# -- individual checks ----------------------------------------------------------------------------

def check_python() -> Check:
    v = sys.version_info
    return needed(True, v >= (3, 11), "python", f"{sys.version.split()[0]} ({sys.executable})",
                   f"{sys.version.split()[0]} is too old", "install Python 3.11 or newer and recreate .venv")


def check_torch(settings: Settings) -> tuple[list[Check], Any]:
    embedded = settings.resolved_engine == "embedded"
    try:
        import torch
    except ImportError:
        return [needed(embedded, False, "torch", "", "not installed (embedded engine and trainer unavailable)",
                        "pip install -e '.[engine]' in this venv"),
                Check("device", "skip", "no torch")], None
    version = torch.__version__
    if torch.backends.mps.is_available():
        device = Check("device", "ok", "Apple MPS available")
    elif torch.cuda.is_available():
        device = Check("device", "ok", f"CUDA: {torch.cuda.get_device_name(0)}")
    else:
        device = Check("device", "warn", "no MPS or CUDA: the embedded engine runs on the CPU (minutes per image)",
                       "on a Mac use an arm64 Python (not x86 under Rosetta) with a torch build that has MPS")
    return [Check("torch", "ok", version, required=embedded), device], torch


def check_comfyui(settings: Settings, probe: Probe, home: Path) -> list[Check]:
    engine_comfy = settings.resolved_engine == "comfyui"
    managed = settings.comfyui_dir is not None and settings.comfyui_url is None
    checks: list[Check] = []
    # -- install dir
    if settings.comfyui_dir is None:
        guess = home / "tools" / "ComfyUI"
        if (guess / "main.py").is_file():
            checks.append(Check("comfyui dir", "warn", f"found {guess} but comfyui_dir is not set",
                                f"set comfyui_dir = \"{guess}\" (and comfyui_python) in the config"))
        elif engine_comfy:
            checks.append(Check("comfyui dir", "skip", f"not set: attached to {settings.comfyui_url}"))
        else:
            checks.append(Check("comfyui dir", "skip", "not set (optional with the embedded engine)"))
    else:
        main_py = settings.comfyui_dir / "main.py"
        checks.append(needed(engine_comfy and managed, main_py.is_file(), "comfyui dir", str(settings.comfyui_dir),
                              f"{main_py} does not exist",
                              "git clone https://github.com/comfyanonymous/ComfyUI ~/tools/ComfyUI, "
                              "or set comfyui_dir to your checkout"))
    # -- its python
    if settings.comfyui_python is None:
        if settings.comfyui_dir is not None:  # the config refuses managed mode without it: attach mode
            checks.append(Check("comfyui python", "skip", "not set (not needed when attaching to comfyui_url)"))
    else:
        ok = settings.comfyui_python.is_file() and os.access(settings.comfyui_python, os.X_OK)
        detail = _python_version(settings.comfyui_python) if ok else ""
        checks.append(needed(engine_comfy and managed, ok, "comfyui python", f"{settings.comfyui_python} {detail}",
                              f"{settings.comfyui_python} is not an executable file",
                              "create ComfyUI's venv (python3.11 -m venv venv; venv/bin/pip install -r "
                              "requirements.txt) or fix comfyui_python"))
    # -- the server and its launch flags
    url = settings.comfyui_base_url
    if probe.comfy_stats is not None:
        system = probe.comfy_stats.get("system", {})
        devices = probe.comfy_stats.get("devices") or [{}]
        device = devices[0].get("type")
        checks.append(Check("comfyui server", "ok", f"{url}: ComfyUI {system.get('comfyui_version', '?')} on "
                            f"{device or '?'}" + (f" on comfyui_port {settings.comfyui_port} (the daemon's, or one it uses "
                                                  "instead of starting its own)" if managed else ""),
                            required=engine_comfy))
        checks.append(_flags_check(system.get("argv") or [], f"running with {' '.join(system.get('argv') or [])}",
                                   device))
    elif managed and probe.comfy_port_open:
        checks.append(Check("comfyui server", "fail", f"port {settings.comfyui_port} (comfyui_port) is taken by a "
                            "program that is not ComfyUI: the managed ComfyUI could not listen there",
                            "stop that program, or set comfyui_port (--comfyui-port) to a free port",
                            required=engine_comfy))
    else:
        if engine_comfy and not managed:
            checks.append(Check("comfyui server", "fail", f"nothing answers at {url}",
                                "start ComfyUI (`sidecar launchd install --comfyui`, or python main.py --force-fp16 "
                                "--fp32-vae --listen 127.0.0.1) or fix comfyui_url", required=True))
        elif managed and not (settings.comfyui_dir / "main.py").is_file():
            checks.append(Check("comfyui server", "skip", "not running; nothing to start (see comfyui dir)"))
        elif managed:
            checks.append(Check("comfyui server", "ok", f"not running; port {settings.comfyui_port} is free and the "
                                "daemon starts it there", required=engine_comfy))
        else:
            checks.append(Check("comfyui server", "skip", f"not running at {url} (optional with the embedded engine)"))
        agent = home / "Library" / "LaunchAgents" / "com.plasma-sidecar.comfyui.plist"
        if agent.is_file():
            try:
                args = plistlib.loads(agent.read_bytes()).get("ProgramArguments", [])
                checks.append(_flags_check(args, f"launchd agent {agent.name}"))
            except (plistlib.InvalidFileException, ValueError, OSError) as exc:
                checks.append(Check("comfyui flags", "warn", f"{agent} is unreadable ({exc})",
                                    "sidecar launchd install"))
    if managed and settings.comfyui_python is not None:
        checks.extend(check_managed_launch(settings))
    return checks


def check_managed_launch(settings: Settings) -> list[Check]:
    """The command the daemon runs (its device flag decided as the daemon decides it) and how the last
    run ended, read from ComfyUI's log: a ComfyUI that dies at start-up is named with its exit code."""
    extra = extra_args(settings.comfyui_extra_args)
    found = None
    python = settings.comfyui_python
    assert python is not None
    if settings.device == "auto" and not chosen_by_user(extra) and python.is_file():
        found = asyncio.run(probe_accelerators(python))
    cmd = launch_command(python, settings.comfyui_port, device_flags(settings.device, extra, found), extra,
                         preview_flags(settings.previews, extra))
    if found is None and settings.device == "auto" and not chosen_by_user(extra):
        seen = "ComfyUI's python could not say which devices its torch sees: no device flag"
    elif "--cpu" in cmd and not chosen_by_user(extra):
        seen = "no GPU for ComfyUI's torch: --cpu" if found is not None else "device cpu: --cpu"
    else:
        seen = "the device ComfyUI finds" if not chosen_by_user(extra) else "your comfyui_extra_args choose the device"
    checks = [Check("comfyui launch", "ok", f"{' '.join(cmd)} (in {settings.comfyui_dir}; {seen})")]
    log_path = settings.logs_dir / "comfyui.log"
    run = last_run(log_path)
    if run is not None and run.ended and not run.stopped and run.exit_code not in (0, None):
        tail = " | ".join(line.strip() for line in run.tail[-5:] if line.strip()) or "no output"
        checks.append(Check("comfyui last run", "fail", f"exited with code {run.exit_code}: {tail} (see {log_path})",
                            "fix what the log says (no GPU: --cpu in comfyui_extra_args or device = \"cpu\"; a "
                            "missing module: install ComfyUI's requirements in its venv), then restart the daemon",
                            required=settings.resolved_engine == "comfyui"))
    elif run is not None:
        how = ("stopped by the daemon" if run.stopped else f"exited with code {run.exit_code}" if run.ended
               else "running, or killed with the daemon")
        checks.append(Check("comfyui last run", "ok", f"{how} ({log_path})"))
    return checks


def _flags_check(argv: list[str], where: str, device: str | None = "mps") -> Check:
    """The launch flags that matter on Apple MPS (the fp16 VAE's black images, the fp32 UNet's memory).
    A CPU server needs neither (the daemon asks it for fp32); a CUDA one computes fp16 by default."""
    if device not in (None, "mps"):
        return Check("comfyui flags", "ok", f"on {device}: --fp32-vae and --force-fp16 are MPS concerns ({where})")
    missing = [f for f in (FP32_VAE, FORCE_FP16) if f not in argv]
    if not missing:
        return Check("comfyui flags", "ok", f"{FORCE_FP16} {FP32_VAE} ({where})")
    why = {FP32_VAE: "the MPS fp16 VAE gives black or washed-out images",
           FORCE_FP16: "the UNet runs fp32: slower, more memory"}
    return Check("comfyui flags", "warn", f"missing {' '.join(missing)} ({where}): " + "; ".join(why[m] for m in missing),
                 "restart ComfyUI with --force-fp16 --fp32-vae (`sidecar launchd install --comfyui` does)")


def _python_version(python: Path) -> str:
    try:
        res = subprocess.run([str(python), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (res.stdout or res.stderr).strip()


def template_models(workflows_dir: Path) -> dict[str, set[str]]:
    """Model file names the templates name, per folder (loader inputs left at their template value)."""
    keys = {"ckpt_name": "checkpoints", "lora_name": "loras", "control_net_name": "controlnet"}
    found: dict[str, set[str]] = {v: set() for v in keys.values()}
    for path in sorted(workflows_dir.glob("*.json")):
        if path.name == "manifest.json":
            continue
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for node in graph.values() if isinstance(graph, dict) else []:
            for key, folder in keys.items():
                value = (node.get("inputs") or {}).get(key) if isinstance(node, dict) else None
                if isinstance(value, str):
                    found[folder].add(value)
    return found


def models_location(settings: Settings) -> tuple[Path | None, str]:
    if settings.resolved_engine == "comfyui" and settings.comfyui_dir is not None:
        return settings.comfyui_dir / "models", "ComfyUI"
    if settings.resolved_engine == "comfyui":
        return None, "ComfyUI server"
    return settings.models_path, "models_dir"


def check_models(settings: Settings, probe: Probe) -> list[Check]:
    root, where = models_location(settings)
    named = template_models(settings.workflows_dir)
    # The checkpoint and ControlNet slots are filled from the settings; the LoRA keeps its template name.
    wanted = [("checkpoint", "checkpoints", settings.checkpoint, True,
               "download an SD1.5 checkpoint (Anything V5) to {dir}/{file}, or set `checkpoint` to one you have"),
              *[("lora", "loras", name, False,
                 "train it (docs/training/walkthrough.md), then `sidecar loras promote RUN --step N` puts it in {dir}")
                for name in sorted(named["loras"])],
              ("controlnet", "controlnet", settings.controlnet_model, False,
               "download {file} into {dir} (only pose jobs need it)")]
    checks = []
    for name, folder, file_name, required, fix in wanted:
        if root is not None:
            path = root / folder / file_name
            checks.append(needed(required, path.exists(), name, str(path), f"{path} is missing",
                                  fix.format(dir=root / folder, file=file_name)))
        elif folder in probe.comfy_models:
            present = file_name in probe.comfy_models[folder]
            checks.append(needed(required, present, name, f"{file_name} ({where})",
                                  f"{file_name} is not in ComfyUI's models/{folder}",
                                  fix.format(dir=f"ComfyUI's models/{folder}", file=file_name)))
        else:
            checks.append(Check(name, "fail" if required else "warn", f"{file_name}: cannot tell (ComfyUI does not "
                                "answer and comfyui_dir is not set)", "start ComfyUI or set comfyui_dir", required))
    checks.append(check_upscale_models(root, probe))
    return checks


UPSCALE_SUFFIXES = (".pth", ".safetensors", ".pt", ".bin", ".ckpt", ".sft")


def check_upscale_models(root: Path | None, probe: Probe) -> Check:
    """Optional: the print upscale (`generate --upscale`, `upscaleModel`) needs a model in upscale_models/."""
    if root is not None:
        folder = root / "upscale_models"
        names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in UPSCALE_SUFFIXES) \
            if folder.is_dir() else []
        where = str(folder)
    elif "upscale_models" in probe.comfy_models:
        names, where = sorted(probe.comfy_models["upscale_models"]), "ComfyUI's models/upscale_models"
    else:
        return Check("upscale models", "skip", "cannot tell (ComfyUI does not answer and comfyui_dir is not set)")
    if names:
        return Check("upscale models", "ok", f"{', '.join(names)} ({where})")
    return Check("upscale models", "warn", f"none in {where}: `generate --upscale MODEL` (print upscales) needs one",
                 f"optional: put an ESRGAN-family model (e.g. 4x-UltraSharp.pth, RealESRGAN_x4plus_anime_6B.pth) into "
                 f"{where}; the embedded engine runs ESRGAN/RRDBNet and SRVGGNetCompact files, ComfyUI any spandrel knows")


def check_kohya(settings: Settings, torch: Any) -> list[Check]:
    from sidecar.training.kohya import locate

    if settings.kohya_dir is None:
        return [Check("kohya_ss", "warn", "kohya_dir not set: training uses the embedded trainer",
                      "optional: install kohya_ss sd-scripts in ~/tools/kohya_ss and set kohya_dir/kohya_python")]
    install = locate(settings)
    if install is None:
        return [Check("kohya_ss", "warn", f"no train_network.py (or no venv python) in {settings.kohya_dir}",
                      "set kohya_dir to sd-scripts (or the kohya_ss checkout holding it) and kohya_python")]
    checks = [Check("kohya_ss", "ok", str(install.script)),
              Check("kohya venv", "ok", f"{install.python} {_python_version(install.python)}")]
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    config = hf_home / "accelerate" / "default_config.yaml"
    if not config.is_file():
        checks.append(Check("accelerate config", "warn", f"{config} does not exist",
                            f"{install.python.parent / 'accelerate'} config  (this machine, MPS, mixed precision: no)"))
    else:
        m = re.search(r"^mixed_precision:\s*['\"]?(\w+)", config.read_text(encoding="utf-8", errors="replace"), re.M)
        mp = m.group(1) if m else "no"
        mps = sys.platform == "darwin" or bool(torch is not None and torch.backends.mps.is_available())
        if mps and mp in ("fp16", "bf16"):
            checks.append(Check("accelerate config", "warn", f"mixed_precision {mp}: kohya's pinned accelerate "
                                "refuses it on MPS", f"set mixed_precision: 'no' in {config}"))
        else:
            checks.append(Check("accelerate config", "ok", f"{config} (mixed_precision {mp})"))
    return checks


def check_disk(settings: Settings) -> Check:
    path = settings.data_dir
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    detail = f"{free / GIB:.1f} GiB free at {path}"
    if free < 2 * GIB:
        return Check("disk", "fail", detail, "free space: checkpoints, LoRAs and renders need several GiB", True)
    if free < 10 * GIB:
        return Check("disk", "warn", detail, "a training run with checkpoints and states can take 5+ GiB", True)
    return Check("disk", "ok", detail, required=True)


def check_port(settings: Settings, probe: Probe) -> Check:
    where = f"{settings.host}:{settings.port}"
    if probe.daemon_health is not None:
        h = probe.daemon_health
        return Check("daemon", "ok", f"running on {where} (engine {h.get('engine')}, device {h.get('device')}, "
                     f"status {h.get('status')})")
    if probe.daemon_unauthorized:
        return Check("daemon", "fail", f"running on {where}, and it refuses this configuration's token",
                     "give the tools the daemon's token: SIDECAR_TOKEN or `token` in the config file", True)
    if probe.port_open:
        return Check("daemon", "fail", f"{where} is taken by another program", "stop it, or set port to a free one",
                     True)
    return Check("daemon", "ok", f"not running; {where} is free (`sidecar serve`)")


def check_launchd(home: Path) -> Check:
    from sidecar.launchd.agents import agent_status, find_launchctl

    if find_launchctl() is None:
        return Check("launchd", "skip", f"no launchd on {sys.platform}")
    rows = agent_status(home)
    parts = [f"{r['agent']} {'loaded' if r['loaded'] else 'installed' if r['installed'] else 'not installed'}"
             for r in rows]
    daemon = next(r for r in rows if r["agent"] == "daemon")
    if daemon["loaded"]:
        return Check("launchd", "ok", ", ".join(parts))
    return Check("launchd", "warn", ", ".join(parts), "optional: `sidecar launchd install` starts it at login")


# -- probing the network --------------------------------------------------------------------------

async def probe_network(settings: Settings) -> Probe:
    import aiohttp

    probe = Probe()
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def get(url: str, headers: dict[str, str] | None = None) -> Any:
            try:
                async with session.get(url, headers=headers) as resp:
                    if resp.status == 401 and headers is not None:  # only the daemon gets headers
                        probe.daemon_unauthorized = True
                    return json.loads(await read_bounded(resp, MAX_JSON_ANSWER)) if resp.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, AnswerTooLarge):
                return None

        base = settings.comfyui_base_url
        # The daemon's token goes to the daemon only, never to ComfyUI.
        daemon_auth = {"Authorization": f"Bearer {settings.token_value}"} if settings.token_value else {}
        stats, health = await asyncio.gather(get(f"{base}/system_stats"),
                                             get(f"{settings.daemon_url}/health", daemon_auth))
        if isinstance(stats, dict) and "system" in stats:
            probe.comfy_stats = stats
            for folder in ("checkpoints", "loras", "controlnet", "upscale_models"):
                listing = await get(f"{base}/models/{folder}")
                if isinstance(listing, list):
                    probe.comfy_models[folder] = listing
        if isinstance(health, dict) and "status" in health:
            probe.daemon_health = health
    probe.port_open = probe.daemon_health is not None or await asyncio.to_thread(_port_open, settings.host,
                                                                                  settings.port)
    if settings.comfyui_url is None:
        probe.comfy_port_open = probe.comfy_stats is not None or await asyncio.to_thread(
            _port_open, "127.0.0.1", settings.comfyui_port)
    return probe


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def run_checks(settings: Settings, home: Path | None = None) -> list[Check]:
    home = home or Path.home()
    probe = asyncio.run(probe_network(settings))
    torch_checks, torch = check_torch(settings)
    remote = asyncio.run(check_remote(settings))
    return [check_python(), *torch_checks, *check_comfyui(settings, probe, home), *check_models(settings, probe),
            *check_kohya(settings, torch), *remote, check_disk(settings), check_port(settings, probe),
            check_launchd(home)]

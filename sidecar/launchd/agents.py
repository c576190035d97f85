"""launchd user agents for the daemon and ComfyUI: render the templates shipped in `sidecar/assets/launchd/`
with this user's paths, where they are installed (~/Library/LaunchAgents), and what `launchctl print`
says of them. A library (no click): the `sidecar launchd` commands and the doctor's check both use it.
The daemon itself knows nothing of launchd.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.assets import LAUNCHD, asset_path
from sidecar.config import http_url
from sidecar.errors import LaunchdError

DAEMON_LABEL = "com.plasma-sidecar.daemon"
COMFYUI_LABEL = "com.plasma-sidecar.comfyui"
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass
class Agent:
    name: str  # "daemon" | "comfyui"
    label: str
    plist: dict[str, Any]
    path: Path  # where it is installed

    def render(self) -> bytes:
        return plistlib.dumps(self.plist, sort_keys=False)


def agents_dir(home: Path | None = None) -> Path:
    return (home or Path.home()) / "Library" / "LaunchAgents"


def logs_dir(home: Path | None = None) -> Path:
    return (home or Path.home()) / "Library" / "Logs" / "plasma-sidecar"


def render_template(name: str, values: dict[str, str]) -> dict[str, Any]:
    """Load a template and fill `{placeholders}` in every string; an unknown one is a bug, not a blank."""
    with (asset_path(LAUNCHD) / f"{name}.plist").open("rb") as fh:
        template = plistlib.load(fh)

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            def sub(m: re.Match) -> str:
                if m.group(1) not in values:
                    raise KeyError(f"template {name}.plist uses an unknown placeholder {{{m.group(1)}}}")
                return values[m.group(1)]
            return PLACEHOLDER.sub(sub, node)
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        return node

    return fill(template)


def default_path_env() -> str:
    """PATH for the agents: this venv first, Homebrew, then the system (launchd's PATH is minimal)."""
    dirs = [str(Path(sys.executable).parent), "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin",
            "/usr/sbin", "/sbin"]
    return ":".join(dict.fromkeys(dirs))


def build_agents(settings, *, comfyui: bool | None, config_file: Path | None = None,
                 home: Path | None = None) -> list[Agent]:
    """The agents to install, ComfyUI first (the daemon attaches to it). `comfyui=None`: install the
    ComfyUI agent when comfyui_dir and comfyui_python are configured."""
    home = home or Path.home()
    with_comfy = comfyui if comfyui is not None else bool(settings.comfyui_dir and settings.comfyui_python)
    values = {
        "python": str(Path(sys.executable).absolute()),
        "data_dir": str(settings.data_dir),
        "logs_dir": str(logs_dir(home)),
        "path": default_path_env(),
        "comfyui_port": str(settings.comfyui_port),
        "comfyui_dir": str(settings.comfyui_dir or ""),
        "comfyui_python": str(settings.comfyui_python or ""),
    }
    agents: list[Agent] = []
    if with_comfy:
        if not settings.comfyui_dir or not settings.comfyui_python:
            raise LaunchdError("ComfyUI under launchd needs comfyui_dir and comfyui_python in the configuration "
                               "(e.g. ~/tools/ComfyUI and ~/tools/ComfyUI/venv/bin/python).")
        if not (settings.comfyui_dir / "main.py").is_file():
            raise LaunchdError(f"{settings.comfyui_dir / 'main.py'} does not exist: comfyui_dir must be a ComfyUI "
                               "checkout.")
        if not settings.comfyui_python.is_file():
            raise LaunchdError(f"comfyui_python {settings.comfyui_python} does not exist.")
        agents.append(Agent("comfyui", COMFYUI_LABEL, render_template(COMFYUI_LABEL, values),
                            agents_dir(home) / f"{COMFYUI_LABEL}.plist"))
    daemon = render_template(DAEMON_LABEL, values)
    if with_comfy:
        daemon["ProgramArguments"] += ["--comfyui-url", http_url("127.0.0.1", settings.comfyui_port)]
    if config_file is not None:
        daemon["ProgramArguments"] += ["--config", str(Path(config_file).expanduser().resolve())]
    agents.append(Agent("daemon", DAEMON_LABEL, daemon, agents_dir(home) / f"{DAEMON_LABEL}.plist"))
    return agents


# -- launchctl ------------------------------------------------------------------------------------

def find_launchctl() -> str | None:
    """launchctl on macOS. SIDECAR_LAUNCHCTL names another program (tests use a recording fake)."""
    override = os.environ.get("SIDECAR_LAUNCHCTL")
    if override:
        return override
    if sys.platform != "darwin":
        return None
    return shutil.which("launchctl") or ("/bin/launchctl" if Path("/bin/launchctl").exists() else None)


class Launchctl:
    def __init__(self, program: str):
        self.program = program
        self.domain = f"gui/{os.getuid()}"

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.program, *args], capture_output=True, text=True, timeout=30)

    def bootstrap(self, plist: Path) -> subprocess.CompletedProcess:
        return self.run("bootstrap", self.domain, str(plist))

    def bootout(self, label: str) -> subprocess.CompletedProcess:
        return self.run("bootout", f"{self.domain}/{label}")

    def state(self, label: str) -> dict[str, Any]:
        """{"loaded": bool, "state": "running"|..., "pid": int|None} from `launchctl print`."""
        res = self.run("print", f"{self.domain}/{label}")
        if res.returncode != 0:
            return {"loaded": False, "state": None, "pid": None}
        state = re.search(r"^\s*state = (\S+)", res.stdout, re.M)
        pid = re.search(r"^\s*pid = (\d+)", res.stdout, re.M)
        return {"loaded": True, "state": state.group(1) if state else None, "pid": int(pid.group(1)) if pid else None}


def agent_status(home: Path | None = None) -> list[dict[str, Any]]:
    """Per agent: installed (plist present), loaded/state/pid when launchd is there (None when not)."""
    program = find_launchctl()
    ctl = Launchctl(program) if program else None
    out = []
    for name, label in (("comfyui", COMFYUI_LABEL), ("daemon", DAEMON_LABEL)):
        path = agents_dir(home) / f"{label}.plist"
        row: dict[str, Any] = {"agent": name, "label": label, "plist": str(path), "installed": path.is_file()}
        row.update(ctl.state(label) if ctl else {"loaded": None, "state": None, "pid": None})
        out.append(row)
    return out

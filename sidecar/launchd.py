"""launchd user agents for the daemon and ComfyUI: render the templates shipped in `sidecar/assets/launchd/`
with this user's paths, install them into ~/Library/LaunchAgents and (un)load them with `launchctl
bootstrap|bootout gui/<uid>`. On a system without launchd it explains and stops (`--dry-run` still
prints the rendered plists). The daemon itself knows nothing of launchd.

Exit codes (the classes in `sidecar.errors`): 0 ok, 1 launchctl failed (`LaunchctlFailed`), 2 bad
configuration (`ConfigError`, `LaunchdError`), 3 no launchd on this system (`LaunchdUnavailable`).
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sidecar.assets import LAUNCHD, asset_path
from sidecar.atomic import write_bytes
from sidecar.cli_support import tool_group
from sidecar.config import http_url
from sidecar.errors import LaunchctlFailed, LaunchdError, LaunchdUnavailable

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


# -- CLI ------------------------------------------------------------------------------------------

NO_LAUNCHD = (f"launchd is macOS's service manager and this system ({sys.platform}) has none, so nothing "
              "was installed. Run `sidecar serve` under your own service manager, or look at the agents with "
              "`sidecar launchd install --dry-run`.")


def _agents(config_file: Path | None, comfyui: bool | None) -> list[Agent]:
    from sidecar.config import load_settings

    return build_agents(load_settings({}, config_file)[0], comfyui=comfyui, config_file=config_file)


def _launchctl() -> Launchctl:
    program = find_launchctl()
    if program is None:
        raise LaunchdUnavailable(NO_LAUNCHD)
    return Launchctl(program)


config_option = click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
                             default=None, help="config file the daemon agent is started with")
dry_run_option = click.option("--dry-run", is_flag=True, help="print what would be done; change nothing")


@tool_group("launchd")
def launchd_cli() -> None:
    """Start the daemon (and ComfyUI) at login with launchd agents (macOS).

    \b
    Examples:
      sidecar launchd install --dry-run        # print the rendered plists (any system)
      sidecar launchd install                  # ComfyUI agent too when comfyui_dir/comfyui_python are set
      sidecar launchd status
      sidecar launchd uninstall

    Logs go to ~/Library/Logs/plasma-sidecar/. Exit codes: 0 ok, 1 launchctl failed,
    2 bad configuration, 3 no launchd on this system.
    """


@launchd_cli.command()
@config_option
@click.option("--comfyui/--no-comfyui", default=None,
              help="also run ComfyUI as an agent [default: when comfyui_dir and comfyui_python are configured]")
@dry_run_option
def install(config_file: Path | None, comfyui: bool | None, dry_run: bool) -> None:
    """Render the agents into ~/Library/LaunchAgents and load them."""
    agents = _agents(config_file, comfyui)
    if dry_run:
        for agent in agents:
            click.echo(f"# {agent.path}")
            click.echo(agent.render().decode())
        return
    ctl = _launchctl()
    logs_dir().mkdir(parents=True, exist_ok=True)
    for agent in agents:
        Path(agent.plist["WorkingDirectory"]).mkdir(parents=True, exist_ok=True)
        agent.path.parent.mkdir(parents=True, exist_ok=True)
        if ctl.state(agent.label)["loaded"]:
            ctl.bootout(agent.label)  # bootstrap refuses a label that is already loaded
        write_bytes(agent.path, agent.render())
        res = ctl.bootstrap(agent.path)
        if res.returncode != 0:
            raise LaunchctlFailed(f"launchctl bootstrap {ctl.domain} {agent.path} failed ({res.returncode}): "
                                  f"{(res.stderr or res.stdout).strip()}")
        click.echo(f"loaded {agent.label} from {agent.path}")
    click.echo(f"logs: {logs_dir()}")


@launchd_cli.command()
@dry_run_option
def uninstall(dry_run: bool) -> None:
    """Unload the agents and remove their plists."""
    ctl = None if dry_run else _launchctl()
    for name, label in (("daemon", DAEMON_LABEL), ("comfyui", COMFYUI_LABEL)):
        path = agents_dir() / f"{label}.plist"
        if dry_run:
            click.echo(f"would run: launchctl bootout gui/{os.getuid()}/{label}")
            if path.exists():
                click.echo(f"would remove {path}")
            continue
        assert ctl is not None
        if ctl.state(label)["loaded"]:
            res = ctl.bootout(label)
            if res.returncode != 0:
                raise LaunchctlFailed(f"launchctl bootout {ctl.domain}/{label} failed: "
                                      f"{(res.stderr or res.stdout).strip()}")
            click.echo(f"unloaded {label}")
        if path.exists():
            path.unlink()
            click.echo(f"removed {path}")


@launchd_cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool) -> None:
    """Which agents are installed and loaded (running, pid)."""
    rows = agent_status()
    if as_json:
        click.echo(json.dumps({"launchd": find_launchctl() is not None, "agents": rows}, indent=2))
    else:
        for row in rows:
            loaded = {None: "launchd n/a", True: f"loaded ({row['state'] or '?'}"
                      + (f", pid {row['pid']})" if row["pid"] else ")"), False: "not loaded"}[row["loaded"]]
            click.echo(f"{row['label']:<28} {'installed' if row['installed'] else 'not installed':<14} {loaded}")
    if find_launchctl() is None:
        raise LaunchdUnavailable(NO_LAUNCHD)

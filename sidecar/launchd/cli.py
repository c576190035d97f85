"""`sidecar launchd install|uninstall|status`: the agents of `sidecar.launchd.agents`, installed and
(un)loaded with `launchctl bootstrap|bootout gui/<uid>`. On a system without launchd it explains and
stops (`--dry-run` still prints the rendered plists).

Exit codes (the classes in `sidecar.errors`): 0 ok, 1 launchctl failed (`LaunchctlFailed`), 2 bad
configuration (`ConfigError`, `LaunchdError`), 3 no launchd on this system (`LaunchdUnavailable`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from sidecar.atomic import write_bytes
from sidecar.cli_support import tool_group
from sidecar.errors import LaunchctlFailed, LaunchdUnavailable
from sidecar.launchd.agents import (
    COMFYUI_LABEL,
    DAEMON_LABEL,
    Agent,
    Launchctl,
    agent_status,
    agents_dir,
    build_agents,
    find_launchctl,
    logs_dir,
)

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

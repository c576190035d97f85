"""What the `sidecar` commands share: the group class that maps our errors to exit codes (the one
place that does), the configuration options and the settings they build.

The root command module (`sidecar/cli.py`) and every command group import from here; nothing here
imports a command module, so the lazy command table never imports back into its own root.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sidecar.config import Settings, load_settings
from sidecar.errors import SidecarError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class ToolGroup(click.Group):
    """A click group whose commands raise our errors: each becomes its one stderr line and its class's
    `exit_code` (`sidecar.errors`), wherever in the command it was raised."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SidecarError as exc:
            click.echo(exc.cli_line(), err=True)
            ctx.exit(exc.exit_code)


def tool_group(name: str | None = None, **kwargs: Any):
    """`@click.group`, with our error handling and `-h`."""
    return click.group(name, cls=ToolGroup, context_settings=CONTEXT_SETTINGS, **kwargs)


def config_options(f):
    """Options shared by every command that needs the settings; each mirrors a config key."""
    opts = [
        click.option("--host", default=None, help="bind address [default: 127.0.0.1]"),
        click.option("--port", type=int, default=None, help="[default: 3000]"),
        click.option("--allow-remote", is_flag=True, default=None, help="allow binding to a non-loopback address"),
        click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                     help="TOML config file [default: ~/.config/plasma-sidecar/config.toml]"),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="jobs, logs, database"),
        click.option("--profile", default=None, help="hardware profile [default: m1pro-16gb]"),
        click.option("--engine", type=click.Choice(["auto", "embedded", "comfyui"]), default=None,
                     help="generation backend; auto = ComfyUI when configured, else embedded"),
        click.option("--models-dir", type=click.Path(path_type=Path), default=None,
                     help="checkpoints/, loras/, controlnet/ for the embedded engine [default: <data-dir>/models]"),
        click.option("--device", type=click.Choice(["auto", "mps", "cuda", "cpu"]), default=None),
        click.option("--comfyui-url", default=None, help="attach to a running ComfyUI"),
        click.option("--comfyui-dir", type=click.Path(path_type=Path), default=None,
                     help="ComfyUI install to start and supervise"),
        click.option("--comfyui-python", type=click.Path(path_type=Path), default=None,
                     help="python of ComfyUI's venv (managed mode)"),
        click.option("--kohya-dir", type=click.Path(path_type=Path), default=None, help="kohya_ss sd-scripts dir"),
        click.option("--kohya-python", type=click.Path(path_type=Path), default=None, help="python of kohya's venv"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def settings_from(flags: dict[str, Any]) -> tuple[Settings, dict[str, str]]:
    """The effective settings from a command's configuration flags (pops `config_file`); a bad value
    raises `ConfigError`, which the group reports (exit 2)."""
    config_file = flags.pop("config_file", None)
    return load_settings(flags, config_file)


def current_settings() -> Settings:
    """The effective settings of a tool that takes no configuration flags (environment, config file)."""
    return settings_from({})[0]


url_option = click.option("--url", default=None,
                          help="the daemon [default: http://<host>:<port> from the configuration]")


def daemon_url(url: str | None = None) -> str:
    """`--url` when given, else the configured daemon's."""
    return url or current_settings().daemon_url

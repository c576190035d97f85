"""What the `sidecar` commands share: the group class that maps our errors to exit codes (the one
place that does), the configuration options and the settings they build.

The root command module (`sidecar/cli.py`) and every command group import from here; nothing here
imports a command module, so the lazy command table never imports back into its own root.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sidecar.config import Settings, load_settings
from sidecar.errors import EXIT_FAILED, SidecarError

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


def _flag_type(annotation: Any) -> tuple[Any, bool] | None:
    """A setting's click type and whether the flag repeats (a list); None for a table (file only)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            return None
        annotation = args[0]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False
    if origin in (list, tuple, set, frozenset):
        inner = _flag_type(typing.get_args(annotation)[0])
        return (inner[0], True) if inner is not None and not inner[1] else None
    if annotation is Path:
        return click.Path(path_type=Path), False
    if annotation in (str, int, float, bool):
        return annotation, False
    if annotation is SecretStr:  # typed on the command line, kept secret in the model
        return str, False
    return None


def _setting_option(name: str, field: FieldInfo) -> Callable[[Any], Any] | None:
    """The `--name-with-dashes` option of one setting: its help is the field's description and click
    shows the field's default. Only a value given on the command line counts as a flag (see
    `settings_from`), so the environment and the file still override the defaults."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    kind = (str, False) if extra.get("flag_type") == "text" else _flag_type(field.annotation)
    if kind is None:
        return None
    click_type, multiple = kind
    flag = "--" + name.replace("_", "-")
    default = None if field.default is PydanticUndefined or multiple else field.default
    if click_type is bool:
        flag, click_type = f"{flag}/--no-{flag[2:]}", None
    aliases = list(extra.get("flag_aliases", []))  # a shorter spelling (`--project` for project_root)
    return click.option(flag, *aliases, name, type=click_type, default=default, multiple=multiple, help=field.description,
                        show_default=default not in (None, ""))


def config_options(f):
    """One option per setting (`sidecar.config.Settings`), plus `--config FILE`."""
    opts = [click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                         help="TOML config file [default: $SIDECAR_CONFIG, else "
                              "~/.config/plasma-sidecar/config.toml]")]
    for name, field in Settings.model_fields.items():
        opt = _setting_option(name, field)
        if opt is not None:
            opts.append(opt)
    for opt in reversed(opts):
        f = opt(f)
    return f


def settings_from(flags: dict[str, Any]) -> tuple[Settings, dict[str, str]]:
    """The effective settings from a command's configuration flags (pops `config_file`); a bad value
    raises `ConfigError`, which the group reports (exit 2). Only flags given on the command line
    count: an option left at the default click shows must not hide the environment or the file."""
    config_file = flags.pop("config_file", None)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        flags = {k: v for k, v in flags.items()
                 if ctx.get_parameter_source(k) in (click.core.ParameterSource.COMMANDLINE, None)}
    return load_settings({k: list(v) if isinstance(v, tuple) else v for k, v in flags.items() if v != ()},
                         config_file)


def current_settings() -> Settings:
    """The effective settings of a tool that takes no configuration flags (environment, config file)."""
    return settings_from({})[0]


url_option = click.option("--url", default=None,
                          help="the daemon [default: http://<host>:<port> from the configuration]")


def report_sheet(index: Path, sheet: Path, failed: int, total: int, *, as_json: bool,
                 hint: str | None = None) -> int:
    """How a command that renders cells into a contact sheet ends (`sidecar grid`, `sidecar loras sweep`):
    the index (JSON) or where the sheet and index are, and a failure exit when any cell failed."""
    if as_json:
        click.echo(index.read_text())
    else:
        click.echo(f"contact sheet: {sheet}")
        click.echo(f"index: {index}")
        if hint:
            click.echo(hint)
    if failed:
        click.echo(f"error: {failed} of {total} render(s) failed; see the index.", err=True)
        return EXIT_FAILED
    return 0

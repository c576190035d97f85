"""reference/cli.md: every command of the `sidecar` and `generate` tools, read off the click commands
that `[project.scripts]` in pyproject.toml installs: usage, help and each option with its help."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click

from manual.markdown import GENERATED, cell, code, table
from sidecar.config import Settings

PATH = "reference/cli.md"
SETTINGS = set(Settings.model_fields)
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def scripts() -> dict[str, click.Command]:
    """The installed commands by name, loaded the way the console scripts load them."""
    entries = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["scripts"]
    commands = {}
    for name, target in entries.items():
        module, attr = target.split(":")
        commands[name] = getattr(importlib.import_module(module), attr)
    return commands


def walk(command: click.Command, ctx: click.Context) -> Iterator[tuple[click.Context, click.Command]]:
    """The command, then its subcommands depth first (lazy groups load theirs by name)."""
    yield ctx, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))


def _section(ctx: click.Context, command: click.Command) -> str:
    path = ctx.command_path
    level = "#" * min(2 + path.count(" "), 4)
    usage = " ".join([path, *command.collect_usage_pieces(ctx)])
    parts = [f"{level} `{path}`\n", f"```text\nUsage: {usage}\n```\n"]
    if command.help:
        # click's `\b` marks a paragraph it must not rewrap: shown as written, like `--help` shows it
        text = inspect.cleandoc(command.help).replace("\b\n", "")
        parts.append("```text\n" + text + "\n```\n")
    rows = []
    settings = 0
    # a command that reads the whole configuration (`--config FILE`) takes one flag per setting
    configured = any(param.name == "config_file" for param in command.params)
    for param in command.get_params(ctx):
        if configured and param.name in SETTINGS:
            settings += 1  # the same flag on every command that reads the configuration: listed once
            continue
        record = param.get_help_record(ctx)
        if record is None:
            if isinstance(param, click.Argument):
                rows.append([code(param.make_metavar(ctx) if _takes_ctx(param) else param.make_metavar()), "argument"])
            continue
        opts, help_ = record
        rows.append([code(opts), cell(help_)])
    if rows:
        parts.append(table(["option", "what it does"], rows))
    if settings:
        parts.append("Also takes one flag per setting (`--port`, `--data-dir`, ...): see the "
                     "[settings reference](settings.md).\n")
    if isinstance(command, click.Group):
        subs = [code(f"{path} {name}") for name in command.list_commands(ctx)]
        parts.append("Commands: " + ", ".join(subs) + ".\n")
    return "\n".join(parts)


def _takes_ctx(param: click.Parameter) -> bool:
    return "ctx" in inspect.signature(param.make_metavar).parameters


def render() -> str:
    parts = ["# Command-line reference\n", GENERATED.format(source="the click commands (`sidecar`, `generate`)"),
             "Every command with `--help` prints the same. Exit codes: 0 ok, 1 failed, 2 bad input, usage or "
             "configuration (nothing changed), 3 the daemon (or launchd) is not there, 4 a training holds "
             "the device; `generate` adds 5 (a torn generation log) and 130 (interrupted). "
             "The codes behind them: [Error codes](errors.md).\n"]
    for name, command in scripts().items():
        ctx = click.Context(command, info_name=name, terminal_width=100)
        parts += [_section(c, cmd) for c, cmd in walk(command, ctx)]
    return "\n".join(parts)

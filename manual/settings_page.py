"""reference/settings.md: every setting of `sidecar.config.Settings` with its flag, environment variable,
type, default and description, and the keys of its TOML tables (`[remote.*]`, `[[backends]]`)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from manual.markdown import GENERATED, cell, code, table
from sidecar.config import Settings

PATH = "reference/settings.md"
ENV_PREFIX = Settings.model_config.get("env_prefix", "")


def _serve_flags() -> dict[str, str]:
    """Setting name -> the flags `sidecar serve` really offers for it (read off the click command)."""
    from manual.cli_page import scripts

    main = scripts()["sidecar"]
    ctx = click.Context(main, info_name="sidecar")
    serve = main.get_command(ctx, "serve")
    assert serve is not None
    flags: dict[str, str] = {}
    for param in serve.params:
        if isinstance(param, click.Option) and param.name:
            flags[param.name] = ", ".join([*param.opts, *param.secondary_opts])
    return flags


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type: `int`, `path`, `"a" | "b"`, `list of str`, `table`..."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' for a in typing.get_args(annotation))
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is not None and args:  # Optional[X] / X | None
        return type_name(args[0]) if len(args) == 1 else " or ".join(type_name(a) for a in args)
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "table"
        if issubclass(annotation, Path):
            return "path"
        if annotation.__name__ == "SecretStr":
            return "secret str"
        return annotation.__name__
    return str(annotation)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        made = field.default_factory()  # type: ignore[call-arg]
        if isinstance(made, BaseModel):
            return "see its table"
        if made in ([], ()):
            return "none"
        return "see description" if "[default:" in (field.description or "") else "computed at start"
    if field.default is PydanticUndefined:
        return "required"
    if field.default in (None, ""):
        return "none"
    if isinstance(field.default, bool):
        return code(str(field.default).lower())
    return code(field.default)


def _nested(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _table_rows(model: type[BaseModel], prefix: str) -> list[list[str]]:
    rows: list[list[str]] = []
    for name, field in model.model_fields.items():
        inner = _nested(field.annotation)
        if inner is not None and typing.get_origin(field.annotation) is None:
            rows += _table_rows(inner, f"{prefix}{name}.")
            continue
        rows.append([code(prefix + name), cell(type_name(field.annotation)), default_text(field),
                     cell(field.description or "")])
    return rows


def render() -> str:
    flags = _serve_flags()
    rows = []
    tables: list[tuple[str, type[BaseModel], str]] = []
    for name, field in Settings.model_fields.items():
        inner = _nested(field.annotation)
        if inner is not None:
            list_of = typing.get_origin(field.annotation) in (list, tuple)
            tables.append((f"[[{name}]]" if list_of else f"[{name}.*]", inner, "" if list_of else f"{name}."))
        flag = code(flags[name]) if name in flags else "TOML only"
        rows.append([code(name), flag, code(ENV_PREFIX + name.upper()), cell(type_name(field.annotation)),
                     default_text(field), cell(field.description or "")])
    parts = [
        "# Settings reference\n",
        GENERATED.format(source="`sidecar.config.Settings`"),
        "Precedence: command-line flags > `SIDECAR_*` environment > TOML file (`--config FILE`, default "
        "`~/.config/plasma-sidecar/config.toml`) > defaults. A table setting is set in the TOML file "
        "(or, as JSON, in its environment variable). What each setting means in practice: "
        "[Configuration](../configuration.md).\n",
        table(["setting (TOML key)", "flag", "environment", "type", "default", "description"], rows),
    ]
    for title, model, prefix in tables:
        parts.append(f"\n## `{title}`\n")
        if model.__doc__:
            parts.append(cell(model.__doc__) + "\n")
        parts.append(table(["key", "type", "default", "description"], _table_rows(model, prefix)))
    return "\n".join(parts)

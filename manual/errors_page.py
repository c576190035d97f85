"""reference/errors.md: every stable error code, from the error tree (`sidecar.errors`): each class with
its code, HTTP status and exit code, walked from `SidecarError` down, and the tree's own docstring (which
also names the codes a failed job or training run carries)."""

from __future__ import annotations

import inspect

from manual.markdown import GENERATED, cell, code, table
from sidecar import errors

PATH = "reference/errors.md"


def classes() -> list[tuple[int, type[errors.SidecarError]]]:
    """(depth, class) for every error class of the tree, parents before children, in definition order."""
    def defined(cls: type) -> bool:
        return cls.__module__ == errors.__name__ or cls.__module__.startswith(errors.__name__ + ".")

    def order(cls: type) -> tuple[str, int]:
        try:
            return (cls.__module__, inspect.getsourcelines(cls)[1])
        except (OSError, TypeError):
            return (cls.__module__, 0)

    out: list[tuple[int, type[errors.SidecarError]]] = []

    def visit(cls: type[errors.SidecarError], depth: int) -> None:
        out.append((depth, cls))
        for sub in sorted((c for c in cls.__subclasses__() if defined(c)), key=order):
            visit(sub, depth + 1)

    visit(errors.SidecarError, 0)
    return out


def render() -> str:
    rows = []
    for depth, cls in classes():
        name = ("&nbsp;&nbsp;" * depth) + ("└ " if depth else "") + cls.__name__
        doc = inspect.getdoc(cls) if cls.__doc__ else ""
        code_ = "the daemon's code" if cls is getattr(errors, "DaemonRefused", None) else code(cls.code)
        rows.append([name, code_, str(cls.http_status), str(cls.exit_code), cell((doc or "").split("\n\n")[0])])
    return "\n".join([
        "# Error codes\n",
        GENERATED.format(source="the error tree, `sidecar.errors`"),
        "Every error the daemon answers is `{\"error\": {\"code\": \"<stable code>\", \"message\": \"<sentence>\", "
        "\"details\": {...}}}` with the HTTP status below; a command that meets it prints one line on stderr "
        "and exits with its exit code (0 ok, 1 failed, 2 bad input or configuration: nothing changed, 3 the "
        "daemon or launchd is not there, 4 a training holds the device; `generate` adds 5, a torn log, and "
        "130, interrupted). A code a subclass does not set is its parent's. Which codes each operation can "
        "answer: [HTTP API reference](http-api.md).\n",
        table(["class", "code", "HTTP", "exit", "what it means"], rows),
        "\n## The tree, as the docstring of `sidecar.errors` states it\n",
        "It also lists the codes a failed job or training run carries (stored on the job or run, never an "
        "HTTP answer of their own).\n",
        "```text\n" + inspect.cleandoc(errors.__doc__ or "") + "\n```\n",
    ])

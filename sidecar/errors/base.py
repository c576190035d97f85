"""The root of the tree, the exit codes every command shares, and the families by HTTP status that the other
modules' errors belong to; `error_class` finds a code's class in the whole tree."""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE, EXIT_BUSY = 0, 1, 2, 3, 4
EXIT_NO_DAEMON = EXIT_UNAVAILABLE
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C
PACKAGE = __name__.rpartition(".")[0] + "."  # sidecar.errors.: the tree's modules


class SidecarError(Exception):
    """Base of every error we report. `code` is stable: clients and tests match on it."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_FAILED

    def __init__(self, message: str, details: dict[str, Any] | None = None, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        if code is not None:
            # Job failures reuse this class with their own code (see JobFailed).
            self.code = code  # type: ignore[misc]

    def cli_line(self) -> str:
        """The one line a command prints on stderr before exiting with `exit_code`."""
        return f"error: {self.message}"

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class BadRequest(SidecarError):
    http_status = 400
    code = "bad_request"
    exit_code = EXIT_INPUT


class Forbidden(SidecarError):
    http_status = 403
    code = "forbidden"
    exit_code = EXIT_INPUT


class NotFound(SidecarError):
    http_status = 404
    code = "not_found"
    exit_code = EXIT_INPUT


class Conflict(SidecarError):
    http_status = 409
    code = "conflict"
    exit_code = EXIT_INPUT


def error_class(code: str) -> type[SidecarError] | None:
    """The class of this tree whose stable code is `code` (None for a code we do not declare). Only a class
    that declares its own code counts (`DaemonRefused` carries whichever code the daemon sent)."""
    todo: list[type[SidecarError]] = [SidecarError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith(PACKAGE) and "code" in vars(cls) and cls.code == code:
            return cls
        todo.extend(cls.__subclasses__())
    return None

"""What stops `sidecar serve` or a tool before it starts: a damaged database, a data dir or port another
process holds, a configuration value, the launchd agents."""

from __future__ import annotations

from sidecar.errors.base import EXIT_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE, SidecarError


class DatabaseUnusable(SidecarError):
    """The data dir's SQLite file is damaged or not a database. Found at start, before anything else
    uses it; `sidecar serve` prints the message (path and what to do) and exits 1."""

    code = "database_unusable"

    def __init__(self, path: object, problem: str, foreign: bool = False):
        self.path = path
        self.problem = problem
        self.message = (
            f"the database {path} {problem}. Nothing was changed. Point data_dir (--data-dir) at another "
            f"folder, or move it aside (mv '{path}' '{path}.moved') and start again: the daemon creates a new, "
            "empty one." if foreign else
            f"the database {path} {problem}. Nothing was changed. Move it aside "
            f"(mv '{path}' '{path}.broken', and any -wal/-shm file beside it) and start again: the daemon "
            "creates a new, empty one "
            "(job history is lost; images in the jobs folder stay), or restore it from a backup."
        )
        super().__init__(self.message, {"path": str(path)})


class DataDirUnusable(SidecarError):
    """Something in the data dir is not what the daemon keeps there (a file where a folder belongs, a
    folder where the database belongs). Found at start; `serve` prints one line and exits 1."""

    code = "data_dir_unusable"
    exit_code = EXIT_FAILED

    def __init__(self, path: object, problem: str, fix: str):
        super().__init__(f"{path} {problem}: {fix}", {"path": str(path)})


class DataDirLocked(SidecarError):
    """Another daemon holds the data dir's lock; `details` names its pid and port."""

    http_status = 409
    code = "data_dir_locked"
    exit_code = EXIT_FAILED  # a start-up refusal of `serve`


class PortInUse(SidecarError):
    http_status = 409
    code = "port_in_use"
    exit_code = EXIT_FAILED


class ConfigError(SidecarError):
    """A configuration value is wrong. `key` names it; a command prints one line and exits 2."""

    code = "config_invalid"
    exit_code = EXIT_INPUT

    def __init__(self, key: str, message: str):
        super().__init__(f"config error: {key}: {message}", {"key": key})
        self.key = key
        self.message = message

    def cli_line(self) -> str:
        return f"sidecar: {self}"


class LaunchdError(SidecarError):
    """A value the launchd agents need is missing or wrong; the message says which and how to fix it."""

    code = "launchd_config_invalid"
    exit_code = EXIT_INPUT


class LaunchdUnavailable(SidecarError):
    """This system has no launchd (the message says what to do instead)."""

    code = "launchd_unavailable"
    exit_code = EXIT_UNAVAILABLE

    def cli_line(self) -> str:
        return self.message


class LaunchctlFailed(SidecarError):
    code = "launchctl_failed"
    exit_code = EXIT_FAILED

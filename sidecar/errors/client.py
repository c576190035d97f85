"""The client side (`sidecar.client`): the daemon not answering, or refusing with an error body; never an
answer of the daemon itself."""

from __future__ import annotations

from typing import Any

from sidecar.errors.base import EXIT_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE, SidecarError, error_class
from sidecar.errors.state import TrainingInProgress


class DaemonUnavailable(SidecarError):
    """Nothing answers at the daemon's URL, or what answers is not the daemon."""

    code = "daemon_unavailable"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE


class DaemonRefused(SidecarError):
    """An error body from the daemon: its `code`, `message`, `details` and HTTP status. The exit code is
    that of the code's class in this tree (a 409 `training_in_progress` exits 4), else 2 for a 4xx, 1."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message, details, code=code)
        self.status = status
        self.http_status = status  # type: ignore[misc]
        known = error_class(code)
        self.exit_code = (known.exit_code if known is not None  # type: ignore[misc]
                          else EXIT_INPUT if status < 500 else EXIT_FAILED)

    @property
    def device_busy(self) -> bool:
        return self.code == TrainingInProgress.code

    def cli_line(self) -> str:
        return f"error: the daemon refused: {self.message} ({self.code})"

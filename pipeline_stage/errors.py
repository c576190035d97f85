"""Every way the generate stage stops, with its stable code and exit status, in one place.

Each error is a `SidecarError` (same `code`/`message`/`details`, same JSON body with `--json`) that
also carries the process exit status the CLI documents:

    StageError                 code                    exit
    ├── JobFailedError         job_failed / <daemon's> 1   the daemon ran the job and it failed
    ├── InputError             input_error             2   bad options, bad prompt file or pipeline.toml
    │   ├── PromptFileMissing  prompt_file_missing     2   names the path looked for
    │   ├── RequestRefused     <daemon's 400 code>     2   the daemon refused the request (its message)
    │   └── LoraChanged        lora_changed            2   `--reproduce`: a LoRA's file is not the one logged
    ├── RefineFailed           <daemon's code>         1-3 `--refine`: Ollama down (3), a model missing (2, names
    │                                                      the `ollama pull`), a timeout or bad answer (1); nothing queued
    ├── DaemonNotRunning       daemon_not_running      3   says how to start it
    ├── DeviceBusy             training_in_progress    4   shows the training's step and ETA
    └── LogInvalid             log_invalid             5   torn/invalid generation log, never overwritten
"""

from __future__ import annotations

from typing import Any, ClassVar

from sidecar.errors import SidecarError

EXIT_OK = 0
EXIT_INTERRUPTED = 130  # the shell's convention for Ctrl-C


class StageError(SidecarError):
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, details: dict[str, Any] | None = None, *, code: str | None = None):
        super().__init__(message, details, code=code)


class JobFailedError(StageError):
    code = "job_failed"
    exit_code = 1


class InputError(StageError):
    code = "input_error"
    exit_code = 2


class PromptFileMissing(InputError):
    code = "prompt_file_missing"


class RequestRefused(InputError):
    """A 4xx from the daemon other than 409 training: the daemon's own code and message are kept."""

    code = "request_refused"


class LoraChanged(InputError):
    """`--reproduce`: a LoRA the version was made with has another SHA-256 on the daemon now (a file replaced
    under the same name), so the same workflow would not make the same image; nothing is submitted."""

    code = "lora_changed"


class RefineFailed(StageError):
    """`generate --refine`: the daemon could not refine a page (Ollama's failure, with its code)."""

    code = "refine_failed"

    def __init__(self, message: str, details: dict[str, Any] | None = None, *, code: str | None = None,
                 exit_code: int = 1):
        super().__init__(message, details, code=code)
        self.exit_code = exit_code  # type: ignore[misc]


class DaemonNotRunning(StageError):
    code = "daemon_not_running"
    exit_code = 3


class DeviceBusy(StageError):
    code = "training_in_progress"
    exit_code = 4


class LogInvalid(StageError):
    code = "log_invalid"
    exit_code = 5

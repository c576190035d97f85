"""Every check `sidecar doctor` prints, in its order: the stack's (`checks`) then the assistants'
(`assist_checks`: Ollama, the prompt and vision models, the caption tagger). The one list both the
command and the daemon's GET /doctor (the studio's Doctor view) read, so they agree row for row.

Blocking (network probes, torch's device query, Ollama's answer): run it in a thread from the daemon.
"""

from __future__ import annotations

from pathlib import Path

from sidecar.config import Settings
from sidecar.doctor.assist_checks import check_assistants
from sidecar.doctor.checks import run_checks
from sidecar.doctor.report import Check


def every_check(settings: Settings, home: Path | None = None) -> list[Check]:
    return [*run_checks(settings, home), *check_assistants(settings)]  # the assistants' lines are optional

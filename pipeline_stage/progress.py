"""Per-page progress: a rich bar on a terminal (on stderr, so stdout stays the summary), nothing
otherwise. `--json` and non-terminal output get no bar, as ollama's CLI does.
"""

from __future__ import annotations

from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class PageProgress(Protocol):
    def start(self, label: str) -> None: ...

    def update(self, job: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    def start(self, label: str) -> None: ...

    def update(self, job: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


class BarProgress:
    def __init__(self, console: Console):
        self._progress = Progress(
            TextColumn("{task.fields[label]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,  # the one-line summary replaces the bar
        )
        self._task: TaskID | None = None

    def start(self, label: str) -> None:
        self.stop()
        self._progress.start()
        self._task = self._progress.add_task("", total=None, label=label, status="submitting")

    def update(self, job: dict[str, Any]) -> None:
        if self._task is None:
            return
        progress = job.get("progress") or {}
        total = progress.get("total") or None
        self._progress.update(self._task, total=total, completed=progress.get("step") or 0,
                              status=job.get("status", ""))

    def stop(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self._progress.stop()


def make_progress(json_output: bool, console: Console | None = None) -> PageProgress:
    console = console or Console(stderr=True)
    if json_output or not console.is_terminal:
        return NoProgress()
    return BarProgress(console)

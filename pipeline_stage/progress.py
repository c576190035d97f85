"""Per-page progress: a rich bar on a terminal (on stderr, so stdout stays the summary), nothing
otherwise. `--json` and non-terminal output get no bar, as ollama's CLI does. The bar counts the live
previews the daemon sends (`job.preview`) and names the file the latest is written to, so a viewer
that reloads it shows the page taking shape. The file is written with or without a terminal: the page
pipeline runs `generate` as a subprocess and shows that file.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any, Protocol

from sidecar import atomic

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class PageProgress(Protocol):
    def start(self, label: str) -> None: ...

    def update(self, job: dict[str, Any]) -> None: ...

    def preview(self, event: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    """Nothing drawn (`--json`, a pipe); the latest live preview is still written to `preview_path`."""

    def __init__(self, preview_path: Path | None = None):
        self.preview_path = preview_path

    def start(self, label: str) -> None: ...

    def update(self, job: dict[str, Any]) -> None: ...

    def preview(self, event: dict[str, Any]) -> None:
        if self.preview_path is not None:
            write_preview(event, self.preview_path)

    def stop(self) -> None: ...


def write_preview(event: dict[str, Any], path: Path) -> bool:
    """The event's JPEG at `path` (atomically: a viewer never reads half of it)."""
    try:
        data = base64.b64decode(event.get("image") or "", validate=True)
    except (binascii.Error, ValueError):
        return False
    if not data:
        return False
    atomic.write_bytes(path, data)
    return True


class BarProgress:
    def __init__(self, console: Console, preview_path: Path | None = None):
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
        self.preview_path = preview_path
        self.previews = 0
        self._status = ""

    def start(self, label: str) -> None:
        self.stop()
        self.previews = 0
        self._progress.start()
        self._task = self._progress.add_task("", total=None, label=label, status="submitting")

    def update(self, job: dict[str, Any]) -> None:
        if self._task is None:
            return
        progress = job.get("progress") or {}
        total = progress.get("total") or None
        self._status = job.get("status", "")
        self._progress.update(self._task, total=total, completed=progress.get("step") or 0, status=self._shown())

    def preview(self, event: dict[str, Any]) -> None:
        if self._task is None:
            return
        self.previews += 1
        if self.preview_path is not None:
            write_preview(event, self.preview_path)
        self._progress.update(self._task, status=self._shown())

    def _shown(self) -> str:
        if not self.previews:
            return self._status
        where = f" -> {_short(self.preview_path)}" if self.preview_path is not None else ""
        return f"{self._status} · preview {self.previews}{where}"

    def stop(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self._progress.stop()


def _short(path: Path) -> str:
    """The path as typed from here when that is shorter (output/preview.jpg from the project root)."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return str(path)
    return relative if len(relative) < len(str(path)) else str(path)


def make_progress(json_output: bool, console: Console | None = None, preview_path: Path | None = None) -> PageProgress:
    console = console or Console(stderr=True)
    if json_output or not console.is_terminal:
        return NoProgress(preview_path)
    return BarProgress(console, preview_path)

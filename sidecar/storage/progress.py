"""The progress bar of `sidecar sync` (rich, as the other long commands): bytes moved of the total, on
stderr so that stdout keeps only the summary."""

from __future__ import annotations

from typing import Any


class RichProgress:
    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def start(self, files: int, total_bytes: int) -> None:
        if files == 0:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
        )

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
        self._task = self._progress.add_task(f"0/{files} files", total=max(total_bytes, 1))
        self._files, self._count = files, 0
        self._progress.start()

    def advance(self, nbytes: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, nbytes)

    def file_done(self, action: str, path: str) -> None:
        if self._progress is not None:
            self._count += 1
            self._progress.update(self._task, description=f"{self._count}/{self._files} files")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

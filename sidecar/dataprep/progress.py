"""How `dataset reg` shows its progress: a rich bar for the set and one for the current image's
sampler steps on a terminal, one plain line per image otherwise (log files, CI, pipes).
"""

from __future__ import annotations

import click


class LineReporter:
    """Not a terminal: one plain line per image (log-friendly)."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done

    def step(self, step: int, total: int) -> None:
        pass

    def image_done(self, name: str, seed: int, seconds: float) -> None:
        self.done += 1
        click.echo(f"[{self.done}/{self.total}] {name} seed {seed} {seconds:.1f}s")

    def close(self) -> None:
        pass


class RichReporter:
    """A terminal: one bar for the set, one for the sampler steps of the current image."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn())
        self.set_task = None
        self.step_task = None

    def start(self, total: int, done: int) -> None:
        self.progress.start()
        self.set_task = self.progress.add_task("regularisation set", total=total, completed=done)
        self.step_task = self.progress.add_task("  current image", total=None)

    def step(self, step: int, total: int) -> None:
        if total:
            self.progress.update(self.step_task, completed=step, total=total)

    def image_done(self, name: str, seed: int, seconds: float) -> None:
        self.progress.advance(self.set_task)
        self.progress.update(self.step_task, completed=0)

    def close(self) -> None:
        self.progress.stop()

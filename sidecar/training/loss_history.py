"""A run's loss by step, kept beside its checkpoints (`<run folder>/loss.csv`: step,loss,smoothed), so the
studio draws the whole curve of a run, live or finished, after a restart too; the run's status carries
only the latest loss. The manager adds a row per new step and writes rows in batches (with the run's
progress); a resumed run appends to the same file, and a step trained again (a resume from an older
state) replaces its earlier row when read.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

FILE = "loss.csv"
HEADER = "step,loss,smoothed\n"


def loss_file(output_dir: str | Path) -> Path:
    return Path(output_dir).parent / FILE  # the run's folder; its checkpoints are in `output/`


@dataclass(frozen=True)
class LossPoint:
    step: int
    loss: float | None  # None: not finite (a diverged run)
    smoothed: float | None


def _cell(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _append(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        f.write((HEADER if new else "") + "".join(rows))


class LossRecorder:
    """What one attempt of a run adds to its loss file."""

    def __init__(self, path: Path):
        self.path = path
        self._rows: list[str] = []
        self._step: int | None = None
        self._lock = asyncio.Lock()  # batches land in the order they were taken

    def add(self, step: int, loss: float | None, smoothed: float | None) -> None:
        if loss is None:
            return
        row = f"{step},{_cell(loss)},{_cell(smoothed)}\n"
        if step == self._step and self._rows:
            self._rows[-1] = row  # the trainer's bar reports a step several times: its last word counts
        else:
            self._rows.append(row)  # (a step already flushed is written again; the reader keeps the latest)
        self._step = step

    async def flush(self) -> None:
        async with self._lock:
            rows, self._rows = self._rows, []
            if rows:
                await asyncio.to_thread(_append, self.path, rows)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_history(path: Path, most: int) -> tuple[list[LossPoint], int]:
    """The run's curve, one point per step (the latest row of a step), at most `most` points spread
    evenly over the run with its last step always in, and how many steps have a loss; ([], 0) when the
    run has logged none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], 0
    by_step: dict[int, LossPoint] = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            step = int(row.get("step") or "")
        except ValueError:
            continue  # a line cut short by a crash mid-write
        by_step[step] = LossPoint(step, _number(row.get("loss") or ""), _number(row.get("smoothed") or ""))
    points = [by_step[s] for s in sorted(by_step)]
    if len(points) <= most:
        return points, len(points)
    last = len(points) - 1
    picks = sorted({round(i * last / (most - 1)) for i in range(most)}) if most > 1 else [last]
    return [points[i] for i in picks], len(points)

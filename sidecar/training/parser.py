"""Reads kohya sd-scripts' console output (one merged stdout+stderr stream) into typed events.

Follows the recorded format in `shared/fixtures/kohya/`: the `steps:` tqdm bar redrawn with `\\r`
(log text may be glued onto it), `saving checkpoint: PATH` lines, the `skipping N steps` offset of
a resumed run, the "No data found" error that still exits 0, and Python tracebacks. It decides
nothing about the run's fate; `kohya.py` does.
"""

from __future__ import annotations

import codecs
import math
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

# The bar as tqdm prints it for train_network.py (prefix `steps:`). Not anchored: log records get
# glued onto a bar update without a separator, and other bars (latents, captions, sampler) share
# the stream without the `steps:` prefix.
BAR = re.compile(
    r"steps:\s+(?P<pct>\d+)%\|[^|]*\|\s*(?P<step>\d+)/(?P<total>\d+)\s+"
    r"\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:]+|\?),\s*(?P<rate>[\d.]+|\?)(?P<unit>s/it|it/s)"
    r"(?:,\s*(?P<post>[^\]]*))?\]"
)
# Any tqdm redraw (ai-toolkit's `<name>:  10%|█ | 100/1000 [...]`, its `Generating Images` bar), left out of
# a finished run's log tail as kohya's `steps:` bar is.
TQDM_BAR = re.compile(r"[^\r\n|]*:\s+\d+%\|[^|]*\|\s*\d+/\d+\s+\[[^\]]*\](?:\x1b\[A)?")
LOSS = re.compile(r"avr_loss=(?P<loss>[-+0-9.eE]+|nan|inf|-inf)")
SKIP = re.compile(r"skipping (\d+) steps")
TOTAL = re.compile(r"total optimization steps / .*?:\s*(\d+)")
DEVICE = re.compile(r"^accelerator device: (?P<device>\S+)")  # train_network.py, right after accelerate starts
SAVING = re.compile(r"saving checkpoint: (?P<path>.+?\.safetensors)\s*$")
STEP_FILE = re.compile(r"-step(\d{8})\.safetensors$")
NO_DATA = "No data found"
TRACEBACK = "Traceback (most recent call last):"
# The last line of a traceback: `ValueError: ...`, `torch.OutOfMemoryError: ...`, `KeyboardInterrupt`.
EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b[\w.]*)(?::\s*(?P<msg>.*))?$")
WARNING_MARKERS = ("No caption file found", "ignore directory without repeats", "Could not load random states")

LOG_TAIL_LINES = 60
MAX_LINE_CHARS = 1000  # of one log line kept for the tail
MAX_CONTINUED = 5  # continuation lines kept per exception
MAX_CONTINUED_CHARS = 200  # of the one quoted in a failure message (key lists run to kilobytes)


@dataclass
class BarUpdate:
    """One redraw of the `steps:` bar, with the resume offset already added to step and total."""

    step: int
    total: int
    elapsed_s: float
    eta_s: float | None
    seconds_per_step: float | None
    loss: float | None


@dataclass
class CheckpointSaved:
    path: str
    step: int | None  # None for the final `<name>.safetensors`


@dataclass
class TrainerError:
    """An exception the trainer printed (the first one: accelerate's own CalledProcessError and the
    KeyboardInterrupt of a cancelled run are echoes of it, not the cause)."""

    type: str
    message: str
    traceback: list[str] = field(default_factory=list)
    # Lines after the exception line that continue its message: torch's `Error(s) in loading
    # state_dict for UNet2DConditionModel:` names the mismatched keys on tab-indented lines below.
    continued: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """`Type: message`, with the first continuation line when the message announces one."""
        text = f"{self.type}: {self.message}" if self.message else self.type
        if self.continued and self.message.endswith(":"):
            first = self.continued[0]
            text += " " + (first if len(first) <= MAX_CONTINUED_CHARS else first[:MAX_CONTINUED_CHARS] + "...")
        return text


def _seconds(clock: str) -> float:
    parts = [int(p) for p in clock.split(":")]
    total = 0
    for p in parts:
        total = total * 60 + p
    return float(total)


def _loss(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


class KohyaOutputParser:
    """Feed raw bytes with `feed`; read the events it returns and the state it accumulates.

    Lines are split on both `\\r` and `\\n` (tqdm redraws with `\\r`); a bar update still waiting for
    its terminator is matched too, so progress is never one redraw behind.
    """

    # What differs between trainers' output (ai_toolkit.AiToolkitOutputParser sets its own).
    bar_re = BAR
    loss_re = LOSS
    saving_re = SAVING
    step_file_re = STEP_FILE
    bar_marker = "steps:"

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._last_bar_key: tuple | None = None
        self.offset = 0  # steps skipped by `--skip_until_initial_step`
        self.total: int | None = None  # from the `running training` block
        self.last: BarUpdate | None = None
        self.checkpoints: list[CheckpointSaved] = []
        self.no_data = False
        self.device: str | None = None  # `mps`, `cuda:0`, `cpu`: what accelerate picked
        self.errors: list[TrainerError] = []
        self.warnings: list[str] = []
        self.nan_seen = False
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._in_traceback: list[str] | None = None
        self._continuing: TrainerError | None = None
        self._new_lines: list[str] = []

    # -- input
    def feed(self, data: bytes) -> list[BarUpdate | CheckpointSaved]:
        text = self._pending + self._decoder.decode(data)
        pieces = re.split(r"\r\n|\r|\n", text)
        self._pending = pieces.pop()
        events: list[BarUpdate | CheckpointSaved] = []
        for piece in pieces:
            events.extend(self._line(piece, complete=True))
        if self._pending:
            events.extend(self._bars(self._pending))
        return events

    def close(self) -> list[BarUpdate | CheckpointSaved]:
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        events = self._line(rest, complete=True) if rest else []
        self._end_traceback()
        return events

    # -- results
    @property
    def error(self) -> TrainerError | None:
        """The cause: the first exception that is not accelerate's echo of the child's exit."""
        for err in self.errors:
            if err.type not in ("subprocess.CalledProcessError",):
                return err
        return self.errors[0] if self.errors else None

    def take_lines(self) -> list[str]:
        """Log lines (bar redraws excluded) seen since the last call."""
        lines, self._new_lines = self._new_lines, []
        return lines

    # -- internals
    def _bars(self, text: str) -> list[BarUpdate]:
        out: list[BarUpdate] = []
        for m in self.bar_re.finditer(text):
            loss_m = self.loss_re.search(m.group("post") or "")
            loss = _loss(loss_m.group("loss")) if loss_m else None
            key = (m.group("step"), m.group("total"), m.group("elapsed"), m.group("rate"), m.group("post"))
            if key == self._last_bar_key:
                continue  # the same redraw, seen first while pending and again once terminated
            self._last_bar_key = key
            rate = m.group("rate")
            per_step: float | None = None
            if rate != "?" and float(rate) > 0:
                per_step = float(rate) if m.group("unit") == "s/it" else 1.0 / float(rate)
            update = BarUpdate(
                step=int(m.group("step")) + self.offset,
                total=int(m.group("total")) + self.offset,
                elapsed_s=_seconds(m.group("elapsed")),
                eta_s=None if m.group("eta") == "?" else _seconds(m.group("eta")),
                seconds_per_step=per_step,
                loss=loss,
            )
            if loss is not None and not math.isfinite(loss):
                self.nan_seen = True
            self.last = update
            out.append(update)
        return out

    def _line(self, line: str, *, complete: bool) -> list[BarUpdate | CheckpointSaved]:
        events: list[BarUpdate | CheckpointSaved] = list(self._bars(line))
        stripped = line.strip()
        if not stripped:
            return events
        # The tail is for people: bar redraws would push every useful line out of it, but text glued
        # onto a redraw (a traceback, a log record) stays.
        text = (self.bar_re.sub("", line) if self.bar_marker in line else line).rstrip()
        if len(text) > MAX_LINE_CHARS:  # torch's key-mismatch lists run to kilobytes on one line
            text = text[:MAX_LINE_CHARS] + "..."
        if text.strip():
            self.tail.append(text)
            self._new_lines.append(text)
        self._traceback_line(line)
        if (m := SKIP.search(line)) is not None:
            self.offset = int(m.group(1))
        if (m := TOTAL.search(line)) is not None:
            self.total = int(m.group(1))
        if NO_DATA in line:
            self.no_data = True
        if (m := DEVICE.match(stripped)) is not None:
            self.device = m.group("device")
        if (m := self.saving_re.search(line)) is not None:
            path = m.group("path").strip()
            sm = self.step_file_re.search(path)
            saved = CheckpointSaved(path=path, step=int(sm.group(1)) if sm else None)
            self.checkpoints.append(saved)
            events.append(saved)
        for marker in WARNING_MARKERS:
            if marker in line and marker != "Could not load random states":
                self.warnings.append(stripped)
        return events

    def _traceback_line(self, line: str) -> None:
        if TRACEBACK in line:
            self._end_traceback()
            self._in_traceback = [TRACEBACK]
            return
        if self._in_traceback is None:
            err = self._continuing
            if err is not None and line.startswith("\t") and len(err.continued) < MAX_CONTINUED:
                text = line.strip()
                err.continued.append(text if len(text) <= 500 else text[:500] + "...")
            else:
                self._continuing = None
            return
        self._in_traceback.append(line.rstrip())
        if line.startswith((" ", "\t")):
            return
        m = EXC_LINE.match(line.strip())
        if m is not None:
            err = TrainerError(type=m.group("type"), message=(m.group("msg") or "").strip(),
                               traceback=self._in_traceback[-40:])
            self.errors.append(err)
            self._in_traceback = None
            self._continuing = err

    def _end_traceback(self) -> None:
        self._in_traceback = None
        self._continuing = None


def strip_bars(line: str) -> str:
    return BAR.sub("", line) if "steps:" in line else line


def read_log_tail(path: Path, lines: int = 40) -> list[str]:
    """The last lines of a trainer log, without progress-bar redraws. Blocking: call in a thread."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = [TQDM_BAR.sub("", strip_bars(p)).rstrip()[:MAX_LINE_CHARS] for p in re.split(r"\r\n|\r|\n", text)]
    out = [p for p in out if p.strip()]
    return out[-lines:]

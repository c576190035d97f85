"""`sidecar dataset reg` on a terminal: a bar counting the set's images (resumed images counted as done)
and one for the current image's sampler steps, drawn by rich on the terminal's console."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from sidecar.dataprep.progress import RichReporter

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def screen(monkeypatch) -> io.StringIO:
    """The reporter draws on rich's default console (stdout): make that a terminal writing here."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    monkeypatch.setattr("rich.progress.get_console", lambda: console)
    return buf


SET, STEP = "regularisation set", "current image"


def counts(frame: str) -> dict[str, str]:
    """The "done/total" each bar of a frame shows, by bar label."""
    out = {}
    for line in frame.splitlines():
        for label in (SET, STEP):
            if label in line:
                m = re.search(r"(\d+|\?)/(\d+|\?)", line.replace(label, ""))
                out[label] = m.group(0) if m else ""
    return out


def shows(buf: io.StringIO, expected: dict[str, str], timeout: float = 5.0) -> None:
    """Wait for a frame whose bars show `expected` (rich redraws ~10 times a second, from a thread, so
    a frame may fall between two updates). Each redraw ends with "\r" and cursor moves."""
    deadline = time.monotonic() + timeout
    while True:
        frames = ANSI.sub("", buf.getvalue()).split("\r")
        if any(all(counts(f).get(k) == v for k, v in expected.items()) for f in frames):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"never drew {expected}; last frames {frames[-3:]!r}")
        time.sleep(0.02)


def test_the_set_bar_counts_images_and_the_step_bar_follows_the_sampler(screen):
    reporter = RichReporter()
    reporter.start(total=5, done=2)  # a resumed run: two images were already there
    try:
        shows(screen, {SET: "2/5", STEP: "0/?"})
        reporter.step(0, 0)  # the daemon has not said how many steps yet: nothing to show, no error
        reporter.step(7, 20)
        shows(screen, {SET: "2/5", STEP: "7/20"})

        reporter.step(20, 20)
        reporter.image_done("reg_0003.png", 102, 1.5)
        shows(screen, {SET: "3/5", STEP: "0/20"})  # the next image starts from step 0

        for name in ("reg_0004.png", "reg_0005.png"):
            reporter.step(20, 20)
            reporter.image_done(name, 0, 1.0)
        shows(screen, {SET: "5/5"})
    finally:
        reporter.close()


def test_close_stops_drawing(screen):
    reporter = RichReporter()
    reporter.start(total=3, done=0)
    shows(screen, {SET: "0/3"})
    reporter.close()
    size = len(screen.getvalue())
    time.sleep(0.3)  # several refresh periods: a bar still running would have redrawn
    assert len(screen.getvalue()) == size

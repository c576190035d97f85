"""The per-page progress bar of `pipeline generate`: on a terminal it shows the daemon's step/total and
status; with `--json` or when the output is not a terminal nothing is drawn at all."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from pipeline_stage.progress import BarProgress, NoProgress, make_progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=100, color_system=None), buf


def shown(buf: io.StringIO, text: str, timeout: float = 5.0) -> str:
    """The terminal output once `text` was drawn (the bar refreshes itself ~10 times a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ANSI.sub("", buf.getvalue())
        if text in out:
            return out
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never drawn; got {ANSI.sub('', buf.getvalue())!r}")


def test_on_a_terminal_the_bar_shows_the_jobs_step_and_status():
    console, buf = terminal()
    view = make_progress(False, console)
    assert isinstance(view, BarProgress)
    view.start("ch-01/p003")
    try:
        shown(buf, "submitting")
        view.update({"id": "j1", "status": "queued", "progress": None})
        shown(buf, "queued")
        view.update({"id": "j1", "status": "running", "progress": {"step": 3, "total": 20}})
        out = shown(buf, "3/20")
        line = next(line for line in out.splitlines()[::-1] if "3/20" in line)
        assert "ch-01/p003" in line and "running" in line
        view.update({"id": "j1", "status": "running", "progress": {"step": 20, "total": 20}})
        shown(buf, "20/20")
    finally:
        view.stop()


def test_a_second_page_gets_a_fresh_bar():
    console, buf = terminal()
    view = make_progress(False, console)
    view.start("ch-01/p001")
    view.update({"status": "running", "progress": {"step": 20, "total": 20}})
    shown(buf, "20/20")
    view.stop()
    mark = len(buf.getvalue())
    view.start("ch-01/p002")
    try:
        view.update({"status": "running", "progress": {"step": 1, "total": 20}})
        shown(buf, "1/20")
        later = ANSI.sub("", buf.getvalue()[mark:])
        assert "ch-01/p002" in later and "ch-01/p001" not in later
    finally:
        view.stop()


def test_json_or_a_non_terminal_draws_nothing():
    console, buf = terminal()
    assert isinstance(make_progress(True, console), NoProgress)  # --json on a terminal
    plain = io.StringIO()
    piped = Console(file=plain)  # a pipe or a log file
    assert not piped.is_terminal
    view = make_progress(False, piped)
    assert isinstance(view, NoProgress)
    view.start("ch-01/p001")
    view.update({"status": "running", "progress": {"step": 3, "total": 20}})
    view.stop()
    assert plain.getvalue() == "" and buf.getvalue() == ""


def test_updates_before_start_or_after_stop_are_ignored():
    console, buf = terminal()
    view = make_progress(False, console)
    view.update({"status": "running", "progress": {"step": 3, "total": 20}})  # the page never started
    view.start("ch-01/p001")
    view.stop()
    view.update({"status": "succeeded", "progress": {"step": 20, "total": 20}})  # a late answer
    view.stop()  # stopping twice (the error path) is harmless
    assert "3/20" not in ANSI.sub("", buf.getvalue()) and "20/20" not in ANSI.sub("", buf.getvalue())


def test_the_bar_counts_live_previews_and_writes_the_latest_where_it_says(tmp_path):
    import base64

    from PIL import Image

    console, buf = terminal()
    path = tmp_path / "output" / "preview.jpg"
    view = make_progress(False, console, preview_path=path)
    view.start("ch-01/p003")
    try:
        view.update({"id": "j1", "status": "running", "progress": {"step": 1, "total": 4}})
        for step, colour in ((1, (255, 0, 0)), (2, (0, 0, 255))):
            out = io.BytesIO()
            Image.new("RGB", (17, 25), colour).save(out, format="JPEG")
            view.preview({"type": "job.preview", "jobId": "j1", "step": step, "total": 4,
                          "image": base64.b64encode(out.getvalue()).decode()})
        shown(buf, "preview 2 ->")  # the count, and where the latest is
        with Image.open(path) as img:
            assert img.size == (17, 25) and img.getpixel((8, 12))[2] > 200  # the latest one
        view.preview({"type": "job.preview", "jobId": "j1", "image": "not base64!"})  # ignored, not a crash
    finally:
        view.stop()

"""The studio when the daemon goes away (issue 25, "offline is said aloud"): in the system Chromium against
a real `sidecar serve`, stopped with SIGTERM as launchd or Ctrl+C stops it, then started again on the same
port. Its own daemon (this module stops it), on the tiny models; no job is rendered."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from tests.studio_browser import (  # noqa: F401  (fixtures)
    Daemon, browser, restart_daemon, signed_in, start_daemon, stop_daemon, studio_models,
)

pytestmark = pytest.mark.engine

# What Chromium logs itself while the daemon is away (the page's own fetches and socket): not the page's errors.
AWAY = ("ERR_CONNECTION_REFUSED", "WebSocket connection", "Failed to load resource", "ERR_CONNECTION_RESET",
        "ERR_EMPTY_RESPONSE")


@pytest.fixture
def daemon(tmp_path: Path, engine_models: Path) -> Iterator[Daemon]:
    project = tmp_path / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), project)
    started = start_daemon(tmp_path, studio_models(tmp_path, engine_models), project)
    yield started
    stop_daemon(started)


def test_a_banner_says_the_daemon_stopped_answering_and_the_page_refreshes_when_it_is_back(browser, daemon) -> None:
    context, page, console = signed_in(browser, daemon)
    page.locator(".tiles").wait_for()
    pause = page.locator("button[data-action=pause]")
    pause.wait_for()
    banner = page.locator("#offline")
    assert banner.is_hidden()

    daemon.proc.send_signal(signal.SIGTERM)
    banner.wait_for(state="visible", timeout=3_000)  # within 3 s of the stop
    text = banner.inner_text()
    assert "has not answered since" in text and "Reconnecting" in text, text
    assert pause.is_disabled()  # nothing can be started meanwhile
    assert page.evaluate("() => document.body.classList.contains('offline')")
    daemon.proc.wait(60)
    # Another view while it is away: its actions are disabled too, and it claims nothing it cannot know.
    page.click("#nav a[data-view=generate]")
    page.locator("form.generate button[type=submit]").wait_for()
    page.wait_for_function("() => document.querySelector('form.generate button[type=submit]').disabled")
    page.click("#nav a[data-view=now]")
    page.locator("main h1", has_text="Now").wait_for()
    assert "No jobs yet" not in page.inner_text("main")
    assert "Failed to fetch" not in page.inner_text("body")

    restart_daemon(daemon)
    banner.wait_for(state="hidden", timeout=30_000)
    # The view drew itself again from the daemon: its live states and its actions are back.
    page.locator("button[data-action=pause]:not([disabled])").wait_for()
    page.locator(".tiles .tile", has_text="Daemon").wait_for()
    assert page.locator("main p.empty", has_text="No jobs yet").count() == 1
    assert not page.evaluate("() => document.body.classList.contains('offline')")
    context.close()
    assert [e for e in console.errors if not any(a in e for a in AWAY)] == []

"""The studio's Now view with a rented backend, in a real browser: the rented ComfyUI is a row with its
cost so far, and its Stop button releases it (destroyed on the fake vast.ai, its final cost listed
below the table). The daemon is the real app on a local port; vast.ai, the instance's SSH server and its
ComfyUI are the fakes of `test_backends_rented.py`, run on a loop of their own."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config.backends import VAST_COMFY_PORT
from tests.fake_comfyui import FakeComfyUI, make_comfy_home
from tests.fake_ssh_host import FakeHost
from tests.fake_vast import FakeVast
from tests.pipeline_daemon import DaemonThread
from tests.scripted_backend import ScriptedBackend
from tests.studio_browser import Console, browser, screenshot_dir  # noqa: F401  (fixture)
from tests.test_backends_rented import KEY, NO_LORA, OFFERS, settings_for


@pytest.fixture
def rented(tmp_path: Path) -> Iterator[tuple[DaemonThread, FakeVast, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-vast", daemon=True)
    thread.start()

    def on(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    vast = on(FakeVast(tmp_path / "vast", KEY, offers=OFFERS, loading_reads=1).start())

    async def comfy_starts(instance_id: int, host: FakeHost) -> None:
        comfy = FakeComfyUI(make_comfy_home(host.home / "ComfyUI", NO_LORA), step_delay=0.01, device_type="cuda")
        await comfy.start()
        host.ports[VAST_COMFY_PORT] = int(comfy.url.rsplit(":", 1)[1])
        host.services.append(comfy.stop)

    vast.on_running = comfy_starts
    daemon = DaemonThread(settings_for(tmp_path, vast, idle_minutes=60), ScriptedBackend()).start()
    try:
        yield daemon, vast, loop
    finally:
        daemon.stop()
        alive = on(vast.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        assert not alive, f"instances left billing: {alive}"


def test_a_rented_backend_shows_its_cost_and_stop_destroys_it(browser, rented, tmp_path) -> None:
    daemon, vast, _ = rented
    request = urllib.request.Request(f"{daemon.url}/backends/rent", data=json.dumps({"name": "gpu"}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.status == 202
    context = browser.new_context(viewport={"width": 1512, "height": 982})
    page = context.new_page()
    console = Console()
    console.attach(page)
    page.goto(f"{daemon.url}/#/now")
    row = page.locator("table.backends tr[data-backend=gpu][data-state=up]")
    row.wait_for(timeout=20_000)  # joins routing once its ComfyUI answers through the tunnel
    assert row.locator(".cost").inner_text().startswith("$0.0")
    assert row.locator("td", has_text="comfyui rented").count() == 1
    page.locator("table.backends").screenshot(path=str(screenshot_dir(tmp_path) / "studio-rented.png"))
    [instance_id] = vast.alive()
    row.locator("button[data-action=release]").click()
    page.locator("ul.rentals li[data-rental=gpu][data-state=destroyed]").wait_for(timeout=15_000)
    assert page.locator("table.backends tr[data-backend=gpu]").count() == 0
    assert instance_id in vast.destroyed and vast.alive() == []
    assert "released on request" in page.locator("ul.rentals li[data-rental=gpu]").inner_text()
    assert console.errors == []
    context.close()

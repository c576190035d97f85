"""The studio's backends in a real browser (the system Chromium, driven by Playwright): the Now view lists
every backend with its state, device, queue and s/step, and a backend that dies turns `down` live (a
`backend.down` event, no reload); the Generate form lets the artist pick `where`, holds the size to the
profiles of the backends it allows, and the job runs there. The daemon is the real app on a local port
with this machine's backend scripted and two fake ComfyUI servers as the remote ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_comfyui import FakeComfyUI
from tests.pipeline_daemon import DaemonThread
from tests.pool_daemon import comfy_pool
from tests.studio_browser import Console, browser, screenshot_dir  # noqa: F401  (fixture)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[DaemonThread, dict[str, FakeComfyUI]]]:
    with comfy_pool(tmp_path, {"alpha": 0.01, "beta": 0.01}, probe_interval=0.2, profile="cuda-24gb") as pool:
        yield pool


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return screenshot_dir(tmp_path)


def test_the_backends_are_listed_live_and_a_job_goes_where_the_artist_picks(browser, pool, shots) -> None:
    daemon, fakes = pool
    context = browser.new_context(viewport={"width": 1512, "height": 982})
    page = context.new_page()
    console = Console()
    console.attach(page)
    page.goto(f"{daemon.url}/#/now")
    page.wait_for_selector("#live[data-state=live]")
    for name in ("local", "alpha", "beta"):
        page.locator(f"table.backends tr[data-backend={name}][data-state=up]").wait_for()
    alpha = page.locator("table.backends tr[data-backend=alpha]")
    assert alpha.locator(".device").inner_text() == "cuda"
    assert alpha.locator(".speed").inner_text() == "–" and alpha.locator(".queue").inner_text() == "0"

    daemon.call(fakes["beta"].kill())  # out of routing: the row says so without a reload
    beta = page.locator("table.backends tr[data-backend=beta][data-state=down]")
    beta.wait_for()
    assert "ComfyUI" in beta.locator(".reason").inner_text()

    page.click("#nav a[data-view=generate]")
    where = page.locator("select[name=where]")
    page.wait_for_selector("select[name=where] option[value=alpha]", state="attached")
    assert "beta (down, cuda-24gb)" in where.inner_text() and "pool: alpha, beta" in where.inner_text()
    page.fill("textarea[name=prompt]", "spyke_plasma_v1, standing")
    page.fill("input[name=width]", "1024")  # over this machine's m1pro-16gb profile...
    page.fill("input[name=height]", "1024")
    assert page.locator("button[type=submit]").is_disabled()
    where.select_option("alpha")  # ...within alpha's cuda-24gb
    assert page.locator("button[type=submit]").is_enabled(), page.inner_text(".problems")
    page.fill("input[name=steps]", "3")
    page.click("button[type=submit]")
    page.locator(".result .job[data-status=succeeded]").wait_for(timeout=30_000)
    assert page.locator(".result .job .backend").inner_text() == "on alpha"
    job = daemon.jobs()[0]
    assert (job["where"], job["backend"], job["params"]["width"]) == ("alpha", "alpha", 1024)
    assert fakes["alpha"].prompt_posts == 1

    page.click("#nav a[data-view=now]")  # alpha has run a job: its speed is measured now
    page.wait_for_function("() => /\\d/.test(document.querySelector("
                           "'table.backends tr[data-backend=alpha] .speed')?.textContent || '')")
    page.locator("table.backends").screenshot(path=str(shots / "studio-backends.png"))
    assert console.errors == []
    context.close()

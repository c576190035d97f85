"""The Generate view with model families, in a real browser (the system Chromium, driven by Playwright):
the artist picks an SDXL checkpoint (its family read from the file's header, the backends that run it
named), sees the sizes change to SDXL's buckets, stacks three SDXL LoRAs (the SD 1.5 one shown disabled,
saying why) with their strength sliders, picks the GPU backend and submits; the job carries the
checkpoint and the whole stack, and "Edit" on its result fills the form with them again. At 420 px wide
nothing scrolls sideways, and an axe scan finds nothing serious.

The daemon is the real app on a local port; this machine's backend is scripted over a folder of
synthesized model files (tests/family_headers.py: real headers, no weights) with the laptop's profile, and
the GPU backend is a fake ComfyUI (the recorded protocol) with the cuda-24gb profile and the same files."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.config import Settings
from sidecar.config.backends import BackendSpec
from tests.conftest_comfy import free_port
from tests.family_headers import SD15_CHECKPOINT, SD15_LORA, SDXL_CHECKPOINT, SDXL_LORA, write_safetensors
from tests.fake_comfyui import FakeComfyUI, make_comfy_home
from tests.pipeline_daemon import DaemonThread
from tests.scripted_backend import ScriptedBackend
from tests.studio_browser import NARROW, Console, browser, screenshot_dir  # noqa: F401  (fixture)

SD15 = "anything-v5.safetensors"
SDXL = "animagine-xl-3.1.safetensors"
XL_LORAS = ("spyke_plasma_xl", "ink_style_xl", "screentone_xl")


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[DaemonThread, FakeComfyUI]]:
    yield from _pool(tmp_path, start_desk=True)


@pytest.fixture
def pool_desk_later(tmp_path: Path) -> Iterator[tuple[DaemonThread, FakeComfyUI]]:
    """The same, the GPU backend not answering yet: the test starts it."""
    yield from _pool(tmp_path, start_desk=False)


def _pool(tmp_path: Path, start_desk: bool) -> Iterator[tuple[DaemonThread, FakeComfyUI]]:
    local = tmp_path / "local-models"
    write_safetensors(local / "checkpoints" / SD15, SD15_CHECKPOINT)
    write_safetensors(local / "checkpoints" / SDXL, SDXL_CHECKPOINT)
    for i, name in enumerate(XL_LORAS):
        write_safetensors(local / "loras" / f"{name}.safetensors", SDXL_LORA, metadata={"n": str(i)})
    write_safetensors(local / "loras" / "spyke_plasma_v1.safetensors", SD15_LORA)
    desk = FakeComfyUI(make_comfy_home(tmp_path / "desk"), port=free_port(), step_delay=0.01, device_type="cuda")
    for folder in ("checkpoints", "loras"):
        for f in (local / folder).iterdir():
            shutil.copyfile(f, desk.base_dir / "models" / folder / f.name)
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", checkpoint=SD15, history_poll_interval=0.2,
                        backend_probe_interval=0.2,
                        backends=[BackendSpec(name="desk", kind="comfyui", url=desk.url, tags=("gpu",), local=False,
                                              profile="cuda-24gb")])
    home = ScriptedBackend(folders={"checkpoints": local / "checkpoints", "loras": local / "loras"})
    daemon = DaemonThread(settings, home)
    daemon._thread.start()
    if start_desk:
        daemon.call(desk.start())
    daemon.call(daemon._start())
    try:
        yield daemon, desk
    finally:
        if daemon._runner is not None:
            daemon.call(daemon._runner.cleanup())
            daemon._runner = None
        daemon.call(desk.stop())
        daemon.stop()


def test_an_sdxl_checkpoint_s_sizes_and_a_stack_of_three_loras_go_to_the_gpu_backend(browser, pool,
                                                                                   tmp_path) -> None:
    from axe_playwright_python.sync_playwright import Axe

    daemon, desk = pool
    shots = screenshot_dir(tmp_path)
    context = browser.new_context(viewport={"width": 1512, "height": 982})
    page = context.new_page()
    console = Console()
    console.attach(page)
    page.goto(f"{daemon.url}/#/now")
    page.locator("table.backends tr[data-backend=desk][data-state=up]").wait_for()
    page.click("#nav a[data-view=generate]")
    form = page.locator("form.generate")
    form.locator(f"select[name=checkpoint] option[value='{SDXL}']").wait_for(state="attached")
    page.fill("textarea[name=prompt]", "spyke_plasma_v1, standing on a rooftop")

    assert form.locator(f"select[name=checkpoint] option[value='{SDXL}']").inner_text() == f"{SDXL} — SDXL · desk"
    assert form.locator(f"select[name=checkpoint] option[value='{SD15}']").inner_text() == f"{SD15} — SD 1.5 · local, desk"
    # The laptop's SD 1.5 checkpoint first: its sizes are the laptop's.
    family = form.locator(".pill.family")
    assert family.inner_text() == "SD 1.5" and form.locator(".runs-on").inner_text() == "runs on local, desk"
    assert (page.input_value("input[name=width]"), page.input_value("input[name=height]")) == ("512", "768")
    assert "512×768 portrait" in form.locator("select.sizes").inner_text()

    # SDXL: the family shown, where it runs, and SDXL's buckets (the GPU profile's default first).
    page.select_option("select[name=checkpoint]", SDXL)
    assert family.inner_text() == "SDXL" and form.locator(".runs-on").inner_text() == "runs on desk"
    assert (page.input_value("input[name=width]"), page.input_value("input[name=height]")) == ("832", "1216")
    sizes = form.locator("select.sizes option").all_inner_texts()
    assert sizes[:2] == ["832×1216 portrait", "1024×1024 square"] and "1216×832 landscape" in sizes
    assert "runs on desk, which “where” leaves out" in page.inner_text(".problems")  # `where` is the laptop
    assert page.locator("button[type=submit]").is_disabled()
    page.select_option("select[name=where]", "desk")
    page.select_option("select.sizes", "1216x832")
    assert (page.input_value("input[name=width]"), page.input_value("input[name=height]")) == ("1216", "832")
    page.fill("input[name=width]", "1280")  # 1280x832 is more pixels than SDXL's buckets: refused here
    assert "more pixels than SDXL" in page.inner_text(".problems")
    page.select_option("select.sizes", "832x1216")

    # Three SDXL LoRAs; the SD 1.5 one is listed, disabled, saying why; a fourth row cannot be added.
    add = form.locator("button[data-action=add-lora]")
    for i, (name, strength) in enumerate(zip(XL_LORAS, ("0.9", "0.45", "0.6"), strict=True)):
        add.click()
        row = form.locator(".lora-row").nth(i)
        sd15 = row.locator("option[value=spyke_plasma_v1]")
        assert sd15.is_disabled() and "SD 1.5, not for this SDXL checkpoint" in sd15.inner_text()
        row.locator("select").select_option(name)
        row.locator("input[type=number]").fill(strength)
    assert add.is_disabled() and "3 of 3" in form.locator(".lora-count").inner_text()
    form.locator(".lora-row").nth(1).locator("input[type=range]").fill("0.5")  # the slider moves its number
    assert form.locator(".lora-row").nth(1).locator("input[type=number]").input_value() == "0.5"
    page.fill("input[name=steps]", "3")
    assert page.locator("button[type=submit]").is_enabled(), page.inner_text(".problems")
    page.emulate_media(reduced_motion="reduce")
    for theme in ("dark", "light"):  # the stack's rows, the family pill and the size list in both themes
        if page.evaluate("() => document.documentElement.dataset.theme") != theme:
            page.click("#theme")
        violations = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:4]}"
                      for v in Axe().run(page).response["violations"] if v["impact"] in ("serious", "critical")]
        assert violations == [], theme
    page.click("#theme")  # back to dark for the pictures below
    page.evaluate("() => document.activeElement.blur()")
    page.screenshot(path=str(shots / "studio-generate-families.png"))

    page.click("button[type=submit]")
    page.locator(".result .job[data-status=succeeded]").wait_for(timeout=30_000)
    [job] = daemon.jobs()
    p = job["params"]
    assert (job["backend"], p["checkpoint"], p["family"], p["width"], p["height"]) == ("desk", SDXL, "sdxl", 832, 1216)
    assert [(lora["id"], lora["strength"]) for lora in p["loras"]] == [
        ("spyke_plasma_xl", 0.9), ("ink_style_xl", 0.5), ("screentone_xl", 0.6)]
    assert all(lora["sha256"] for lora in p["loras"])  # this machine has the files: hashed for the log
    loaders = [n["inputs"]["lora_name"] for n in job["workflow"].values() if n["class_type"] == "LoraLoader"]
    assert loaders == [f"{name}.safetensors" for name in XL_LORAS]
    assert desk.prompt_posts == 1

    # "Edit" on the result: the checkpoint and the whole stack come back into the form.
    page.reload()
    page.locator(".result .job[data-status=succeeded] button[data-action=edit]").click()
    form.locator(f"select[name=checkpoint] option[value='{SDXL}']").wait_for(state="attached")
    page.wait_for_function("() => document.querySelector('.pill.family').textContent === 'SDXL'")
    assert page.input_value("select[name=checkpoint]") == SDXL and page.input_value("select[name=where]") == "desk"
    assert (page.input_value("input[name=width]"), page.input_value("input[name=height]")) == ("832", "1216")
    assert page.input_value("select.sizes") == "832x1216"
    assert [form.locator(".lora-row select").nth(i).input_value() for i in range(3)] == list(XL_LORAS)
    assert form.locator(".lora-row").nth(1).locator("input[type=number]").input_value() == "0.5"

    # At 420 px wide: nothing scrolls sideways, the stack's rows included.
    page.set_viewport_size(NARROW)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= NARROW["width"], f"the Generate view scrolls sideways: {width} px"
    form.screenshot(path=str(shots / "studio-generate-families-narrow.png"))
    context.close()
    assert console.errors == []


def test_a_checkpoint_listed_before_its_backend_answers_becomes_runnable_without_a_reload(
        browser, pool_desk_later, tmp_path) -> None:
    daemon, desk = pool_desk_later
    page = browser.new_page(viewport={"width": 1512, "height": 982})
    console = Console()
    console.attach(page)
    page.goto(f"{daemon.url}/#/generate")
    form = page.locator("form.generate")
    sdxl = form.locator(f"select[name=checkpoint] option[value='{SDXL}']")
    sdxl.wait_for(state="attached")
    # Only the GPU backend's profile runs SDXL, and it does not answer yet.
    assert sdxl.inner_text() == f"{SDXL} — SDXL (no backend runs it here)"
    page.select_option("select[name=checkpoint]", SDXL)
    assert form.locator(".runs-on").inner_text() == "no backend here runs SDXL models"
    page.fill("textarea[name=prompt]", "spyke_plasma_v1, standing")
    assert page.locator("button[type=submit]").is_disabled()

    # It comes up: backend.up on /events, and the list is asked again by itself.
    daemon.call(desk.start())
    page.wait_for_function("() => document.querySelector('.runs-on').textContent === 'runs on desk'", timeout=15_000)
    assert page.input_value("select[name=checkpoint]") == SDXL  # the choice stays
    assert sdxl.inner_text() == f"{SDXL} — SDXL · desk"
    page.select_option("select[name=where]", "desk")
    page.fill("input[name=steps]", "3")
    assert page.locator("button[type=submit]").is_enabled(), page.inner_text(".problems")

    # A checkpoint installed while the view is open shows when the list is opened again.
    added = "pony-xl.safetensors"
    write_safetensors(tmp_path / "local-models" / "checkpoints" / added, SDXL_CHECKPOINT)
    shutil.copyfile(tmp_path / "local-models" / "checkpoints" / added, desk.base_dir / "models" / "checkpoints" / added)
    page.wait_for_timeout(1100)  # the list is asked again at most once a second
    page.locator("select[name=checkpoint]").click()
    form.locator(f"select[name=checkpoint] option[value='{added}']").wait_for(state="attached", timeout=10_000)
    page.keyboard.press("Escape")
    assert page.input_value("select[name=checkpoint]") == SDXL
    page.click("button[type=submit]")
    page.locator(".result .job[data-status=succeeded]").wait_for(timeout=30_000)
    [job] = daemon.jobs()
    assert (job["backend"], job["params"]["checkpoint"]) == ("desk", SDXL)
    page.close()
    assert console.errors == []

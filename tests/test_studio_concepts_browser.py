"""The studio's Concept and Explorer views in the system Chromium against a real `sidecar serve` on the
embedded engine with the tiny models (the fake Ollama driven by the official client behind the daemon):
an artist goes from "a rooftop at dusk" in fields to a chosen page prompt in three rounds with the subject
locked throughout, and compares two LoRA combinations side by side after a LoRA's showcase (rendered once,
then from the cache); with Ollama gone the view says so and still renders; both views fit 420 px and an
axe scan of them in both themes finds nothing serious."""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_stage.prompts import load_prompt
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from tests.family_headers import SDXL_LORA, write_safetensors
from tests.fake_ollama import FakeOllama, ollama_fake, ollama_server  # noqa: F401  (fixtures)
from tests.studio_browser import (  # noqa: F401  (fixtures)
    NARROW, Daemon, browser, screenshot_dir, signed_in, start_daemon, stop_daemon, studio_models,
)

pytestmark = pytest.mark.engine
SUBJECT = "1boy on a rooftop"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, engine_models: Path, ollama_server: FakeOllama) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("concepts")
    project = root / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), project)
    settings = project / "pipeline.toml"  # the example chapter at a size the tiny model draws in a moment
    settings.write_text(settings.read_text().replace("steps = 20", "steps = 4").replace("width = 512", "width = 64")
                        .replace("height = 768", "height = 96"))
    models = studio_models(root, engine_models)
    started = start_daemon(root, models, project, ollama_url=ollama_server.url, ollama_timeout=10)
    # Load the engine's models once, here: the first job of a daemon pays for it.
    warm = started.api("POST", "/jobs", {"prompt": "warm up", "resolution": {"width": 64, "height": 64},
                                         "loras": [{"id": "spyke_plasma_v1"}]})
    started.wait_job(warm["id"], {"succeeded"}, timeout=300)
    yield started
    stop_daemon(started)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory.mktemp("shots"))


def wait_round(page, number: int) -> None:
    page.locator(".concept-round h2", has_text=f"Round {number}").wait_for(timeout=60_000)
    page.wait_for_function("() => document.querySelectorAll('.concept-image[data-status=succeeded]').length === 4",
                           timeout=300_000)


def test_three_rounds_with_the_subject_locked_to_a_page_prompt(browser, daemon: Daemon, ollama_fake: FakeOllama,
                                                               shots: Path) -> None:
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/concept")
    page.locator(".empty-concepts").wait_for()
    page.fill("input[name=newName]", "rooftop")
    page.click("[data-action=new-concept]")
    page.locator(".concept-fields h2", has_text="rooftop").wait_for()
    page.fill(".concept-field[data-field=subject] input", SUBJECT)
    page.fill(".concept-field[data-field=background] input", "city rooftops at dusk, water tower")
    page.fill(".concept-field[data-field=lighting] input", "dusk light")
    page.click("[data-lock=subject]")
    page.click(".concept-render [data-action=add-lora]")  # the character's LoRA, a little lighter
    page.locator(".concept-render select[name='loras[0].id'] option[value=spyke_plasma_v1]").wait_for(state="attached")
    page.select_option(".concept-render select[name='loras[0].id']", "spyke_plasma_v1")
    page.fill(".concept-render input[name='loras[0].strength']", "0.8")

    for number in (1, 2, 3):
        ollama_fake.answer({"parts": [{"field": "subject", "text": "1girl"}, {"field": "background", "text": "rooftops"},
                                      {"field": "background", "text": "city skyline"},
                                      {"field": "lighting", "text": "dusk light"}]})
        page.click("[data-action=round]")
        wait_round(page, number)
        tags = page.locator(".fields-tags li").all_inner_texts()
        assert f"subject → {SUBJECT}" in tags and not any("1girl" in t or "skyline" in t for t in tags)
        images = page.locator(".concept-image")
        images.nth(0).locator("[data-mark=pick]").click()
        images.nth(1).locator("[data-mark=reject]").click()
        images.nth(1).locator("input[name=reason]").fill("busy background")
        page.fill("textarea[name=feedback]", "calmer")
        ollama_fake.answer({"changes": [{"field": "subject", "value": "a cat"},
                                        {"field": "background", "value": f"empty rooftop at dusk {number}"}]})
        page.click("[data-action=feedback]")
        page.locator(".changes li[data-status=refused]", has_text="subject").wait_for()
        assert page.input_value(".concept-field[data-field=background] input") == f"empty rooftop at dusk {number}"
        assert page.input_value(".concept-field[data-field=subject] input") == SUBJECT
    page.locator(".preferences li", has_text="rejected: busy background ×3").wait_for()
    page.wait_for_function("() => document.querySelectorAll('.concept-image .pic.loaded').length === 4")
    page.screenshot(path=str(shots / "studio-concept.png"), full_page=True)

    pick = page.locator(".concept-image").nth(0)
    job_id = pick.get_attribute("data-job")
    pick.locator(".make-page summary").click()
    pick.locator("input[name=page]").fill("5")
    pick.locator("[data-action=make-page]").click()
    page.locator("#toasts .toast", has_text="ch01_p005.txt written").wait_for()
    job = daemon.api("GET", f"/jobs/{job_id}")
    written = load_prompt(daemon.project / "prompts/ch-01/ch01_p005.txt")
    assert written.options.seed == job["params"]["seed"] and written.text == job["params"]["prompt"]
    concept = tomllib.loads((daemon.project / "concepts/rooftop.toml").read_text())
    assert concept["subject"] == {"value": SUBJECT, "locked": True}
    intent = json.loads((daemon.project / "concepts/rooftop.intent.json").read_text())
    assert [r["fields"]["subject"]["value"] for r in intent["rounds"]] == [SUBJECT] * 3

    # Ollama gone: the view says so, and the round still renders from the fields as written.
    ollama_fake.models = {}
    page.click("[data-action=round]")
    page.locator(".concept-round h2", has_text="Round 4").wait_for(timeout=60_000)
    page.locator(".composed .ollama-note").wait_for()
    assert f"subject → {SUBJECT}" in page.locator(".fields-tags li").all_inner_texts()
    context.close()
    assert console.errors == []


def test_the_rounds_checkpoint_and_lora_stack_are_picked_in_the_view_and_kept(browser, daemon: Daemon,
                                                                              ollama_fake: FakeOllama) -> None:
    # An SDXL LoRA beside the SD 1.5 ones: listed, but not pickable for the SD 1.5 checkpoint.
    write_safetensors(daemon.root / "models" / "loras" / "xl_only.safetensors", SDXL_LORA)
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/concept")
    page.locator(".concept-fields h2, .empty-concepts").first.wait_for()
    page.fill("input[name=newName]", "picked")
    page.click("[data-action=new-concept]")
    page.locator(".concept-fields h2", has_text="picked").wait_for()
    page.fill(".concept-field[data-field=subject] input", SUBJECT)
    render = page.locator(".concept-render")
    assert "pipeline.toml" in render.locator(".stack-note").inner_text()
    render.locator("select[name=checkpoint] option[value='tiny-sd15.safetensors']").wait_for(state="attached")
    render.locator("select[name=checkpoint]").select_option("tiny-sd15.safetensors")
    assert render.locator(".pill.family").inner_text() == "SD 1.5"
    render.locator("[data-action=add-lora]").click()
    xl = render.locator("select[name='loras[0].id'] option[value=xl_only]")
    assert xl.is_disabled() and "SDXL, not for this SD 1.5 checkpoint" in xl.inner_text()
    render.locator("select[name='loras[0].id']").select_option("tiny-lora")
    render.locator("input[name='loras[0].strength']").fill("0.4")
    render.locator("[data-action=add-lora]").click()
    render.locator("select[name='loras[1].id']").select_option("spyke_plasma_v1")
    render.locator("input[name='loras[1].strength']").fill("0.7")
    assert render.locator(".stack-note").inner_text() == ""

    ollama_fake.answer({"parts": [{"field": "subject", "text": SUBJECT}]})
    page.click("[data-action=round]")
    wait_round(page, 1)
    ids = [page.locator(".concept-image").nth(i).get_attribute("data-job") for i in range(4)]
    for job_id in ids:
        params = daemon.api("GET", f"/jobs/{job_id}")["params"]
        assert params["checkpoint"] == "tiny-sd15.safetensors"
        assert [(u["id"], u["strength"]) for u in params["loras"]] == [("tiny-lora", 0.4), ("spyke_plasma_v1", 0.7)]
    saved = tomllib.loads((daemon.project / "concepts/picked.toml").read_text())["render"]
    assert saved["checkpoint"] == "tiny-sd15.safetensors"
    assert saved["loras"] == [{"id": "tiny-lora", "strength": 0.4}, {"id": "spyke_plasma_v1", "strength": 0.7}]

    # A reload shows what the concept renders with; emptying the stack is saved as "no LoRA" ([]).
    page.reload()
    page.locator(".concept-fields h2", has_text="picked").wait_for()
    render.locator("select[name='loras[1].id'] option[value=spyke_plasma_v1]").wait_for(state="attached")
    assert render.locator("select[name=checkpoint]").input_value() == "tiny-sd15.safetensors"
    assert render.locator("select[name='loras[0].id']").input_value() == "tiny-lora"
    assert render.locator("input[name='loras[1].strength']").input_value() == "0.7"
    render.locator("[data-action=remove-lora]").first.click()
    render.locator("[data-action=remove-lora]").first.click()
    ollama_fake.answer({"parts": [{"field": "subject", "text": SUBJECT}]})
    page.click("[data-action=compose]")
    page.locator(".fields-tags li").first.wait_for()
    assert tomllib.loads((daemon.project / "concepts/picked.toml").read_text())["render"]["loras"] == []
    context.close()
    (daemon.root / "models" / "loras" / "xl_only.safetensors").unlink()
    assert console.errors == []


def test_a_showcase_is_cached_and_two_combinations_compare_side_by_side(browser, daemon: Daemon, shots: Path) -> None:
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/explorer")
    card = page.locator(".lora[data-lora=spyke_plasma_v1]")
    card.wait_for()
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "96")
    family = next(m["family"] for m in daemon.api("GET", "/models")["loras"] if m["name"] == "spyke_plasma_v1.safetensors")
    assert card.locator(".pill").inner_text() == family  # as GET /models reads it from the file's header
    card.locator("[data-action=showcase]").click()
    page.wait_for_function("() => document.querySelectorAll('.lora[data-lora=spyke_plasma_v1] .pic[data-status=succeeded]')"
                           ".length === 3", timeout=300_000)
    card.locator("[data-action=showcase]").click()
    card.locator(".showcase", has_text="from the cache").wait_for()

    page.fill("textarea[name=prompt]", "1boy, rooftop, dusk")
    page.click("[data-action=compare]")
    page.wait_for_function("() => document.querySelectorAll('.compare-row .pic[data-status=succeeded]').length === 4",
                           timeout=300_000)
    page.wait_for_function("() => document.querySelectorAll('.compare-row .pic.loaded').length === 4")
    heads = page.locator(".compare-head b").all_inner_texts()
    assert heads[0].startswith("A: ") and heads[1].startswith("B: ") and heads[0] != heads[1]
    # The contact sheet link: the compare's PNG, both columns side by side, as the page's session fetches it
    # (the cookie counts only on a request the browser marks same-origin: a plain client's would be 401).
    href = page.locator("[data-action=sheet]").get_attribute("href")
    assert href.startswith("/explorer/compare/") and href.endswith("/sheet.png")
    status, kind, width, height = page.evaluate("""async (u) => {
        const r = await fetch(u); const bmp = await createImageBitmap(await r.blob());
        return [r.status, r.headers.get("content-type"), bmp.width, bmp.height]; }""", href)
    assert (status, kind, width, height) == (200, "image/png", 260 + 2 * 256, 28 + 2 * 256)
    context.close()
    assert console.errors == []


def test_both_views_fit_a_narrow_window_and_pass_an_axe_scan(browser, daemon: Daemon) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    context, page, console = signed_in(browser, daemon, NARROW)
    found = {}
    for theme in ("dark", "light"):
        if page.evaluate("() => document.documentElement.dataset.theme") != theme:
            page.click("#theme")
        for view, ready in (("concept", ".concept-fields h2, .empty-concepts"), ("explorer", ".lora, .explorer .empty")):
            page.goto(f"{daemon.url}/#/{view}")
            page.locator(ready).first.wait_for(timeout=60_000)
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= NARROW["width"], f"the {view} view scrolls sideways: {width} px"
            violations = axe.run(page).response["violations"]
            bad = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:4]}" for v in violations
                   if v["impact"] in ("serious", "critical")]
            if bad:
                found[f"{view}/{theme}"] = bad
    assert found == {}
    context.close()
    assert console.errors == []

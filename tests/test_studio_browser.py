"""The studio in a real browser (the system Chromium, driven by Playwright) against a real `sidecar
serve` on the embedded engine with the tiny models and a token: the artist signs in with `sidecar
studio`'s one-time URL, and every view works with the cookie that leaves her, without a console error.
A page on another local port, in the same signed-in browser, can neither queue a job, read /jobs nor
open /events."""

from __future__ import annotations

import json
import shutil
import threading
import time
from urllib.parse import quote
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from tests.conftest_comfy import free_port
from tests.likeness_fixtures import add_references
from tests.fake_ollama import FakeOllama, ollama_fake, ollama_server  # noqa: F401  (fixtures)
from tests.upscale_fixtures import TINY_UPSCALER, write_upscaler
from tests.studio_browser import (  # noqa: F401  (fixtures)
    DESKTOP, NARROW, Daemon, browser, screenshot_dir, signed_in, start_daemon, stop_daemon, studio_models,
)

pytestmark = pytest.mark.engine
REFERENCES = 'references = ["refs/*.png"]\n'  # character.toml's reference set (the `references` fixture)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, engine_models: Path, ollama_server: FakeOllama) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("studio")
    project = root / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), project)
    settings = project / "pipeline.toml"  # the example chapter at a size the tiny model draws in a moment
    settings.write_text(settings.read_text().replace("steps = 20", "steps = 4").replace("width = 512", "width = 64")
                        .replace("height = 768", "height = 96"))
    add_references(project)  # crops of the character; only the test that needs them names them (below)
    sheet = project / "character.toml"
    sheet.write_text(sheet.read_text().replace(REFERENCES, ""))
    models = studio_models(root, engine_models)
    write_upscaler(models / "upscale_models")  # Generate's "Upscale for print" offers it
    started = start_daemon(root, models, project, ollama_url=ollama_server.url, ollama_timeout=10,
                           likeness_model="ccip-tiny")
    # Load the engine's models once, here: the first job of a daemon pays for it.
    warm = started.api("POST", "/jobs", {"prompt": "warm up", "resolution": {"width": 64, "height": 64}})
    started.wait_job(warm["id"], {"succeeded"}, timeout=300)
    yield started
    stop_daemon(started)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir(tmp_path_factory.mktemp("shots"))


@pytest.fixture
def references(daemon: Daemon) -> Iterator[None]:
    """The project names its reference set for one test: its jobs answer their likeness (make-tiny's tiny
    likeness model); the other views' checks (the dataset's) see no reference set."""
    sheet = daemon.project / "character.toml"
    before = sheet.read_text()
    sheet.write_text(before + REFERENCES)
    yield
    sheet.write_text(before)


def test_a_job_submitted_from_the_form_shows_its_progress_and_image(browser, daemon, references, shots,
                                                                    tmp_path) -> None:
    from PIL import Image

    pose = tmp_path / "pose.png"  # a stick figure, white on black, as OpenPose draws
    Image.new("RGB", (60, 90), "black").save(pose)
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=generate]")
    page.set_input_files("input[name=pose]", str(pose))  # picked from disk, previewed, kept by the daemon
    page.locator(".pic.pose img").wait_for()
    assert page.locator("input[name=controlnetStrength]").is_enabled()
    page.fill("textarea[name=prompt]", "spyke_plasma_v1, full body, standing on a rooftop at dusk")
    page.click("button[data-action=add-lora]")  # the LoRA stack's first row
    page.locator("select[name='loras[0].id'] option[value=spyke_plasma_v1]").wait_for(state="attached")
    page.select_option("select[name='loras[0].id']", "spyke_plasma_v1")
    page.fill("input[name=width]", "520")  # over the profile's 512: refused before submit
    assert page.locator("button[type=submit]").is_disabled()
    assert "over SD 1.5 on the m1pro-16gb profile's 512×768" in page.inner_text(".problems")
    page.fill("input[name=width]", "64")  # tiny: the tiny model's CPU time grows with the pixels
    page.fill("input[name=height]", "96")
    page.fill("input[name=steps]", "8")
    page.click("button[type=submit]")
    card = page.locator(".result .job")
    card.locator(".progress").wait_for()
    # Progress moves live (over /events) before the image comes.
    page.wait_for_function("() => /^[1-7]\\/8$/.test(document.querySelector('.result .progress .small')"
                           "?.textContent || '')", timeout=120_000)
    page.locator(".result .job[data-status=succeeded] .pic.loaded img").wait_for(timeout=120_000)
    job_id = card.get_attribute("data-job-id")
    job = daemon.api("GET", f"/jobs/{job_id}")
    assert job["status"] == "succeeded" and job["params"]["loraId"] == "spyke_plasma_v1"
    assert [(lo["id"], lo["strength"]) for lo in job["params"]["loras"]] == [("spyke_plasma_v1", 0.8)]
    assert (job["params"]["width"], job["params"]["height"], job["params"]["steps"]) == (64, 96, 8)
    assert job["workflowTemplate"] == "txt2img-pose-lora"  # was img2img-lora-controlnet, kept as an alias
    assert job["params"]["poseImagePath"].startswith(str(daemon.root / "data" / "poses"))
    size = page.evaluate("() => { const i = document.querySelector('.result .pic img'); "
                         "return [i.naturalWidth, i.naturalHeight]; }")
    assert size == [64, 96]
    # The judge's verdict on the image, against the project's reference set.
    page.locator(".result .job .badge.likeness").wait_for()
    assert page.inner_text(".result .job .badge.likeness").split()[0].lower() in ("same", "unsure", "different")
    page.screenshot(path=str(shots / "studio-generate.png"))

    page.click("#nav a[data-view=now]")
    page.locator(f".job[data-job-id='{job_id}'][data-status=succeeded]").wait_for()
    assert page.locator(".tiles").inner_text().count("embedded") == 1
    page.screenshot(path=str(shots / "studio-now.png"))
    context.close()
    assert console.errors == []


def test_a_running_job_is_cancelled_from_the_now_view(browser, daemon) -> None:
    context, page, console = signed_in(browser, daemon)
    job = daemon.api("POST", "/jobs", {"prompt": "spyke_plasma_v1, slow", "steps": 150,
                                       "resolution": {"width": 128, "height": 192}})
    card = page.locator(f".job[data-job-id='{job['id']}']")
    card.locator(".badge.running").wait_for(timeout=120_000)  # the card appeared and moved by itself
    # While it runs, its live previews (job.preview events, a small JPEG each) show in the card.
    card.locator(".pic.preview img").wait_for(timeout=60_000)
    assert card.locator(".pic.preview img").get_attribute("src").startswith("data:image/jpeg;base64,")
    card.locator("button", has_text="Cancel").click()
    card.locator(".badge.cancelled").wait_for(timeout=60_000)
    assert daemon.api("GET", f"/jobs/{job['id']}")["status"] == "cancelled"
    assert card.locator("button", has_text="Cancel").count() == 0
    context.close()
    assert console.errors == []


def test_the_queue_is_paused_and_resumed_from_the_now_view(browser, daemon) -> None:
    context, page, console = signed_in(browser, daemon)
    queue_tile = page.locator(".tile", has_text="Queue")
    page.locator("button[data-action=pause]").click()
    page.locator("button[data-action=resume]").wait_for()
    assert daemon.api("GET", "/queue")["paused"] is True
    page.wait_for_function("() => [...document.querySelectorAll('.tile')].some((t) => "
                           "t.classList.contains('warn') && /paused/.test(t.textContent))")
    # Resumed from elsewhere (a tool, another tab): the queue.resumed event turns the view back.
    daemon.api("POST", "/queue/resume")
    page.locator("button[data-action=pause]").wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('.tile')].some((t) => "
                           "/Queue/.test(t.textContent) && !/paused/.test(t.textContent))")
    assert "paused" not in queue_tile.inner_text()
    context.close()
    assert console.errors == []


ATTACK_PAGE = """<!doctype html><meta charset="utf-8"><title>another site</title><script>
window.results = (async () => {
  const daemon = "%(daemon)s", out = {};
  async function attempt(name, run) {
    try { out[name] = await run(); } catch (e) { out[name] = "blocked: " + e.name; }
  }
  await attempt("listJobs", async () => (await fetch(daemon + "/jobs", {credentials: "include"})).status);
  await attempt("submitJson", async () => (await fetch(daemon + "/jobs", {method: "POST", credentials: "include",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify({prompt: "from another page"})})).status);
  await attempt("submitSimple", async () => (await fetch(daemon + "/jobs", {method: "POST", credentials: "include",
    mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: JSON.stringify({prompt: "from another page"})})).type);
  out.events = await new Promise((resolve) => {
    const ws = new WebSocket(daemon.replace("http", "ws") + "/events");
    ws.onopen = () => resolve("open");
    ws.onerror = () => resolve("refused");
    setTimeout(() => resolve("timeout"), 5000);
  });
  return out;
})();
</script>"""


@pytest.fixture
def other_site(daemon: Daemon) -> Iterator[str]:
    """A page served from another port of 127.0.0.1: the same *site* as the daemon (cookies ignore ports),
    another origin."""
    body = (ATTACK_PAGE % {"daemon": daemon.url}).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_a_page_on_another_port_cannot_queue_read_or_listen(browser, daemon, other_site) -> None:
    context, page, _ = signed_in(browser, daemon)  # the studio's cookie is in this browser
    before = len(daemon.api("GET", "/jobs?limit=500")["jobs"])
    attacker = context.new_page()
    attacker.goto(other_site)
    results = attacker.evaluate("() => window.results")
    assert results["listJobs"].startswith("blocked"), results  # 403 origin_not_allowed, no CORS: unreadable
    assert results["submitJson"].startswith("blocked"), results  # its preflight is refused
    assert results["submitSimple"] == "opaque", results  # sent, answered 403 (the daemon's log says so)
    assert results["events"] == "refused", results
    assert len(daemon.api("GET", "/jobs?limit=500")["jobs"]) == before
    assert "origin_not_allowed" in daemon.log()
    context.close()


def _log_entries(daemon: Daemon, page: str = "ch01_p001") -> dict[int, dict]:
    import json

    entries = json.loads((daemon.project / "output" / "ch-01" / "generation-log.json").read_text())
    return {e["version"]: e for e in entries if f"/{page}_v" in e["imageFile"]}


def test_pages_show_versions_render_a_new_one_compare_approve_and_reproduce(browser, daemon, shots) -> None:
    import subprocess
    import sys

    # Version 1 as the pipeline writes it: `generate` against the same daemon.
    done = subprocess.run([sys.executable, "-m", "pipeline_stage", "--comfyui", "-c", "1", "--page", "1",
                           "--root", str(daemon.project), "--daemon", daemon.url, "--json"],
                          env=daemon.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=pages]")
    page.locator(".thumb[data-version='1'] .pic.loaded").wait_for()
    assert page.locator(".page-list a.active").inner_text().startswith("ch01_p001")

    page.keyboard.press("n")  # a new version with edited parameters
    page.fill(".new-version input[name=seed]", "777")
    page.click(".new-version button[type=submit]")
    page.locator(".thumb[data-version='2'].selected .pic.loaded").wait_for(timeout=120_000)
    assert _log_entries(daemon)[2]["seed"] == 777

    page.keyboard.press("ArrowLeft")
    page.locator(".thumb[data-version='1'].selected").wait_for()
    page.keyboard.press("c")  # compare with the other version, side by side, then as an overlay
    assert page.locator(".viewer.side figure").count() == 2
    page.keyboard.press("o")
    page.locator(".viewer.overlay input[type=range]").fill("30")
    assert "inset(0px 0px 0px 30%)" in page.locator(".overlay .pic.top").get_attribute("style")
    page.evaluate("() => document.activeElement.blur()")  # the slider keeps the keys while it has the focus
    page.keyboard.press("o")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "studio-pages.png"))

    before = _log_entries(daemon)
    page.keyboard.press("a")  # approve v1: the log changes as `generate approve` changes it
    page.locator(".thumb[data-version='1'] .approved-mark").wait_for()
    entries = _log_entries(daemon)
    assert entries[1]["approved"] is True and entries[2] == before[2]
    [change] = entries[1]["approvalChanges"]
    assert (change["approved"], change["by"]) == (True, "studio")
    assert {k: v for k, v in entries[1].items() if k not in ("approved", "approvalChanges")} == \
        {k: v for k, v in before[1].items() if k != "approved"}
    page.keyboard.press("a")  # again: the approval is taken back (undo), and the log says so
    page.locator(".thumb[data-version='1'] .approved-mark").wait_for(state="detached")
    assert [c["approved"] for c in _log_entries(daemon)[1]["approvalChanges"]] == [True, False]
    page.keyboard.press("a")
    page.locator(".thumb[data-version='1'] .approved-mark").wait_for()

    page.click("button[data-action=reproduce]")
    page.locator(".thumb[data-version='3'].selected .pic.loaded").wait_for(timeout=120_000)
    third = _log_entries(daemon)[3]
    assert third["reproducedFrom"] == "output/ch-01/raw/ch01_p001_v1.workflow.json"
    assert third["seed"] == entries[1]["seed"]
    context.close()
    assert console.errors == []


def test_a_caption_edited_in_the_dataset_view_changes_its_file_and_flips_are_written(browser, daemon,
                                                                                     tmp_path, shots) -> None:
    from tests.training_fixtures import CAPTIONS, make_dataset

    folder = make_dataset(tmp_path / "spyke", [*CAPTIONS[:2], "a cat, portrait, smiling, white background"])
    (folder / "img01.txt").unlink()
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/dataset/{quote(str(folder), safe='')}")
    card = page.locator(".dataset-image[data-name='img02.png']")
    card.locator(".finding[data-check=trigger]").wait_for()  # the check's finding beside its image
    assert "no caption file" in page.locator(".dataset-image[data-name='img01.png'] .findings").inner_text()
    caption = card.locator("textarea")
    caption.fill("spyke_plasma_v1, portrait, smiling, white background")
    caption.press("Enter")
    card.locator(".save-state", has_text="saved").wait_for()
    assert (folder / "img02.txt").read_text() == "spyke_plasma_v1, portrait, smiling, white background\n"
    page.locator(".dataset-image[data-name='img02.png'] .finding[data-check=trigger]").wait_for(state="detached")

    page.locator(".dataset-image[data-name='img00.png'] input[type=checkbox]").check()
    page.locator("button", has_text="Flip 1 selected").click()
    page.locator(".dataset-image[data-name='img00_flip.png']").wait_for()
    assert (folder / "img00_flip.txt").read_text().strip() == f"{CAPTIONS[0]}, mirrored"
    page.screenshot(path=str(shots / "studio-dataset.png"))
    context.close()
    assert console.errors == []


def test_a_training_run_is_followed_to_its_end_and_promoted_on_the_loras_view(browser, daemon, tmp_path,
                                                                              shots) -> None:
    from tests.training_fixtures import make_dataset

    folder = make_dataset(tmp_path / "train")
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=loras]")
    form = page.locator("form.train")
    form.locator("input[name=datasetDir]").fill(str(folder))
    form.locator("input[name=outputName]").fill("spyke_test")
    form.locator("input[name=steps]").fill("6")
    form.locator("input[name=saveEveryNSteps]").fill("2")
    form.locator("select[name=engine]").select_option("embedded")
    form.locator("input[name=resolution]").fill("64")
    form.locator("input[name=networkDim]").fill("4")
    form.locator("input[name=networkAlpha]").fill("2")
    form.locator("input[name=force]").check()  # three 64 px images: past the quality gate
    form.locator("button[type=submit]").click()
    run = page.locator(".run[data-run-id]").first
    run.locator(".step", has_text="6/6").wait_for(timeout=180_000)
    run.locator(".badge.succeeded").wait_for(timeout=60_000)
    assert run.locator("polyline.smooth").count() == 1  # the loss chart grew from the live events
    run_id = run.get_attribute("data-run-id")
    status = daemon.api("GET", f"/loras/{run_id}/status")
    assert status["status"] == "succeeded" and [c["step"] for c in status["checkpoints"]] == [2, 4, 6]
    # The three checkpoints and the run's final LoRA file (saved at the last step too): each promotable.
    assert run.locator(".checkpoints li").count() == 4
    assert run.locator(".checkpoints li[data-final='1']").inner_text().startswith("final LoRA (step 6)")
    run.locator(".checkpoints li[data-step='4']:not([data-final]) button").click()
    page.locator("#toasts", has_text="installed as spyke_test").wait_for()
    page.locator("tr[data-lora=spyke_test]").wait_for()
    # The final file under the same name would replace another file: the studio asks for a name instead.
    run.locator(".checkpoints li[data-final='1'] button").click()
    ask = run.locator("form.promote-name")
    ask.wait_for()
    assert "already installed as “spyke_test”" in ask.inner_text() and "--name" not in page.inner_text("body")
    ask.locator("input[name=promoteName]").fill("spyke_test_final")
    ask.locator("button[type=submit]").click()
    page.locator("tr[data-lora=spyke_test_final]").wait_for()
    ask.wait_for(state="detached")
    assert (daemon.root / "models" / "loras" / "spyke_test_final.safetensors").is_file()
    page.set_viewport_size({"width": DESKTOP["width"], "height": 1200})  # the run card whole
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(shots / "studio-loras.png"))
    # A fresh page saw none of the live events: it draws the run's whole curve from the daemon.
    page.reload()
    curve = page.locator(f".run[data-run-id='{run_id}'] polyline.smooth")
    curve.wait_for()
    # The training form is as the artist left it.
    assert form.locator("input[name=datasetDir]").input_value() == str(folder)
    assert form.locator("input[name=outputName]").input_value() == "spyke_test"
    assert form.locator("input[name=steps]").input_value() == "6"
    logged = daemon.api("GET", f"/loras/{run_id}/loss")["stepsLogged"]
    assert logged >= 3
    page.wait_for_function("([sel, n]) => document.querySelector(sel)?.getAttribute('points').trim().split(/\\s+/).length === n",
                           arg=[f".run[data-run-id='{run_id}'] polyline.smooth", logged])
    # A likeness-ranked sweep (as `sidecar loras sweep` leaves it in the run's sweep folder): each checkpoint
    # shows its rank and mean likeness, the pick is named.
    sweep = Path(status["outputDir"]).parent / "sweep"
    sweep.mkdir(exist_ok=True)
    ranking = [{"rank": i + 1, "label": f"step {s}", "step": s, "checkpoint": None, "meanScore": m, "shareSame": sh,
                "failures": 0, "images": 4} for i, (s, m, sh) in enumerate([(4, 0.81, 1.0), (6, 0.62, 0.5), (2, 0.3, 0.0)])]
    (sweep / "index.json").write_text(json.dumps({"ranking": ranking, "pick": ranking[0], "unranked": None}))
    page.reload()
    run = page.locator(f".run[data-run-id='{run_id}']")
    run.locator(".checkpoints li[data-step='4'] .badge.rank.succeeded", has_text="#1 0.81").wait_for()
    assert run.locator(".checkpoints li[data-step='2'] .badge.rank").inner_text() == "#3 0.30"
    assert "step 4" in run.locator(".checkpoints .pick").inner_text()
    context.close()
    assert [e for e in console.errors if "status of 409" not in e] == []  # the name taken: asked again


def test_sign_out_in_the_header_ends_the_browser_s_session(browser, daemon) -> None:
    context, page, _ = signed_in(browser, daemon)
    [cookie] = [c for c in context.cookies() if c["name"] == "sidecar_studio"]
    page.click("#signout")
    page.locator("#view h2", has_text="Sign in to the studio").first.wait_for(timeout=30_000)
    assert page.locator("#signout").is_hidden()
    assert not [c for c in context.cookies() if c["name"] == "sidecar_studio"]  # cleared in the browser
    context.add_cookies([cookie])  # and ended on the daemon: a copy kept elsewhere opens nothing
    page.reload()
    page.locator("#view h2", has_text="Sign in to the studio").first.wait_for(timeout=30_000)
    context.close()


def _trained_run(daemon: Daemon, folder: Path, name: str) -> dict:
    """A finished training run with checkpoints at steps 2 and 4, trained through the API."""
    run = daemon.api("POST", "/loras/train", {"datasetDir": str(folder), "outputName": name, "steps": 4,
                                              "saveEveryNSteps": 2, "resolution": 64, "networkDim": 4,
                                              "networkAlpha": 2, "engine": "embedded", "force": True})
    deadline = time.monotonic() + 300
    while (run := daemon.api("GET", f"/loras/{run['id']}/status"))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, run
        time.sleep(0.5)
    assert run["status"] == "succeeded" and [c["step"] for c in run["checkpoints"]] == [2, 4], run
    return run


def test_a_finished_runs_checkpoints_are_swept_ranked_and_the_pick_promoted_from_the_loras_view(
        browser, daemon, references, tmp_path, shots) -> None:
    from tests.training_fixtures import make_dataset

    run = _trained_run(daemon, make_dataset(tmp_path / "train"), "spyke_sweep")
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=loras]")
    card = page.locator(f".run[data-run-id='{run['id']}']")
    form = card.locator("form.sweep-form")
    form.locator("textarea[name=sweepPrompts]").fill("spyke_plasma_v1, portrait\n")
    form.locator("input[name=sweepSeeds]").fill("7")
    form.locator("button[type=submit]", has_text="Sweep checkpoints").click()
    # The card follows the daemon's task to its end, then shows the ranking, the pick and the sheet.
    card.locator(".sweep-state[data-status=succeeded]").wait_for(timeout=240_000)
    card.locator(".checkpoints .pick").wait_for()
    swept = daemon.api("GET", f"/loras/{run['id']}/sweep")
    assert swept["task"]["status"] == "succeeded" and swept["contactSheetUrl"]
    assert (Path(run["outputDir"]).parent / "sweep" / "contact-sheet.png").is_file()
    pick = swept["index"]["pick"]
    assert sorted(r["step"] for r in swept["index"]["ranking"]) == [2, 4] and pick["step"] in (2, 4)
    assert swept["index"]["seeds"] == [7] and swept["index"]["prompts"] == ["spyke_plasma_v1, portrait"]
    picked = card.locator(f".checkpoints li[data-step='{pick['step']}']:not([data-final]) .badge.rank.succeeded")
    assert picked.inner_text().startswith("#1 ")
    assert card.locator("details.sweep[open] img.sheet").count() == 1
    assert "/loras/" not in page.inner_text("body") and "--" not in card.inner_text()
    card.locator("button", has_text="Promote the pick").click()
    page.locator("#toasts", has_text="installed as spyke_sweep").wait_for()
    page.locator("tr[data-lora=spyke_sweep]").wait_for()
    # The file installed is the picked checkpoint's.
    name = next(c["fileName"] for c in run["checkpoints"] if c["step"] == pick["step"])
    checkpoint = next(Path(run["outputDir"]).parent.rglob(name))
    assert (daemon.root / "models" / "loras" / "spyke_sweep.safetensors").read_bytes() == checkpoint.read_bytes()
    card.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "studio-loras-sweep.png"))
    context.close()
    assert console.errors == []


def test_a_training_folder_is_built_from_a_reference_sheet_in_the_dataset_view(browser, daemon, tmp_path,
                                                                                 shots) -> None:
    from tests.dataset_fixtures import reference_sheet

    sheet = tmp_path / "Spyke_Sheet.png"
    reference_sheet(sheet)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("hers")
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=dataset]")
    page.locator("details.build summary").click()
    form = page.locator("details.build form")
    form.locator("textarea[name=buildSheets]").fill(str(sheet))
    form.locator("input[name=buildSize]").fill("128")
    form.locator("select[name=buildCaptions]").select_option("table")
    form.locator("input[name=buildTrigger]").fill("spyke_plasma_v1")
    # A folder that is not empty: a sentence, no path, and her file untouched.
    form.locator("input[name=buildOut]").fill(str(taken))
    form.locator("button[type=submit]").click()
    said = form.locator(".build-state .problem")
    said.wait_for()
    assert "new or empty folder" in said.inner_text() and str(tmp_path) not in said.inner_text()
    assert sorted(p.name for p in taken.iterdir()) == ["keep.txt"]
    out = tmp_path / "built"
    form.locator("input[name=buildOut]").fill(str(out))
    form.locator("button[type=submit]").click()
    form.locator(".build-state[data-status=succeeded]").wait_for(timeout=180_000)
    # The new folder opens below: its crops and their mirrored copies, the caption table on disk.
    assert page.locator("input[name=dir]").input_value() == str(out)
    page.locator(".dataset-image[data-name$='_flip.png']").first.wait_for()
    crops = sorted(p.name for p in out.glob("*.png") if not p.stem.endswith("_flip"))
    flips = sorted(p.name for p in out.glob("*_flip.png"))
    assert len(crops) == 3 and flips == [f"{Path(c).stem}_flip.png" for c in crops]
    assert (out / "captions.csv").is_file()
    assert page.locator(".dataset-image").count() == 6
    tasks = daemon.api("GET", "/tasks?kind=dataset")["tasks"]
    assert tasks[0]["subject"] == str(out) and tasks[0]["status"] == "succeeded"
    page.screenshot(path=str(shots / "studio-dataset-build.png"))
    context.close()
    assert [e for e in console.errors if "status of 400" not in e] == []


def test_the_doctor_view_shows_each_check_with_its_fix(browser, daemon, shots) -> None:
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=doctor]")
    page.locator("tr[data-check=python] td.status.ok").wait_for(timeout=60_000)
    kohya = page.locator("tr[data-check^=kohya]").first
    assert kohya.get_attribute("data-status") in ("warn", "fail") and kohya.locator("code").count() == 1
    page.screenshot(path=str(shots / "studio-doctor.png"))
    context.close()
    assert console.errors == []


def test_a_page_is_refined_its_diff_shown_rendered_with_its_provenance_and_written(browser, daemon, shots,
                                                                                  ollama_fake) -> None:
    import json

    prompt_file = daemon.project / "prompts" / "ch-01" / "ch01_p002.txt"
    before = prompt_file.read_text()
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/pages/1/2")
    page.locator("button[data-action=refine]").click()
    box = page.locator("form.refine")
    box.locator("textarea[name=feedback]").fill("make him look left")
    # Ollama without the prompt model: the error and its fix show, nothing changes, nothing is queued.
    ollama_fake.models.pop("llama3.1:8b")
    jobs = len(daemon.api("GET", "/jobs?limit=500")["jobs"])
    box.locator("button[data-action=ask-refine]").click()
    error = box.locator(".refine-error[data-code=ollama_model_missing]")
    error.wait_for()
    assert "ollama pull llama3.1:8b" in error.inner_text() and prompt_file.read_text() == before
    assert len(daemon.api("GET", "/jobs?limit=500")["jobs"]) == jobs
    ollama_fake.reset()
    ollama_fake.answer({"changes": [{"op": "add", "region": "pose", "tag": "looking left"},
                                    {"op": "remove", "region": "appearance", "tag": "white cloak"}],
                        "summary": "he looks left"})
    box.locator("button[data-action=ask-refine]").click()
    box.locator(".tag-diff .tag.added", has_text="looking left").wait_for()
    assert "refused remove “white cloak”" in box.locator(".refused").inner_text()  # a locked trait stays
    assert box.locator(".prompt-after").inner_text().endswith("looking left")
    assert box.locator(".refine-error").count() == 0
    page.screenshot(path=str(shots / "studio-refine.png"))
    box.locator("button[data-action=render-refined]").click()
    page.locator(".thumb[data-version='1'].selected .pic.loaded").wait_for(timeout=120_000)
    entries = json.loads((daemon.project / "output" / "ch-01" / "generation-log.json").read_text())
    entry = next(e for e in entries if e["imageFile"].endswith("ch01_p002_v1.png"))
    assert entry["refinedFrom"]["feedback"] == "make him look left"
    assert entry["refinedFrom"]["refinedPrompt"].endswith("looking left")
    assert prompt_file.read_text() == before  # rendering does not rewrite the page's prompt
    # Written as the page's prompt (the file's text becomes the refined prompt shown).
    ollama_fake.answer({"changes": [{"op": "add", "region": "pose", "tag": "looking left"}], "summary": "left"})
    page.keyboard.press("r")
    page.locator("form.refine textarea[name=feedback]").fill("make him look left")
    page.locator("form.refine button[data-action=ask-refine]").click()
    page.locator("form.refine button[data-action=write-refined]").click()
    page.locator("form.refine button[data-action=write-refined]", has_text="Written").wait_for()
    after = page.locator("form.refine .prompt-after").inner_text()
    assert after.endswith("looking left") and prompt_file.read_text() == after + "\n"
    context.close()
    assert [e for e in console.errors if "status of 503" not in e] == []


def test_caption_proposals_are_proposed_confirmed_edited_rejected_and_the_set_gets_ready(browser, daemon,
                                                                                       tmp_path, shots) -> None:
    from tests.dataset_fixtures import TRIGGER, training_set
    from tests.tiny_tagger import build_tagger

    build_tagger(daemon.root / "models" / "taggers" / "tiny-wd14")  # found when asked: nothing to restart
    folder = tmp_path / "set"
    training_set(folder, 16, captions=False)
    shutil.copyfile(folder / "view_05.png", folder / "view_05_flip.png")  # a flip made earlier
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/dataset/{quote(str(folder), safe='')}")
    page.select_option("select[name=proposer]", "tagger")
    page.locator("button[data-action=propose]").click()
    page.locator(".proposal").first.wait_for()
    assert page.locator(".proposal").count() == 16 and "tiny-wd14" in page.locator(".proposals").inner_text()
    assert page.locator(".check.bad").count() == 1
    for part, words in (("framing", "upper body"), ("pose", "standing"), ("background", "white background")):
        empty = page.locator(f".proposal input[name={part}][value='']")  # what the tagger could not tell
        for i in range(empty.count()):  # the attribute stays '' while typing: the matches do not move
            empty.nth(i).fill(words)
    card = page.locator(".proposal[data-file='view_05.png']")
    card.locator("input[name=pose]").fill("looking back")  # edited, then confirmed
    page.screenshot(path=str(shots / "studio-proposals.png"))
    flip_preview = card.locator(".caption-preview").last.inner_text()
    assert flip_preview.startswith(f"view_05_flip.png: {TRIGGER}, ") and flip_preview.endswith(", mirrored")
    assert ", looking back, " in flip_preview
    card.locator("button[data-action=confirm]").click()
    card.wait_for(state="detached")
    caption = (folder / "view_05.txt").read_text()
    assert caption.startswith(f"{TRIGGER}, ") and ", looking back, " in caption
    assert (folder / "view_05_flip.txt").read_text() == caption.rstrip() + ", mirrored\n"
    page.locator(".proposal[data-file='view_01.png'] button[data-action=reject]").click()
    page.locator(".proposal[data-file='view_01.png']").wait_for(state="detached")
    page.locator(".dataset.grid:not([data-busy])").wait_for()  # the grid redrawn after the change, then typed in
    own = page.locator(".dataset-image[data-name='view_01.png'] textarea")  # the artist's own words instead
    own.fill(f"{TRIGGER}, portrait, sitting, night sky")
    own.press("Enter")
    page.locator(".dataset-image[data-name='view_01.png'] .save-state", has_text="saved").wait_for()
    page.locator("button[data-action=confirm-all]", has_text="Confirm all 14").click()
    page.locator(".check.ok").wait_for()  # `dataset check` finds the set ready to train
    assert page.locator(".proposal").count() == 0
    assert (folder / "view_01.txt").read_text() == f"{TRIGGER}, portrait, sitting, night sky\n"
    assert (folder / "view_05.txt").read_text() == caption  # confirmed once, left alone
    context.close()
    assert console.errors == []


def test_a_pages_render_becomes_a_version_with_the_tab_gone_and_two_renders_make_two(browser, daemon) -> None:
    import time

    raw = daemon.project / "output" / "ch-01" / "raw"
    log = daemon.project / "output" / "ch-01" / "generation-log.json"

    def page2() -> dict[int, dict]:
        return _log_entries(daemon, "ch01_p002") if log.is_file() else {}

    def wait_versions(count: int) -> dict[int, dict]:
        deadline = time.monotonic() + 180
        while len(entries := page2()) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return entries

    def submitted(seed: int) -> None:
        # The daemon has the render (a tiny one may already be over: its card is then gone, so the page's
        # "rendering" card is no sign to wait for).
        deadline = time.monotonic() + 120  # the submit's round trip, on a machine busy with the suite's other workers
        while not any(j["params"].get("seed") == seed for j in _studio_jobs(daemon)):
            assert time.monotonic() < deadline, f"the render with seed {seed} never reached the daemon"
            time.sleep(0.1)

    known = len(page2())  # other tests of the module may have rendered page 2 already
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/pages/1/2")
    page.locator(".page-list a.active").wait_for()
    page.keyboard.press("n")
    page.fill(".new-version input[name=seed]", "31")
    page.click(".new-version button[type=submit]")
    submitted(31)
    page.click("#nav a[data-view=now]")  # away at once: the daemon writes the version, not the tab
    context.close()
    entries = wait_versions(known + 1)
    first = max(entries)
    assert entries[first]["seed"] == 31 and (raw / f"ch01_p002_v{first}.png").is_file()
    assert (raw / f"ch01_p002_v{first}.workflow.json").is_file()

    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/pages/1/2")
    page.locator(f".thumb[data-version='{first}']").wait_for()
    for seed in ("41", "42"):  # two renders in a row: two versions
        page.keyboard.press("n")
        page.fill(".new-version input[name=seed]", seed)
        page.click(".new-version button[type=submit]")
        submitted(int(seed))
    entries = wait_versions(known + 3)
    assert sorted(e["seed"] for v, e in entries.items() if v > first) == [41, 42]
    page.locator(f".thumb[data-version='{first + 2}']").wait_for(timeout=60_000)  # shown here as they finish
    context.close()
    assert console.errors == []


# -- the studio, dependable (issue 25): Generate remembers, compare holds, messages for people, narrow,
# accessible. These run after the tests above (they add versions to page 1 of the example chapter).

def _studio_jobs(daemon: Daemon) -> list[dict]:
    return daemon.api("GET", "/jobs?source=studio&limit=200")["jobs"]


def test_generates_gallery_form_and_live_previews_survive_a_reload(browser, daemon) -> None:
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=generate]")
    page.fill("textarea[name=prompt]", "spyke_plasma_v1, gallery, slow")
    page.fill("input[name=width]", "128")
    page.fill("input[name=height]", "192")
    page.fill("input[name=steps]", "150")
    page.locator("textarea[name=prompt]").press("Control+Enter")  # submits from the keyboard
    card = page.locator(".gallery .job.latest")
    card.locator(".pic.preview img").wait_for(timeout=120_000)  # its live preview while it runs
    job_id = card.get_attribute("data-job-id")
    assert daemon.api("GET", f"/jobs/{job_id}")["source"] == "studio"
    # Another view and back, then a reload: the form and the gallery are as they were.
    page.click("#nav a[data-view=now]")
    page.locator(".tiles").wait_for()
    page.click("#nav a[data-view=generate]")
    assert page.input_value("textarea[name=prompt]") == "spyke_plasma_v1, gallery, slow"
    page.reload()
    page.wait_for_selector("#live[data-state=live]")
    kept = page.locator(f".gallery .job[data-job-id='{job_id}']")
    kept.wait_for()
    assert page.input_value("textarea[name=prompt]") == "spyke_plasma_v1, gallery, slow"
    assert (page.input_value("input[name=width]"), page.input_value("input[name=steps]")) == ("128", "150")
    kept.locator(".pic.preview img").wait_for(timeout=60_000)  # the previews go on after the reload
    kept.locator("button", has_text="Cancel").click()
    kept.locator(".badge.cancelled").wait_for(timeout=60_000)
    # A job another client submitted is not this view's: never in its gallery, live or after a reload.
    other = daemon.api("POST", "/jobs", {"prompt": "not from the studio", "resolution": {"width": 64, "height": 64}})
    daemon.wait_job(other["id"], {"succeeded"})
    page.click("#nav a[data-view=now]")
    page.locator(f".job[data-job-id='{other['id']}'][data-status=succeeded]").wait_for()
    page.click("#nav a[data-view=generate]")
    page.locator(f".gallery .job[data-job-id='{job_id}']").wait_for()
    assert page.locator(f".gallery .job[data-job-id='{other['id']}']").count() == 0
    context.close()
    assert console.errors == []


def test_a_result_is_retried_varied_redrawn_upscaled_saved_to_a_page_and_its_workflow_opened(browser, daemon,
                                                                                           shots) -> None:
    import json

    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/generate")
    page.fill("textarea[name=prompt]", "spyke_plasma_v1, actions")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "96")
    page.fill("input[name=steps]", "4")
    page.click("form.generate button[type=submit]")
    card = page.locator(".gallery .job.latest[data-status=succeeded]")
    card.wait_for(timeout=120_000)
    job_id = card.get_attribute("data-job-id")

    def latest(previous: str) -> dict:
        page.wait_for_function("(id) => { const c = document.querySelector('.gallery .job.latest'); "
                               "return c && c.dataset.jobId !== id; }", arg=previous)
        return daemon.api("GET", f"/jobs/{page.locator('.gallery .job.latest').get_attribute('data-job-id')}")

    card.locator("button[data-action=retry]").click()
    retried = latest(job_id)
    assert retried["retryOf"] == job_id and retried["params"]["seed"] == daemon.api("GET", f"/jobs/{job_id}")["params"]["seed"]

    page.locator(f".gallery .job[data-job-id='{job_id}'] button[data-action=variations]").click()
    varied = latest(retried["id"])
    group = daemon.api("GET", f"/groups/{varied['groupId']}")
    assert len(group["jobs"]) == 4 and all(j["params"]["prompt"] == "spyke_plasma_v1, actions" for j in group["jobs"])
    assert len({j["params"]["seed"] for j in group["jobs"]}) == 4

    own = page.locator(f".gallery .job[data-job-id='{job_id}']")
    own.locator("button[data-action=more-like]").click()
    own.locator("input[name=denoise]").fill("0.3")
    own.locator("button[data-action=more-like-go]").click()
    redrawn = latest(varied["id"])
    assert redrawn["params"]["initJobId"] == job_id and redrawn["params"]["denoise"] == 0.3

    own.locator("button[data-action=upscale]").click()
    assert own.locator("select[name=upscaleModel]").input_value() == TINY_UPSCALER
    own.locator("button[data-action=upscale-go]").click()
    printed = latest(redrawn["id"])
    assert printed["params"]["initJobId"] == job_id and printed["params"]["upscaleModel"] == TINY_UPSCALER
    daemon.wait_job(printed["id"], {"succeeded"})

    own.locator("button[data-action=save-to-page]").click()
    own.locator("select[name=page] option").first.wait_for(state="attached")
    own.locator("select[name=chapter]").select_option("1")
    own.locator("select[name=page]").select_option("2")
    own.locator("button[data-action=save-go]").click()
    own.locator(".result-panel", has_text="Saved as v").wait_for()
    entries = json.loads((daemon.project / "output" / "ch-01" / "generation-log.json").read_text())
    saved = [e for e in entries if e.get("jobId") == job_id]
    assert len(saved) == 1 and saved[0]["imageFile"].startswith("output/ch-01/raw/ch01_p002_v"), saved

    with context.expect_page() as opened:
        own.locator("button[data-action=workflow]").click()
    tab = opened.value
    tab.wait_for_load_state()
    workflow = json.loads(tab.locator("body").inner_text())
    assert workflow == daemon.api("GET", f"/jobs/{job_id}")["workflow"]
    for job in group["jobs"]:
        daemon.wait_job(job["id"], {"succeeded"})
    page.evaluate("() => { window.scrollTo(0, 0); document.getElementById('toasts').replaceChildren(); }")
    page.screenshot(path=str(shots / "studio-generate.png"))
    context.close()
    assert console.errors == []


def test_compare_never_shows_one_version_twice_and_its_keys_leave_the_controls_alone(browser, daemon,
                                                                                      shots) -> None:
    log = daemon.project / "output" / "ch-01" / "generation-log.json"
    context, page, console = signed_in(browser, daemon)
    page.goto(f"{daemon.url}/#/pages/1/1/1")
    page.locator(".thumb[data-version='1'].selected").wait_for()
    page.select_option("select[aria-label='compare with']", "2")
    page.locator(".segmented button", has_text="Overlay").click()
    slider = page.locator(".viewer.overlay input[type=range]")
    # The viewer fits the laptop's window: the slider is on screen without scrolling.
    page.evaluate("() => window.scrollTo(0, 0)")
    box = slider.bounding_box()
    assert box is not None and box["y"] + box["height"] <= DESKTOP["height"], box
    # Arrows on the focused slider move it; they do not switch versions.
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert slider.input_value() == "52"
    assert page.locator(".thumb.selected").get_attribute("data-version") == "1"
    before = log.read_text()
    page.locator("select[aria-label='compare with']").focus()
    page.keyboard.press("a")  # a select has the key: nothing approved
    assert log.read_text() == before and page.locator(".thumb.selected").get_attribute("data-version") == "1"
    # From the page (no control focused), → shows v2, which was the compared one: the two swap.
    page.evaluate("() => document.activeElement.blur()")
    page.keyboard.press("ArrowRight")
    page.locator(".thumb[data-version='2'].selected").wait_for()
    assert page.locator(".overlay figcaption").inner_text() == "left v2 · right v1"
    page.keyboard.press("o")  # side by side: still two different versions
    captions = page.locator(".viewer.side figure figcaption").all_inner_texts()
    assert len(captions) == 2 and captions[0] != captions[1], captions
    page.screenshot(path=str(shots / "studio-pages-compare.png"))
    context.close()
    assert console.errors == []


def test_every_error_code_reads_as_a_sentence_without_paths_routes_or_flags(browser, daemon, tmp_path) -> None:
    import inspect

    import sidecar.errors as errors

    # Every code the studio can meet (all but the start-up refusals of `serve` and launchd's, which only
    # the terminal sees) has its own sentence.
    codes = {cls.code for _, cls in inspect.getmembers(errors, inspect.isclass)
             if issubclass(cls, errors.SidecarError) and cls.__module__ != "sidecar.errors.startup"
             and not cls.code.startswith("launch")}
    context, page, console = signed_in(browser, daemon)
    said = page.evaluate("""async (codes) => {
        const m = await import('/studio/static/messages.js');
        return Object.fromEntries(codes.map((c) => [c, m.explain({ code: c, status: 400, details: { field: 'x' },
          message: 'Run `sidecar loras resume` --name x: POST /loras/abc/resume continues it (/tmp/x/.check-1).' })]));
    }""", sorted(codes | {"interrupted", "daemon_offline"}))
    missing = sorted(c for c in codes if c not in page.evaluate(
        "async () => (await import('/studio/static/messages.js')).KNOWN_CODES"))
    assert missing == []
    for code, out in said.items():
        assert out["text"] and not any(bad in out["text"] for bad in ("POST ", "/tmp", "--", ".check-")), (code, out)
    assert "Resume continues it" in said["interrupted"]["text"]
    # A pose that is not an image: the sentence and nothing of the daemon's temporary file.
    bad = tmp_path / "pose.png"
    bad.write_text("not an image")
    page.click("#nav a[data-view=generate]")
    page.set_input_files("input[name=pose]", str(bad))
    toast = page.locator("#toasts .toast.error").first
    toast.wait_for()
    assert "cannot be used as a pose image" in toast.inner_text() and "/" not in toast.inner_text()
    # A sign-in link opened twice: a page that says what to do, not JSON.
    url = daemon.login_url()
    first = context.new_page()
    first.goto(url)
    first.wait_for_url(f"{daemon.url}/")
    again = context.new_page()
    answer = again.goto(url)
    assert answer is not None and answer.status == 401
    assert again.locator("h1").inner_text() == "This sign-in link has been used"
    assert "sidecar studio" in again.inner_text("body") and "{" not in again.inner_text("body")
    context.close()
    assert [e for e in console.errors if "status of 400" not in e] == []


VIEWS = {"now": ".tiles", "generate": ".gallery .job, .gallery .empty", "pages": ".page-main .section-head",
         "loras": ".run, .empty-runs", "dataset": ".dataset-image", "doctor": "tr[data-check]"}


def test_the_gate_s_findings_then_a_preset_run_s_samples_per_checkpoint_and_beside_the_sweep(
        browser, daemon, tmp_path, shots) -> None:
    from axe_playwright_python.sync_playwright import Axe

    from tests.training_fixtures import make_dataset

    folder = make_dataset(tmp_path / "samples")
    context, page, console = signed_in(browser, daemon)
    page.click("#nav a[data-view=loras]")
    form = page.locator("form.train")
    for name, value in (("datasetDir", str(folder)), ("outputName", "spyke_samples"), ("steps", "4"),
                        ("saveEveryNSteps", "2"), ("resolution", "64"), ("networkDim", "4"), ("networkAlpha", "2")):
        form.locator(f"input[name={name}]").fill(value)
    form.locator("select[name=engine]").select_option("embedded")
    form.locator("select[name=preset]").select_option("character")
    form.locator("button[type=submit]").click()
    # Three 64 px images: the gate lists what to fix, each with its file and fix; nothing starts.
    findings = form.locator(".gate-findings")
    findings.wait_for()
    assert findings.locator("li[data-check=count]").inner_text().startswith("count: 3 source images")
    assert "img00.png" in findings.locator("li[data-check=size]").first.inner_text()
    assert "Fix: replace it with a larger image" in findings.inner_text()
    assert not [r for r in daemon.api("GET", "/loras/runs?limit=50")["runs"] if r["outputName"] == "spyke_samples"]
    found = [v for v in Axe().run(page).response["violations"] if v["impact"] in ("serious", "critical")]
    assert found == [], found
    form.locator("input[name=force]").check()
    form.locator("button[type=submit]").click()
    findings.wait_for(state="detached")
    card = page.locator(".run[data-run-id]", has=page.locator("strong", has_text="spyke_samples")).first
    card.locator(".badge.succeeded").wait_for(timeout=240_000)
    run = daemon.api("GET", f"/loras/{card.get_attribute('data-run-id')}/status")
    assert run["params"]["preset"] == "character" and run["params"]["force"] is True
    prompts = run["params"]["samplePrompts"]
    assert len(prompts) == 3 and all(p.startswith("spyke_plasma_v1, ") for p in prompts)
    # Each checkpoint shows the samples the trainer drew at its step; a click shows one whole.
    strip = card.locator(".checkpoints li[data-step='2']:not([data-final]) .samples .sample-thumb")
    assert strip.count() == 3
    page.wait_for_function("(sel) => [...document.querySelectorAll(sel)].every((i) => i.naturalWidth === 64)",
                           arg=f".run[data-run-id='{run['id']}'] .checkpoints .sample-thumb img")
    strip.nth(1).click()
    viewer = page.locator("dialog#sample-viewer[open]")
    viewer.wait_for()
    assert prompts[1] in viewer.inner_text() and "step 2" in viewer.inner_text()
    page.wait_for_function("() => document.querySelector('dialog#sample-viewer img').naturalWidth === 64")
    found = [v for v in Axe().run(page).response["violations"] if v["impact"] in ("serious", "critical")]
    assert found == [], found
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('dialog#sample-viewer').open")
    # Beside the sweep: prompts down, checkpoints across; Pick promotes that checkpoint.
    grid = card.locator(".sample-grid")
    assert grid.locator("tbody tr").count() == 3 and grid.locator("thead th[data-step]").count() == 2
    page.set_viewport_size({"width": DESKTOP["width"], "height": 1400})
    card.scroll_into_view_if_needed()
    card.screenshot(path=str(shots / "studio-loras-samples.png"))
    grid.locator("thead th[data-step='2'] button", has_text="Pick").click()
    page.locator("#toasts", has_text="installed as spyke_samples").wait_for()
    assert (daemon.root / "models" / "loras" / "spyke_samples.safetensors").is_file()
    context.close()
    assert [e for e in console.errors if "status of 400" not in e] == []  # the gate's refusal


def _each_view(page, daemon: Daemon, folder: Path):
    for view, ready in VIEWS.items():
        target = f"#/dataset/{quote(str(folder), safe='')}" if view == "dataset" else f"#/{view}"
        page.goto(f"{daemon.url}/{target}")
        page.locator(ready).first.wait_for(timeout=60_000)
        yield view


def test_every_view_fits_a_narrow_window_and_generate_shows_its_result(browser, daemon, tmp_path, shots) -> None:
    from tests.training_fixtures import make_dataset

    folder = make_dataset(tmp_path / "narrow")
    context, page, console = signed_in(browser, daemon, NARROW)
    page.click("#theme")
    for view in _each_view(page, daemon, folder):
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= NARROW["width"], f"the {view} view scrolls sideways: {width} px"
        tab = page.locator(f"#nav a[data-view={view}]").bounding_box()
        assert tab is not None and tab["x"] >= 0 and tab["x"] + tab["width"] <= NARROW["width"], (view, tab)
    page.goto(f"{daemon.url}/#/now")
    page.locator(".tiles").wait_for()
    page.screenshot(path=str(shots / "studio-narrow-light.png"))
    page.goto(f"{daemon.url}/#/generate")
    page.fill("textarea[name=prompt]", "spyke_plasma_v1, narrow")
    page.fill("input[name=width]", "64")
    page.fill("input[name=height]", "96")
    page.click("form.generate button[type=submit]")
    latest = page.locator(".gallery .job.latest")
    latest.wait_for()
    page.wait_for_function("() => { const r = document.querySelector('.gallery .job.latest').getBoundingClientRect(); "
                           "return r.top < innerHeight && r.bottom > 0; }")  # in view, without scrolling by hand
    latest.locator("[data-status=succeeded], .badge.succeeded").first.wait_for(timeout=120_000)
    # "… s ago" keeps telling the truth while the page stays open.
    said = latest.locator("time.ago").inner_text()
    page.wait_for_function("([sel, said]) => document.querySelector(sel).textContent !== said",
                           arg=[".gallery .job.latest time.ago", said])
    context.close()
    assert console.errors == []


def test_an_axe_scan_of_every_view_in_both_themes_finds_nothing_serious(browser, daemon, tmp_path) -> None:
    from axe_playwright_python.sync_playwright import Axe

    from tests.training_fixtures import make_dataset

    folder = make_dataset(tmp_path / "axe")
    axe = Axe()
    context, page, console = signed_in(browser, daemon)
    page.emulate_media(reduced_motion="reduce")  # no fades: contrast is measured on the page as it settles
    found = {}
    for theme in ("dark", "light"):
        if page.evaluate("() => document.documentElement.dataset.theme") != theme:
            page.click("#theme")
        for view in _each_view(page, daemon, folder):
            violations = axe.run(page).response["violations"]
            bad = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:4]}" for v in violations
                   if v["impact"] in ("serious", "critical")]
            if bad:
                found[f"{view}/{theme}"] = bad
    assert found == {}
    # The focus is always visible: every control reached with Tab draws an outline.
    page.goto(f"{daemon.url}/#/generate")
    page.locator("form.generate").wait_for()
    styles = []
    for _ in range(12):
        page.keyboard.press("Tab")
        styles.append(page.evaluate("() => { const el = document.activeElement, s = getComputedStyle(el); "
                                    "return [el.tagName + (el.name ? '[' + el.name + ']' : ''), s.outlineStyle, s.outlineWidth]; }"))
    assert [s for s in styles if s[1] == "none" or s[2] == "0px"] == [], styles
    context.close()
    assert console.errors == []

"""The studio's routes through the real app (scripted backend): the page and its files, the one-time login
and its cookie at the edge, the project's pages and versions (approve and publish write what `generate`
writes), a training folder's captions, findings and flips, pose uploads, the doctor's report."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.config import Settings
from sidecar.studio.session import COOKIE_NAME, LoginCodes, Sessions
from tests.training_fixtures import CAPTIONS, make_dataset

TOKEN = "studio-api-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def error_of(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The example chapter with two versions of page 1, as `generate` leaves them."""
    root = tmp_path / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), root)
    raw = root / "output" / "ch-01" / "raw"
    raw.mkdir(parents=True)
    entries = []
    for version in (1, 2):
        Image.new("RGB", (64, 96), (40 * version, 80, 120)).save(raw / f"ch01_p001_v{version}.png")
        (raw / f"ch01_p001_v{version}.workflow.json").write_text(json.dumps({"3": {"class_type": "KSampler",
                                                                                     "inputs": {"seed": version}}}))
        entries.append({"imageFile": f"output/ch-01/raw/ch01_p001_v{version}.png",
                        "promptFile": "prompts/ch-01/ch01_p001.txt", "promptHash": "x", "model": "m",
                        "timestamp": "2026-01-01T00:00:00.000Z", "version": version, "approved": False, "seed": version,
                        "workflowFile": f"output/ch-01/raw/ch01_p001_v{version}.workflow.json",
                        "width": 64, "height": 96, "olderPipelineField": "kept"})
    (root / "output" / "ch-01" / "generation-log.json").write_text(json.dumps(entries, indent=2) + "\n")
    return root


@pytest.fixture
def settings(tmp_path: Path, project: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project, token=TOKEN)


# -- the page, its files and the login ------------------------------------------------------------
async def test_the_page_and_its_files_need_no_token_but_the_api_does(client) -> None:
    page = await client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert '<script type="module" src="/studio/static/app.js">' in await page.text()
    script = await client.get("/studio/static/app.js")
    assert script.status == 200 and script.content_type == "text/javascript"
    assert (await error_of(await client.get("/studio/static/nothing.js"), 404))["code"] == "not_found"
    for path in ("/studio/static/%2e%2e/__init__.py", "/studio/static/..%2f..%2fconfig.py", "/studio/static/../api.py"):
        resp = await client.get(path)  # never a file outside static/, whatever the spelling
        assert resp.status in (401, 404) and (await resp.json())["error"]["code"] in ("not_found", "unauthorized")
    for path in ("/studio/config", "/project", "/doctor", "/jobs"):
        assert (await error_of(await client.get(path), 401))["code"] == "unauthorized"
    assert (await error_of(await client.post("/studio/login"), 401))["code"] == "unauthorized"


async def login_cookie(client) -> str:
    issued = await client.post("/studio/login", headers=AUTH)
    assert issued.status == 201
    path = (await issued.json())["path"]
    resp = await client.get(path, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/"
    cookie = resp.headers["Set-Cookie"]
    for part in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"):
        assert part in cookie
    again = await client.get(path, allow_redirects=False)  # one use
    assert (await error_of(again, 401))["code"] == "unauthorized"
    return cookie.split(";", 1)[0]


async def test_the_login_cookie_opens_the_api_and_its_events_to_the_studio_only(client) -> None:
    cookie = await login_cookie(client)
    client.session.cookie_jar.clear()  # the test client keeps cookies: each request below names its own
    assert TOKEN not in cookie and cookie.startswith(f"{COOKIE_NAME}=")
    assert cookie != await login_cookie(client)  # a random session per sign-in, nothing derived from the token
    client.session.cookie_jar.clear()
    own = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{client.port}", "Sec-Fetch-Site": "same-origin"}
    assert (await client.get("/studio/config", headers=own)).status == 200
    assert (await client.post("/jobs", json={"prompt": "spyke_plasma_v1"}, headers=own)).status == 202
    ws = await client.ws_connect("/events", headers=own)
    await ws.close()
    # Another port of 127.0.0.1 is the same site: the browser sends it the cookie; its Origin is refused.
    other = {**own, "Origin": "http://127.0.0.1:5173", "Sec-Fetch-Site": "same-site"}
    assert (await error_of(await client.get("/jobs", headers=other), 403))["code"] == "origin_not_allowed"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/events", headers=other)
    assert refused.value.status == 403
    # An <img> or a link on another page sends no Origin; its fetch metadata says where it comes from.
    for site in ("same-site", "cross-site"):
        embedded = {"Cookie": cookie, "Sec-Fetch-Site": site}
        assert (await error_of(await client.get("/jobs", headers=embedded), 401))["code"] == "unauthorized"
    # A browser that sends no fetch metadata: the cookie counts only with the daemon's own Origin.
    assert (await error_of(await client.get("/jobs", headers={"Cookie": cookie}), 401))["code"] == "unauthorized"
    bare_own = {"Cookie": cookie, "Origin": f"http://127.0.0.1:{client.port}"}
    assert (await client.get("/jobs", headers=bare_own)).status == 200
    forged = {"Cookie": f"{COOKIE_NAME}=not-a-session", "Sec-Fetch-Site": "same-origin"}
    assert (await error_of(await client.get("/jobs", headers=forged), 401))["code"] == "unauthorized"
    assert (await error_of(await client.get("/studio/login/not-a-code", allow_redirects=False), 401))["code"] == \
        "unauthorized"


async def test_a_spent_login_link_shows_a_browser_what_to_do_and_an_api_client_its_error(client) -> None:
    path = (await (await client.post("/studio/login", headers=AUTH)).json())["path"]
    assert (await client.get(path, allow_redirects=False)).status == 303
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    again = await client.get(path, headers=browser, allow_redirects=False)
    assert again.status == 401 and again.content_type == "text/html"
    text = await again.text()
    assert "This sign-in link has been used" in text and "<code>sidecar studio</code>" in text
    assert "frame-ancestors 'none'" in again.headers["Content-Security-Policy"]
    assert (await error_of(await client.get(path, allow_redirects=False), 401))["code"] == "unauthorized"


async def test_signing_out_ends_the_session_and_clears_the_cookie(client) -> None:
    cookie = await login_cookie(client)
    kept = await login_cookie(client)  # another browser's session
    client.session.cookie_jar.clear()
    own = {"Origin": f"http://127.0.0.1:{client.port}", "Sec-Fetch-Site": "same-origin"}
    config = await (await client.get("/studio/config", headers={**own, "Cookie": cookie})).json()
    assert config["signedIn"] is True
    assert (await (await client.get("/studio/config", headers=AUTH)).json())["signedIn"] is False
    out = await client.post("/studio/logout", headers={**own, "Cookie": cookie})
    assert out.status == 204 and "Max-Age=0" in out.headers["Set-Cookie"]
    assert (await error_of(await client.get("/jobs", headers={**own, "Cookie": cookie}), 401))["code"] == \
        "unauthorized"
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/events", headers={**own, "Cookie": cookie})
    assert (await client.get("/jobs", headers={**own, "Cookie": kept})).status == 200
    # Signing out needs a session or the token, as every route does.
    assert (await error_of(await client.post("/studio/logout", headers=own), 401))["code"] == "unauthorized"


def test_a_session_expires_and_holds_only_under_the_token_it_was_opened_with() -> None:
    now = [1000.0]
    sessions = Sessions(ttl=60.0, clock=lambda: now[0])
    one = sessions.open(b"token-one-0123456789")
    assert sessions.valid(one, b"token-one-0123456789")
    assert not sessions.valid(one, b"token-two-0123456789")  # a changed token ends it
    assert not sessions.valid(one, b"token-one-0123456789")  # and for good
    two = sessions.open(b"token-one-0123456789")
    now[0] += 59.0
    assert sessions.valid(two, b"token-one-0123456789")
    now[0] += 1.0
    assert not sessions.valid(two, b"token-one-0123456789")
    three = sessions.open(b"token-one-0123456789")
    assert sessions.close(three) and not sessions.valid(three, b"token-one-0123456789") and not sessions.close(three)


def test_a_session_outlives_a_restart_and_the_file_keeps_no_id(tmp_path) -> None:
    """The studio left open reconnects after a restart of the daemon: its session is kept in the data dir,
    as a digest only (a copy of the file opens nothing); a restart with another token still ends it."""
    kept = tmp_path / "data" / "studio-sessions.json"
    one = Sessions(path=kept).open(b"token-one-0123456789")
    text = kept.read_text()
    assert one not in text and "token-one" not in text and oct(kept.stat().st_mode & 0o777) == "0o600"
    assert Sessions(path=kept).valid(one, b"token-one-0123456789")  # the next daemon's
    assert not Sessions(path=kept).valid(one, b"token-two-0123456789")
    assert not Sessions(path=kept).valid(one, b"token-one-0123456789")  # ended for good, on disk too
    two = Sessions(path=kept).open(b"token-one-0123456789")
    assert Sessions(path=kept).close(two) and not Sessions(path=kept).valid(two, b"token-one-0123456789")
    kept.write_text("not json")
    assert not Sessions(path=kept).valid(two, b"token-one-0123456789")  # unreadable: sign in again


def test_a_login_code_expires_and_serves_once() -> None:
    codes = LoginCodes(ttl=0.0)
    assert not codes.redeem(codes.issue())
    codes = LoginCodes()
    code = codes.issue()
    assert codes.redeem(code) and not codes.redeem(code) and not codes.redeem("guess")


async def test_the_config_gives_the_forms_the_profiles_limits(client) -> None:
    config = await (await client.get("/studio/config", headers=AUTH)).json()
    assert config["profile"] | {"description": ""} == {
        "name": "m1pro-16gb", "description": "", "maxWidth": 512, "maxHeight": 768, "multipleOf": 8, "maxBatch": 1,
        "maxLoras": 3, "families": {"sd15": {"maxWidth": 512, "maxHeight": 768, "maxPixels": None, "defaultWidth": 512,
                                             "defaultHeight": 768, "sizes": [[512, 768], [512, 512], [512, 640]]}}}
    assert config["limits"]["steps"] == {"min": 1, "max": 150}
    assert config["limits"]["controlnetStrength"] == {"min": 0.4, "max": 0.9}
    assert "euler_ancestral" in config["samplers"] and config["projectRoot"].endswith("project")
    assert config["defaultWhere"] == "local" and list(config["profiles"]) == ["m1pro-16gb"]
    assert config["profiles"]["m1pro-16gb"] == config["profile"]


async def test_a_gpu_profile_s_families_offer_their_own_sizes(aiohttp_client, tmp_path) -> None:
    from sidecar.api.studio import limits_of
    from sidecar.profiles import get_profile

    gpu = limits_of(get_profile("cuda-24gb")).model_dump(by_alias=True)
    assert list(gpu["families"]) == ["sd15", "sdxl", "flux"] and gpu["maxLoras"] == 3
    sdxl = gpu["families"]["sdxl"]
    assert (sdxl["defaultWidth"], sdxl["defaultHeight"], sdxl["maxPixels"]) == (832, 1216, 1024 * 1024)
    assert sdxl["sizes"][0] == (832, 1216) and (1216, 832) in sdxl["sizes"] and (1024, 1024) in sdxl["sizes"]
    assert all(w * h <= 1024 * 1024 for w, h in sdxl["sizes"])  # the profile's own rule (Profile.fits)
    assert gpu["families"]["flux"]["sizes"][0] == (1024, 1024)
    assert all(w <= 1024 and h <= 1024 for w, h in gpu["families"]["flux"]["sizes"])


# -- the project's pages ----------------------------------------------------------------------------
async def test_the_project_lists_chapters_pages_versions_and_what_generate_would_send(client, project) -> None:
    view = await (await client.get("/project", headers=AUTH)).json()
    [chapter] = view["chapters"]
    pages = {p["name"]: p for p in chapter["pages"]}
    assert set(pages) == {"ch01_p001", "ch01_p002"} and chapter["logError"] is None
    one = pages["ch01_p001"]
    assert [v["version"] for v in one["versions"]] == [1, 2]
    assert one["request"]["seed"] == 1234 and one["request"]["loraId"] == "spyke_plasma_v1"
    assert one["versions"][0]["entry"]["olderPipelineField"] == "kept"
    image = await client.get(one["versions"][1]["imageUrl"], headers=AUTH)
    with Image.open(io.BytesIO(await image.read())) as img:
        assert img.size == (64, 96)
    workflow = await (await client.get(one["versions"][0]["workflowUrl"], headers=AUTH)).json()
    assert workflow["3"]["inputs"]["seed"] == 1
    missing = await client.get("/project/pages/1/1/versions/9/image", headers=AUTH)
    assert (await error_of(missing, 404))["code"] == "version_not_found"
    assert (await error_of(await client.get("/project/pages/x/1/versions/1/image", headers=AUTH), 400))["code"] == \
        "invalid_field"


async def test_approving_a_version_updates_the_log_as_generate_approve_does(client, project) -> None:
    log = project / "output" / "ch-01" / "generation-log.json"
    before = json.loads(log.read_text())
    page = await (await client.post("/project/pages/1/1/versions/2/approve?by=studio", headers=AUTH)).json()
    assert [v["approved"] for v in page["versions"]] == [False, True]
    after = json.loads(log.read_text())
    change = after[1]["approvalChanges"][0]
    assert after[0] == before[0] and after[1] == {**before[1], "approved": True, "approvalChanges": [change]}
    assert (change["approved"], change["by"]) == (True, "studio") and change["at"].endswith("Z")
    # Approving v1 takes it from v2 (one pick per page); unapproving v1 leaves none, each change logged.
    page = await (await client.post("/project/pages/1/1/versions/1/approve", headers=AUTH)).json()
    assert [v["approved"] for v in page["versions"]] == [True, False]
    page = await (await client.post("/project/pages/1/1/versions/1/unapprove?by=studio", headers=AUTH)).json()
    assert [v["approved"] for v in page["versions"]] == [False, False]
    after = json.loads(log.read_text())
    assert [(c["approved"], c["by"]) for c in after[0]["approvalChanges"]] == [(True, "api"), (False, "studio")]
    assert [(c["approved"], c["by"]) for c in after[1]["approvalChanges"]] == [(True, "studio"), (False, "api")]
    bad = await client.post("/project/pages/1/1/versions/1/approve?by=Someone%20Else", headers=AUTH)
    assert (await error_of(bad, 400))["code"] == "invalid_field"
    gone = await client.post("/project/pages/1/1/versions/7/approve", headers=AUTH)
    assert (await error_of(gone, 404))["code"] == "version_not_found"
    log.write_text('[{"imageFile": ')  # torn: shown, never rewritten
    torn = await client.post("/project/pages/1/1/versions/1/approve", headers=AUTH)
    assert (await error_of(torn, 409))["code"] == "generation_log_invalid"
    assert log.read_text() == '[{"imageFile": '
    view = await (await client.get("/project", headers=AUTH)).json()
    assert "not valid JSON" in view["chapters"][0]["logError"]


async def test_a_finished_job_is_published_as_the_next_version_with_its_log_entry(client, project) -> None:
    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1, again", "seed": 99,
                                                  "resolution": {"width": 64, "height": 96}}, headers=AUTH)).json()
    early = await client.post("/project/pages/1/1/versions", json={"jobId": job["id"]}, headers=AUTH)
    assert (await error_of(early, 409))["code"] in ("job_not_finished",)
    for _ in range(200):
        if (await (await client.get(f"/jobs/{job['id']}", headers=AUTH)).json())["status"] == "succeeded":
            break
        await asyncio.sleep(0.02)
    done = await client.post("/project/pages/1/1/versions", json={"jobId": job["id"], "reproduces": 1}, headers=AUTH)
    assert done.status == 201, await done.text()
    body = await done.json()
    assert body["version"] == 3 and [v["version"] for v in body["page"]["versions"]] == [1, 2, 3]
    raw = project / "output" / "ch-01" / "raw"
    assert (raw / "ch01_p001_v3.png").is_file() and (raw / "ch01_p001_v3.workflow.json").is_file()
    entry = json.loads((project / "output" / "ch-01" / "generation-log.json").read_text())[-1]
    assert (entry["version"], entry["jobId"], entry["seed"]) == (3, job["id"], 99)
    assert entry["reproducedFrom"] == "output/ch-01/raw/ch01_p001_v1.workflow.json"
    assert entry["promptFile"] == "prompts/ch-01/ch01_p001.txt"
    unknown = await client.post("/project/pages/1/1/versions", json={"jobId": "nope"}, headers=AUTH)
    assert (await error_of(unknown, 404))["code"] == "job_not_found"


async def test_an_img2img_job_published_as_a_version_logs_where_it_started(client, project) -> None:
    start = project / "output" / "ch-01" / "raw" / "ch01_p001_v2.png"
    job = await (await client.post("/jobs", json={"prompt": "spyke_plasma_v1, again", "seed": 7, "denoise": 0.4,
                                                  "initImagePath": str(start),
                                                  "resolution": {"width": 64, "height": 96}}, headers=AUTH)).json()
    assert "id" in job, job
    for _ in range(200):
        if (await (await client.get(f"/jobs/{job['id']}", headers=AUTH)).json())["status"] == "succeeded":
            break
        await asyncio.sleep(0.02)
    done = await client.post("/project/pages/1/1/versions", json={"jobId": job["id"]}, headers=AUTH)
    assert done.status == 201, await done.text()
    entry = json.loads((project / "output" / "ch-01" / "generation-log.json").read_text())[-1]
    assert (entry["jobId"], entry["initImage"], entry["denoise"]) == (job["id"], "output/ch-01/raw/ch01_p001_v2.png",
                                                                      0.4)


async def test_without_a_project_the_pages_say_how_to_name_one(aiohttp_client, tmp_path, backend) -> None:
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "d", engine="embedded"), backend))
    assert (await error_of(await client.get("/project"), 404))["code"] == "project_not_configured"


# -- a training folder ------------------------------------------------------------------------------
async def test_a_dataset_shows_captions_and_findings_and_takes_caption_edits_and_flips(client, tmp_path) -> None:
    folder = make_dataset(tmp_path / "spyke", [*CAPTIONS[:2], "a cat, portrait, smiling, white background"])
    (folder / "img01.txt").unlink()
    q = f"/dataset?dir={folder}"
    data = await (await client.get(q, headers=AUTH)).json()
    assert [(i["name"], i["caption"]) for i in data["images"]] == [
        ("img00.png", CAPTIONS[0]), ("img01.png", None), ("img02.png", "a cat, portrait, smiling, white background")]
    by_check = {(f["check"], f["file"]) for f in data["findings"]}
    assert {("captions", "img01.png"), ("trigger", "img02.png"), ("count", None)} <= by_check and not data["ok"]

    edit = await client.put("/dataset/caption", headers=AUTH, json={
        "dir": str(folder), "name": "img02.png", "caption": "spyke_plasma_v1, portrait, smiling, white background"})
    assert edit.status == 200 and (await edit.json())["caption"].startswith("spyke_plasma_v1")
    assert (folder / "img02.txt").read_text() == "spyke_plasma_v1, portrait, smiling, white background\n"
    for bad in ({"name": "../img00.png"}, {"name": "nothing.png"}):
        resp = await client.put("/dataset/caption", headers=AUTH, json={"dir": str(folder), "caption": "x", **bad})
        assert (await error_of(resp, 400))["code"] == "dataset_invalid"
    two_lines = await client.put("/dataset/caption", headers=AUTH,
                                 json={"dir": str(folder), "name": "img00.png", "caption": "a\nb"})
    assert (await error_of(two_lines, 400))["code"] == "invalid_field"

    flipped = await (await client.post("/dataset/flip", headers=AUTH,
                                       json={"dir": str(folder), "names": ["img00.png"]})).json()
    assert flipped["written"] == ["img00_flip.png"]
    assert (folder / "img00_flip.txt").read_text().strip() == f"{CAPTIONS[0]}, mirrored"
    image = await client.get(f"/dataset/image?dir={folder}&name=img00_flip.png", headers=AUTH)
    assert image.status == 200
    relative = await client.get("/dataset?dir=spyke", headers=AUTH)
    assert (await error_of(relative, 400))["code"] == "dataset_invalid"


# -- pose uploads and the doctor --------------------------------------------------------------------
async def test_a_pose_picked_in_the_browser_is_kept_and_usable_as_poseImagePath(client, settings) -> None:
    png = io.BytesIO()
    Image.new("RGB", (40, 60), "white").save(png, format="PNG")
    data = base64.b64encode(png.getvalue()).decode()
    stored = await client.post("/studio/poses", headers=AUTH, json={"fileName": "pose.png", "dataBase64": data})
    assert stored.status == 201
    body = await stored.json()
    assert Path(body["path"]).parent == settings.data_dir / "poses" and (body["width"], body["height"]) == (40, 60)
    again = await (await client.post("/studio/poses", headers=AUTH, json={"dataBase64": data})).json()
    assert again["path"] == body["path"]  # one file per content
    job = await client.post("/jobs", headers=AUTH, json={"prompt": "spyke_plasma_v1", "poseImagePath": body["path"]})
    assert job.status == 202, await job.text()
    garbage = await client.post("/studio/poses", headers=AUTH,
                                json={"dataBase64": base64.b64encode(b"not an image").decode()})
    assert (await error_of(garbage, 400))["code"] == "pose_image_invalid"
    assert sorted(p.name for p in (settings.data_dir / "poses").iterdir()) == [Path(body["path"]).name]


async def test_the_doctor_report_has_each_check_and_its_fix(client) -> None:
    report = await (await client.get("/doctor", headers=AUTH)).json()
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["python"]["status"] == "ok"
    assert checks["kohya_ss"]["status"] in ("warn", "fail") and checks["kohya_ss"]["fix"]

"""The browser-proof edge, through the real app: each refusal with crafted headers (what a hostile page or a
DNS-rebinding page would send), and what the daemon's own pages and clients send still passes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend

TOKEN = "edge-test-token-0123456789abcdef"
EVIL = "https://evil.example"
JOB = {"prompt": "spyke_plasma_v1, standing"}


def settings_for(tmp_path: Path, **extra) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", **extra)


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def client(aiohttp_client, tmp_path, backend):
    return await aiohttp_client(create_app(settings_for(tmp_path), backend))


def own_origin(client) -> str:
    return f"http://127.0.0.1:{client.port}"


async def error_of(resp: aiohttp.ClientResponse, status: int) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


async def job_count(client) -> int:
    return len((await (await client.get("/jobs")).json())["jobs"])


async def finished_job(client) -> dict:
    job = await (await client.post("/jobs", json=JOB)).json()
    for _ in range(500):
        job = await (await client.get(f"/jobs/{job['id']}")).json()
        if job["status"] == "succeeded":
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(job)


# -- Host: a DNS-rebinding page addresses the daemon by its own name -------------------------------
@pytest.mark.parametrize("path", ["/jobs", "/health", "/openapi.json", "/loras", "/loras/runs", "/no/such/route"])
async def test_a_foreign_host_is_refused_on_every_route(client, path) -> None:
    err = await error_of(await client.get(path, headers={"Host": "evil.example:3000"}), 403)
    assert err["code"] == "host_not_allowed" and "evil.example" in err["message"]


async def test_a_foreign_host_cannot_read_images_or_run_logs(client) -> None:
    job = await finished_job(client)
    for path in (f"/jobs/{job['id']}/image", f"/jobs/{job['id']}", "/loras/nosuchrun/status"):
        err = await error_of(await client.get(path, headers={"Host": "rebind.evil.example"}), 403)
        assert err["code"] == "host_not_allowed"
    assert (await client.get(f"/jobs/{job['id']}/image")).status == 200


async def test_a_foreign_host_cannot_submit(client) -> None:
    resp = await client.post("/jobs", json=JOB, headers={"Host": "evil.example"})
    assert (await error_of(resp, 403))["code"] == "host_not_allowed"
    assert await job_count(client) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:3000", "localhost", "LOCALHOST:8080", "[::1]", "[::1]:3000"])
async def test_loopback_hosts_with_or_without_port_pass(client, host) -> None:
    assert (await client.get("/health", headers={"Host": host})).status == 200


@pytest.mark.parametrize("host", ["", "127.0.0.1:abc", "[::1", "127.0.0.2.evil.example"])
async def test_malformed_or_lookalike_hosts_are_refused(client, host) -> None:
    assert (await error_of(await client.get("/health", headers={"Host": host}), 403))["code"] == "host_not_allowed"


async def test_allowed_hosts_lets_a_named_host_in(aiohttp_client, tmp_path, backend) -> None:
    c = await aiohttp_client(create_app(settings_for(tmp_path, allowed_hosts="studio.lan, other.lan"), backend))
    assert (await c.get("/health", headers={"Host": "studio.lan:3000"})).status == 200
    assert (await c.get("/health", headers={"Host": "other.lan"})).status == 200
    assert (await error_of(await c.get("/health", headers={"Host": "evil.example"}), 403))["code"] == "host_not_allowed"


# -- Origin: a page on another origin -------------------------------------------------------------
async def test_a_foreign_origin_cannot_read_jobs(client) -> None:
    err = await error_of(await client.get("/jobs", headers={"Origin": EVIL}), 403)
    assert err["code"] == "origin_not_allowed" and err["details"]["origin"] == EVIL


async def test_a_foreign_origin_cannot_cancel(client, backend) -> None:
    backend.auto_release = False  # the job stays running until the test releases it
    job = await (await client.post("/jobs", json=JOB)).json()
    resp = await client.post(f"/jobs/{job['id']}/cancel", headers={"Origin": EVIL})
    assert (await error_of(resp, 403))["code"] == "origin_not_allowed"
    assert (await (await client.get(f"/jobs/{job['id']}")).json())["status"] in ("queued", "running")
    assert (await client.post(f"/jobs/{job['id']}/cancel")).status == 202  # our own client, no Origin


@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost:5173", "http://127.0.0.1"])
async def test_foreign_origins_cannot_submit(client, origin) -> None:
    resp = await client.post("/jobs", json=JOB, headers={"Origin": origin})
    assert (await error_of(resp, 403))["code"] == "origin_not_allowed"
    assert await job_count(client) == 0


async def test_the_daemons_own_pages_may_call_it(client) -> None:
    port = client.port
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
        resp = await client.post("/jobs", json=JOB, headers={"Origin": origin})
        assert resp.status == 202, await resp.text()
    same = await client.get("/jobs", headers={"Origin": own_origin(client)})
    assert same.status == 200 and "Access-Control-Allow-Origin" not in same.headers  # same origin: no CORS
    other = await client.get("/jobs", headers={"Origin": f"http://localhost:{port}"})
    assert other.headers["Access-Control-Allow-Origin"] == f"http://localhost:{port}"


async def test_allowed_origins_get_cors_headers_on_answers_and_errors(aiohttp_client, tmp_path, backend) -> None:
    dev = "http://localhost:5173"
    c = await aiohttp_client(create_app(settings_for(tmp_path, allowed_origins=f"{dev},https://studio.example"),
                                        backend))
    resp = await c.get("/jobs", headers={"Origin": dev})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == dev
    assert "Origin" in resp.headers["Vary"]
    missing = await c.get("/jobs/nope", headers={"Origin": "https://studio.example"})
    assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == "https://studio.example"
    assert (await error_of(await c.get("/jobs", headers={"Origin": EVIL}), 403))["code"] == "origin_not_allowed"


async def test_a_star_origin_is_an_explicit_choice(aiohttp_client, tmp_path, backend) -> None:
    c = await aiohttp_client(create_app(settings_for(tmp_path, allowed_origins=["*"]), backend))
    resp = await c.get("/jobs", headers={"Origin": EVIL})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == EVIL


# -- CORS preflight ---------------------------------------------------------------------------------
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type, authorization"}


async def test_a_preflight_from_a_foreign_origin_is_refused(client) -> None:
    resp = await client.options("/jobs", headers={"Origin": EVIL, **PREFLIGHT})
    assert (await error_of(resp, 403))["code"] == "origin_not_allowed"
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_preflight_from_an_allowed_origin_is_answered(aiohttp_client, tmp_path, backend) -> None:
    dev = "http://localhost:5173"
    c = await aiohttp_client(create_app(settings_for(tmp_path, allowed_origins=dev, token=TOKEN), backend))
    resp = await c.options("/jobs/abc/cancel", headers={"Origin": dev, **PREFLIGHT})  # no token: browsers send none
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == dev
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "authorization"} <= allowed


# -- bodies: only JSON reaches a handler ------------------------------------------------------------
@pytest.mark.parametrize("content_type, data", [
    ("text/plain", '{"prompt": "x"}'),
    ("text/plain;charset=UTF-8", '{"prompt": "x"}'),
    ("application/x-www-form-urlencoded", "prompt=x"),
    ("multipart/form-data; boundary=b", '--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--b--\r\n'),
])
async def test_a_body_that_is_not_json_is_refused(client, content_type, data) -> None:
    resp = await client.post("/jobs", data=data, headers={"Content-Type": content_type})
    err = await error_of(resp, 415)
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]
    assert await job_count(client) == 0


async def test_an_untyped_or_chunked_body_is_refused(client) -> None:
    resp = await client.post("/jobs", data=b'{"prompt": "x"}', skip_auto_headers=["Content-Type"])
    assert (await error_of(resp, 415))["code"] == "unsupported_media_type"

    async def chunks():
        yield b'{"prompt": '
        yield b'"x"}'

    resp = await client.post("/loras/train", data=chunks(), headers={"Content-Type": "text/plain"})
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert (await error_of(resp, 415))["code"] == "unsupported_media_type"
    assert await job_count(client) == 0


async def test_json_with_a_charset_and_posts_without_a_body_pass(client, backend) -> None:
    resp = await client.post("/jobs", data=b'{"prompt": "x"}', headers={"Content-Type": "application/json; charset=utf-8"})
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    cancel = await client.post(f"/jobs/{job['id']}/cancel", skip_auto_headers=["Content-Type"])
    assert cancel.status in (202, 409), await cancel.text()  # no body, no Content-Type: the handler decides


# -- the /events WebSocket upgrade ----------------------------------------------------------------
async def test_a_websocket_from_a_foreign_origin_is_refused(client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await client.ws_connect("/events", headers={"Origin": EVIL})
    assert exc.value.status == 403


async def test_a_websocket_from_a_foreign_host_is_refused(client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await client.ws_connect("/events", headers={"Host": "evil.example"})
    assert exc.value.status == 403


async def test_the_daemons_own_page_gets_events(client) -> None:
    ws = await client.ws_connect("/events", headers={"Origin": own_origin(client)})
    await client.post("/jobs", json=JOB)
    msg = await ws.receive_json(timeout=10)
    assert msg["type"] == "job.queued"
    await ws.close()


# -- the token -----------------------------------------------------------------------------------
@pytest.fixture
async def locked(aiohttp_client, tmp_path, backend):
    return await aiohttp_client(create_app(settings_for(tmp_path, token=TOKEN), backend))


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", "Bearer",
                                           f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"])
async def test_a_missing_or_wrong_token_is_refused(locked, authorization) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for resp in (await locked.get("/jobs", headers=headers),
                 await locked.post("/jobs", json=JOB, headers=headers),
                 await locked.get("/health", headers=headers)):
        err = await error_of(resp, 401)
        assert err["code"] == "unauthorized" and TOKEN not in err["message"]
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert await job_count_with(locked, TOKEN) == 0


async def job_count_with(client, token: str) -> int:
    resp = await client.get("/jobs", headers={"Authorization": f"Bearer {token}"})
    return len((await resp.json())["jobs"])


async def test_the_right_token_passes(locked) -> None:
    auth = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    assert (await locked.post("/jobs", json=JOB, headers=auth)).status == 202
    assert await job_count_with(locked, TOKEN) == 1
    ws = await locked.ws_connect("/events", headers=auth)
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await locked.ws_connect("/events")
    assert exc.value.status == 401


async def test_host_and_origin_are_checked_before_the_token(locked) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    resp = await locked.get("/jobs", headers={**auth, "Host": "evil.example"})
    assert (await error_of(resp, 403))["code"] == "host_not_allowed"
    resp = await locked.get("/jobs", headers={**auth, "Origin": EVIL})
    assert (await error_of(resp, 403))["code"] == "origin_not_allowed"


async def test_the_openapi_document_lists_the_edge_refusals(client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    submit = doc["paths"]["/jobs"]["post"]["responses"]
    assert {"401", "403", "415"} <= set(submit) and "origin_not_allowed" in submit["403"]["description"]
    assert "415" not in doc["paths"]["/jobs"]["get"]["responses"]  # no body, no content-type rule
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


# -- every documented operation, old and new, goes through the same rules ----------------------------
async def test_every_operation_refuses_a_foreign_host_a_foreign_origin_and_a_non_json_body(client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    operations = [(method.upper(), path.replace("{", "").replace("}", "-x"), "requestBody" in op)
                  for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 40
    for method, path, has_body in operations:
        host = await client.request(method, path, headers={"Host": "evil.example"})
        assert (await error_of(host, 403))["code"] == "host_not_allowed", (method, path)
        origin = await client.request(method, path, headers={"Origin": EVIL})
        assert (await error_of(origin, 403))["code"] == "origin_not_allowed", (method, path)
        if has_body:
            plain = await client.request(method, path, data='{"a": 1}', headers={"Content-Type": "text/plain"})
            assert (await error_of(plain, 415))["code"] == "unsupported_media_type", (method, path)
    assert await job_count(client) == 0

"""The OpenAPI document matches what is served: every route documented from the route table, every
status an operation answers, summaries in lists and events, the full job on its own URL, and 405s
that say what is allowed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.api.keys import SETTINGS
from sidecar.api.operations import operations
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, backend):
    return await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data", engine="embedded"), backend))


async def submit(client, **body) -> dict:
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", **body})
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def test_every_served_route_is_documented_and_every_documented_one_served(client) -> None:
    served = {(r.method, r.path) for r in operations(client.app)}
    undocumented = {(r.method, r.path) for r in operations(client.app) if r.operation is None}
    assert undocumented == set()
    doc = await (await client.get("/openapi.json")).json()
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == served
    assert ("get", "/openapi.json") in documented and ("get", "/loras") in documented


async def test_document_lists_every_status_with_its_codes(client) -> None:
    paths = (await (await client.get("/openapi.json")).json())["paths"]
    cancel = paths["/jobs/{id}/cancel"]["post"]["responses"]
    assert {"200", "202", "404", "409"} <= set(cancel)
    assert cancel["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/JobSummary")
    submit_ = paths["/jobs"]["post"]
    assert submit_["requestBody"]["required"] is True
    assert {"202", "400", "409", "413", "503"} <= set(submit_["responses"])

    def codes(responses: dict, status: str) -> list[str]:
        schema = responses[status]["content"]["application/json"]["schema"]
        return schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]

    assert "training_in_progress" in codes(submit_["responses"], "409")
    assert {"invalid_json", "unknown_field", "invalid_field", "lora_not_found"} <= set(
        codes(submit_["responses"], "400"))
    assert codes(paths["/jobs/{id}"]["get"]["responses"], "404") == ["job_not_found"]
    assert paths["/jobs/{id}/image"]["get"]["responses"]["200"]["content"]["image/png"]
    assert {"200", "202"} <= set(paths["/loras/{id}/cancel"]["post"]["responses"])
    assert codes(paths["/events"]["get"]["responses"], "426") == ["websocket_required"]


async def test_responses_are_camel_case_and_always_carry_their_keys(client) -> None:
    schemas = (await (await client.get("/openapi.json")).json())["components"]["schemas"]
    summary = schemas["JobSummary"]
    assert "workflow" not in summary["properties"] and summary["additionalProperties"] is False
    assert {"workflowTemplate", "createdAt", "durationMs", "error", "output"} <= set(summary["required"])
    assert "workflow" in schemas["Job"]["required"]
    assert "queueDepth" in schemas["Health"]["required"]
    assert "saveEveryNSteps" in schemas["TrainingParams"]["properties"]


async def test_lists_and_events_carry_summaries_the_job_url_the_workflow(client, backend) -> None:
    ws = await client.ws_connect("/events")
    job = await submit(client, loraId="spyke_plasma_v1", seed=42)
    assert "workflow" not in job and job["params"]["seed"] == 42
    frames = []
    while not frames or frames[-1]["type"] != "job.succeeded":
        frames.append(await asyncio.wait_for(ws.receive_json(), 10))
    await ws.close()
    assert all("workflow" not in f["job"] for f in frames)
    assert frames[-1]["job"]["output"]["url"] == f"/jobs/{job['id']}/image"

    listed = (await (await client.get("/jobs")).json())["jobs"]
    assert [j["id"] for j in listed] == [job["id"]] and "workflow" not in listed[0]
    full = (await (await client.get("/jobs?full=1")).json())["jobs"]
    assert full[0]["workflow"]["6"]["inputs"]["seed"] == 42
    one = await (await client.get(f"/jobs/{job['id']}")).json()
    assert one["workflow"] == full[0]["workflow"]
    assert {k: v for k, v in one.items() if k != "workflow"} == listed[0]

    bad = await client.get("/jobs?full=maybe")
    assert bad.status == 400 and (await bad.json())["error"]["details"]["field"] == "full"


async def test_cancel_of_a_running_job_answers_202_then_it_is_cancelled(client, backend) -> None:
    backend.auto_release = False
    job = await submit(client)
    await wait_status(client, job["id"], {"running"})
    resp = await client.post(f"/jobs/{job['id']}/cancel")
    assert resp.status == 202 and (await resp.json())["id"] == job["id"]
    assert (await wait_status(client, job["id"], {"cancelled"}))["error"] is None


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/jobs", "GET, HEAD, POST"),  # HEAD: aiohttp answers it for every GET route
    ("PUT", "/jobs/abc", "GET, HEAD"),
    ("GET", "/jobs/abc/cancel", "POST"),
    ("POST", "/health", "GET, HEAD"),
])
async def test_405_names_the_allowed_methods_in_allow(client, method, path, allowed) -> None:
    resp = await client.request(method, path)
    assert resp.status == 405
    assert resp.headers["Allow"] == allowed
    err = (await resp.json())["error"]
    assert err["code"] == "method_not_allowed" and err["details"]["allowed"] == allowed.split(", ")


async def test_plain_get_of_events_asks_for_a_websocket(client) -> None:
    resp = await client.get("/events")
    assert resp.status == 426 and (await resp.json())["error"]["code"] == "websocket_required"


async def test_an_image_gone_from_disk_is_a_json_404(client) -> None:
    job = await submit(client)
    done = await wait_status(client, job["id"], {"succeeded"})
    (client.app[SETTINGS].jobs_dir / done["output"]["fileName"]).unlink()
    resp = await client.get(f"/jobs/{job['id']}/image")
    assert resp.status == 404 and resp.content_type == "application/json"
    assert (await resp.json())["error"]["code"] == "not_found"

"""`GET /jobs` a page at a time: a bounded page (10 full jobs by default, at most 50, whatever `limit`
asks), and `nextBefore` to walk every older job exactly once."""

from __future__ import annotations

from sidecar.api.keys import STORE
from sidecar.jobs.params import JobParams
from sidecar.jobs.store import JobRecord


async def fill(client, count: int, workflow_bytes: int = 1000) -> list[str]:
    store = client.server.app[STORE]
    ids = [f"{i:032x}" for i in range(count)]
    for job_id in ids:
        await store.insert(JobRecord(id=job_id, status="succeeded", params=JobParams(prompt="p"), template="txt2img",
                                     workflow={"3": {"inputs": {"text": "w" * workflow_bytes}}}, engine="embedded"))
    return ids[::-1]  # newest first


async def walk(client, query: str) -> tuple[list[str], list[int]]:
    seen, sizes, before = [], [], None
    while True:
        page = await client.get(f"/jobs?{query}" + (f"&before={before}" if before else ""))
        assert page.status == 200, await page.text()
        body = await page.json()
        seen += [j["id"] for j in body["jobs"]]
        sizes.append(len(body["jobs"]))
        before = body["nextBefore"]
        if before is None:
            return seen, sizes


async def test_full_jobs_come_a_bounded_page_at_a_time_and_the_cursor_walks_all(client) -> None:
    newest_first = await fill(client, 57, workflow_bytes=20_000)
    seen, sizes = await walk(client, "full=1")
    assert seen == newest_first and sizes == [10, 10, 10, 10, 10, 7]
    assert all("workflow" in j for j in (await (await client.get("/jobs?full=1")).json())["jobs"])
    big = await (await client.get("/jobs?full=1&limit=500")).json()
    assert len(big["jobs"]) == 50 and big["nextBefore"] == newest_first[49]  # cut to 50, and it goes on
    seen, sizes = await walk(client, "limit=20")  # summaries: the limit asked
    assert seen == newest_first and sizes == [20, 20, 17]
    summaries = await (await client.get("/jobs")).json()
    assert len(summaries["jobs"]) == 50 and "workflow" not in summaries["jobs"][0]


async def test_before_must_name_a_job(client) -> None:
    await fill(client, 3)
    for before in ("nope", "x" * 65):
        resp = await client.get(f"/jobs?before={before}")
        error = (await resp.json())["error"]
        assert resp.status == 404 and error["code"] == "job_not_found" and error["details"]["field"] == "before"


async def test_a_full_page_is_exactly_what_its_model_serializes(client) -> None:
    from sidecar.api.jobs import full_listing
    from sidecar.api.responses import Job, JobListFull

    await fill(client, 3)
    records = await client.server.app[STORE].list(limit=3)
    for next_before in (None, records[-1].id):
        whole = JobListFull(jobs=[Job.from_record(r) for r in records], next_before=next_before)
        assert full_listing(records, next_before).text == whole.model_dump_json(by_alias=True)
    assert full_listing([], None).text == JobListFull(jobs=[], next_before=None).model_dump_json(by_alias=True)

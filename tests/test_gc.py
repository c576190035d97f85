"""Retention: `POST /gc`, the daemon's own pass at start, and `sidecar gc` through a daemon or on a data
dir no daemon holds. Old finished jobs and their images go; queued and running jobs, recent jobs and
files outside the data dir stay."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from sidecar.api.app import create_app
from sidecar.cli import main
from sidecar.config import Settings
from tests.conftest_comfy import free_port
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status

OLD = "2020-01-01T00:00:00.000Z"


def settings(tmp_path: Path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", **kw)


async def submit(client) -> str:
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing"})
    assert resp.status == 202, await resp.text()
    return (await resp.json())["id"]


def age(db: Path, job_id: str, when: str = OLD, **columns: str) -> None:
    """Make a job look as if it ended (and was created) long ago."""
    with sqlite3.connect(db) as conn:
        sets = ", ".join(f"{k} = ?" for k in ("created_at", "finished_at", *columns))
        conn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (when, when, *columns.values(), job_id))


async def history(client, backend, s: Settings, tmp_path: Path) -> dict[str, str]:
    """Two old succeeded jobs, one old failed, one recent, one old whose image is in the artist's
    project, and one that is still running (created long ago)."""
    ids = {}
    backend.script = ["ok", "ok", "fail", "ok", "ok"]
    for name in ("old1", "old2", "old_failed", "recent", "outside"):
        ids[name] = await submit(client)
        await wait_status(client, ids[name], {"succeeded", "failed"})
    backend.auto_release = False
    ids["running"] = await submit(client)
    await wait_status(client, ids["running"], {"running"})
    project = tmp_path / "project" / "ch-01" / "raw"
    project.mkdir(parents=True)
    page = project / "ch01_p001.png"
    page.write_bytes(b"approved page")
    for name in ("old1", "old2", "old_failed"):
        age(s.db_path, ids[name])
    age(s.db_path, ids["outside"], output_file=str(page))
    (s.jobs_dir / f"{ids['outside']}.png").unlink()  # its only image is the project's
    with sqlite3.connect(s.db_path) as conn:
        conn.execute("UPDATE jobs SET created_at = ? WHERE id = ?", (OLD, ids["running"]))
    return ids


async def test_gc_dry_run_measures_and_gc_removes_only_old_finished_jobs(aiohttp_client, tmp_path):
    s, backend = settings(tmp_path), ScriptedBackend()
    client = await aiohttp_client(create_app(s, backend))
    ids = await history(client, backend, s, tmp_path)
    images = {n: s.jobs_dir / f"{ids[n]}.png" for n in ("old1", "old2", "recent")}
    old_bytes = images["old1"].stat().st_size + images["old2"].stat().st_size

    resp = await client.post("/gc", json={"dryRun": True})
    assert resp.status == 200, await resp.text()
    dry = await resp.json()
    assert dry["dryRun"] is True and dry["keepDays"] == 30 and dry["removedJobs"] == 0
    assert sorted(dry["jobIds"]) == sorted([ids["old1"], ids["old2"], ids["old_failed"], ids["outside"]])
    assert dry["files"] == 2 and dry["bytes"] == old_bytes
    assert dry["keptOutsideDataDir"] == [str(tmp_path / "project" / "ch-01" / "raw" / "ch01_p001.png")]
    assert all(p.exists() for p in images.values())
    assert (await client.get(f"/jobs/{ids['old1']}")).status == 200

    done = await (await client.post("/gc", json={})).json()
    assert done["removedJobs"] == 4 and done["files"] == 2 and done["bytes"] == old_bytes
    for name in ("old1", "old2", "old_failed", "outside"):
        resp = await client.get(f"/jobs/{ids[name]}")
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "job_not_found"
    assert not images["old1"].exists() and not images["old2"].exists()
    assert images["recent"].exists() and (await client.get(f"/jobs/{ids['recent']}/image")).status == 200
    assert (tmp_path / "project" / "ch-01" / "raw" / "ch01_p001.png").read_bytes() == b"approved page"
    # The running job, however old, is untouched and still finishes.
    backend.release(ids["running"])
    assert (await wait_status(client, ids["running"], {"succeeded"}))["status"] == "succeeded"
    again = await (await client.post("/gc", json={})).json()
    assert again["jobs"] == 0 and again["removedJobs"] == 0


async def test_keep_days_0_keeps_everything_unless_a_request_names_days(aiohttp_client, tmp_path):
    s, backend = settings(tmp_path, keep_days=0), ScriptedBackend()
    client = await aiohttp_client(create_app(s, backend))
    job_id = await submit(client)
    await wait_status(client, job_id, {"succeeded"})
    age(s.db_path, job_id)
    kept = await (await client.post("/gc", json={})).json()
    assert kept["cutoff"] is None and kept["jobs"] == 0 and (await client.get(f"/jobs/{job_id}")).status == 200
    gone = await (await client.post("/gc", json={"keepDays": 0})).json()
    assert gone["removedJobs"] == 1 and (await client.get(f"/jobs/{job_id}")).status == 404


async def test_gc_refuses_a_bad_body_naming_the_field(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(settings(tmp_path), ScriptedBackend()))
    # false is not 0 (that would remove every finished job), "true" is not a dry run.
    for body, field in (({"keepDays": -1}, "keepDays"), ({"keepDays": "x"}, "keepDays"),
                        ({"keepDays": False}, "keepDays"), ({"keepDays": 1.5}, "keepDays"),
                        ({"dryRun": "maybe"}, "dryRun"), ({"dryRun": "true"}, "dryRun"), ({"dryRun": 1}, "dryRun")):
        resp = await client.post("/gc", json=body)
        err = (await resp.json())["error"]
        assert resp.status == 400 and err["code"] == "invalid_field" and err["details"]["field"] == field
    resp = await client.post("/gc", json={"olderThan": 3})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "unknown_field"


async def test_the_daemon_applies_keep_days_at_start(aiohttp_client, tmp_path):
    s = settings(tmp_path, keep_days=7)
    first = await aiohttp_client(create_app(s, ScriptedBackend()))
    old, recent = await submit(first), await submit(first)
    for job_id in (old, recent):
        await wait_status(first, job_id, {"succeeded"})
    await first.close()
    age(s.db_path, old)
    client = await aiohttp_client(create_app(s, ScriptedBackend()))
    for _ in range(500):
        if (await client.get(f"/jobs/{old}")).status == 404:
            break
        await asyncio.sleep(0.02)
    assert (await client.get(f"/jobs/{old}")).status == 404 and not (s.jobs_dir / f"{old}.png").exists()
    assert (await client.get(f"/jobs/{recent}/image")).status == 200


def test_sidecar_gc_on_a_data_dir_no_daemon_holds(tmp_path):
    s = settings(tmp_path)
    ids: list[str] = []

    async def make() -> None:  # a daemon that ran two jobs, then stopped
        async with TestClient(TestServer(create_app(s, ScriptedBackend()))) as client:
            for _ in range(2):
                ids.append(await submit(client))
                await wait_status(client, ids[-1], {"succeeded"})

    asyncio.run(make())
    age(s.db_path, ids[0])
    size = (s.jobs_dir / f"{ids[0]}.png").stat().st_size
    args = ["gc", "--data-dir", str(s.data_dir), "--port", str(free_port())]
    dry = CliRunner().invoke(main, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would remove 1 finished job(s)" in dry.output and f"({size} bytes)" in dry.output and "no daemon" in dry.output
    assert (s.jobs_dir / f"{ids[0]}.png").exists()
    done = CliRunner().invoke(main, [*args, "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["removedJobs"] == 1 and report["jobIds"] == [ids[0]] and report["bytes"] == size
    assert not (s.jobs_dir / f"{ids[0]}.png").exists() and (s.jobs_dir / f"{ids[1]}.png").exists()


async def test_sidecar_gc_goes_through_the_running_daemon(aiohttp_server, tmp_path):
    port = free_port()
    s = settings(tmp_path, port=port)
    app = create_app(s, ScriptedBackend())
    server = await aiohttp_server(app, port=port)
    client = TestClient(server)
    await client.start_server()
    job_id = await submit(client)
    await wait_status(client, job_id, {"succeeded"})
    age(s.db_path, job_id)
    result = await asyncio.to_thread(CliRunner().invoke, main,
                                     ["gc", "--data-dir", str(s.data_dir), "--port", str(port)])
    assert result.exit_code == 0, result.output
    assert "removed 1 finished job(s)" in result.output and f"daemon at http://127.0.0.1:{port}" in result.output
    assert (await client.get(f"/jobs/{job_id}")).status == 404
    await client.close()

"""Issue 11's faults, through the real app: the queue survives a full disk and a dying worker, the queue
and the /events buffers are bounded, and a database that cannot be trusted stops the daemon at start.

The disk is made full for real where no mount is needed: SQLite's own `max_page_count` (the file may
not grow: SQLITE_FULL) and an image write answered ENOSPC by the test backend. The tmpfs version, a
whole data dir that runs out of space mid-job, is in `test_reliability_disk.py`.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import WSCloseCode, WSMsgType

from sidecar.api.app import create_app
from sidecar.api.keys import EVENTS, STORE
from sidecar.config import Settings
from sidecar.jobs.params import JobParams
from sidecar.jobs.store import JobRecord, JobStore
from tests.conftest_comfy import free_port
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import submit, wait_status

DONE = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


async def start(aiohttp_client, tmp_path: Path, backend: ScriptedBackend, **settings):
    return await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data", engine="embedded", **settings),
                                           backend))


async def test_an_image_write_on_a_full_disk_fails_the_job_disk_full_and_the_next_job_runs(
        aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend)
    backend.script = ["enospc", "ok"]
    full = await wait_status(client, (await submit(client, seed=1))["id"], DONE)
    assert full["status"] == "failed" and full["error"]["code"] == "disk_full"
    assert "No space left" in full["error"]["message"] and "Free some space" in full["error"]["message"]
    assert full["error"]["details"]["path"].endswith(f"{full['id']}.png")
    nxt = await wait_status(client, (await submit(client, seed=2))["id"], DONE)
    assert nxt["status"] == "succeeded"
    assert (await (await client.get("/health")).json())["status"] == "ok"


async def test_a_job_failed_disk_full_before_its_start_was_written_keeps_its_start_and_duration(
        aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend)
    store = client.app[STORE]
    update_soon = store.update_soon

    def running_write_fails(job_id: str, **values):
        if values.get("status") != "running":
            return update_soon(job_id, **values)
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(store._disk_full())  # the disk filled up just as the job started
        return failed

    store.update_soon = running_write_fails
    backend.script = ["enospc"]
    full = await wait_status(client, (await submit(client, seed=1))["id"], DONE)
    assert full["status"] == "failed" and full["error"]["code"] == "disk_full"
    row = await store.get(full["id"])  # as the store has it: what GET /jobs and a restart answer
    assert row.started_at is not None and row.finished_at is not None and row.duration_ms() is not None
    listed = next(j for j in (await (await client.get("/jobs")).json())["jobs"] if j["id"] == full["id"])
    assert listed["startedAt"] == row.started_at and listed["durationMs"] is not None


async def test_submit_when_the_database_cannot_grow_is_507_disk_full_and_queues_nothing(
        aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend)
    first = await wait_status(client, (await submit(client, seed=1))["id"], DONE)
    store = client.app[STORE]
    pages = (await store._call(store._exec, "PRAGMA page_count"))[0][0]
    await store._call(store._exec, f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk full"

    # A big prompt needs new pages: the insert fails as on a full disk.
    long = "standing " * 400
    resp = await client.post("/jobs", json={"prompt": long, "negativePrompt": long, "seed": 2})
    body = await resp.json()
    assert resp.status == 507 and body["error"]["code"] == "disk_full", body
    assert str(tmp_path / "data" / "sidecar.db") in body["error"]["message"]
    jobs = (await (await client.get("/jobs")).json())["jobs"]
    assert [j["id"] for j in jobs] == [first["id"]]
    health = await (await client.get("/health")).json()
    assert health["queueDepth"] == 0 and health["status"] == "ok"

    await store._call(store._exec, "PRAGMA max_page_count = 1073741823")  # space freed
    assert (await wait_status(client, (await submit(client, seed=3))["id"], DONE))["status"] == "succeeded"


async def test_a_worker_that_dies_is_restarted_and_health_is_degraded_meanwhile(
        aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend)
    from sidecar.api.keys import RUNNER

    client.app[RUNNER].restart_delay = 0.5
    backend.script = ["die"]
    doomed = await submit(client, seed=1)
    health = {}
    for _ in range(200):
        health = await (await client.get("/health")).json()
        if not health["worker"]["running"]:
            break
        await asyncio.sleep(0.01)
    assert health["status"] == "degraded" and health["worker"]["running"] is False
    assert "WorkerKilled" in health["worker"]["error"]
    assert any("job worker is not running" in w for w in health["warnings"])

    nxt = await submit(client, seed=2)  # waits for the restarted worker
    assert (await wait_status(client, nxt["id"], DONE))["status"] == "succeeded"
    failed = await wait_status(client, doomed["id"], DONE)
    assert failed["status"] == "failed" and failed["error"]["code"] == "internal_error"
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["worker"] == {"running": True, "restarts": 1, "error": None}


async def test_past_max_queue_a_submit_is_429_queue_full_until_the_queue_moves(
        aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend, max_queue=2)
    backend.auto_release = False
    running = await submit(client, seed=1)
    await wait_status(client, running["id"], {"running"})
    waiting = [await submit(client, seed=s) for s in (2, 3)]
    resp = await client.post("/jobs", json={"prompt": "x", "seed": 4})
    body = await resp.json()
    assert resp.status == 429 and body["error"]["code"] == "queue_full"
    assert body["error"]["details"] == {"limit": 2, "queueDepth": 2} and "max_queue 2" in body["error"]["message"]
    assert len((await (await client.get("/jobs")).json())["jobs"]) == 3  # the refused one is not stored

    await client.post(f"/jobs/{waiting[0]['id']}/cancel")
    assert (await client.post("/jobs", json={"prompt": "x", "seed": 5})).status == 202


def raw_listener(port: int) -> socket.socket:
    """An /events client that upgrades, then never reads (a tiny receive buffer fills at once)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_listener_that_reads_too_slowly_is_disconnected_and_others_get_every_event(
        aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend, events_buffer=16)
    bus = client.app[EVENTS]
    fast = await client.ws_connect("/events")
    slow = await asyncio.to_thread(raw_listener, client.port)
    for _ in range(100):
        if bus.subscriber_count == 2:
            break
        await asyncio.sleep(0.01)
    pad = "x" * 50_000
    sent = 0
    # Paced by the fast listener, so only the one that does not read can fall behind.
    while bus.subscriber_count == 2 and sent < 1000:
        bus.publish({"type": "test.padding", "n": sent, "pad": pad})
        msg = await fast.receive(timeout=10)
        assert json.loads(msg.data)["n"] == sent
        sent += 1
    assert bus.subscriber_count == 1, "the slow listener was never cut off"
    assert 16 < sent < 1000  # everything else it had not read stayed in bounded buffers

    # The slow client's connection is closed (cut, since it reads nothing); the fast one still works.
    def closed() -> bool:
        slow.settimeout(10)
        try:
            while slow.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    assert await asyncio.to_thread(closed)
    slow.close()
    job = await submit(client, seed=1)
    while True:
        event = json.loads((await fast.receive(timeout=10)).data)
        if event["type"] == "job.succeeded" and event["job"]["id"] == job["id"]:
            break
    await fast.close()


async def test_shutdown_closes_every_listener_going_away(aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend)
    listeners = [await client.ws_connect("/events") for _ in range(3)]
    for _ in range(100):
        if client.app[EVENTS].subscriber_count == 3:
            break
        await asyncio.sleep(0.01)
    await client.app.shutdown()  # what SIGTERM runs first
    for ws in listeners:
        msg = await ws.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE and msg.data == WSCloseCode.GOING_AWAY


async def test_100_concurrent_submits_with_20_listeners_all_run_fifo_one_at_a_time(
        aiohttp_client, tmp_path, backend) -> None:
    client = await start(aiohttp_client, tmp_path, backend)
    listeners = [await client.ws_connect("/events") for _ in range(20)]
    seen: list[list[str]] = [[] for _ in listeners]

    async def listen(ws, ids: list[str]) -> None:
        async for msg in ws:
            event = json.loads(msg.data)
            if event["type"] == "job.succeeded":
                ids.append(event["job"]["id"])

    readers = [asyncio.create_task(listen(ws, ids)) for ws, ids in zip(listeners, seen)]
    answers = await asyncio.gather(*(client.post("/jobs", json={"prompt": "x", "seed": s}) for s in range(100)))
    assert [r.status for r in answers] == [202] * 100
    ids = {(await r.json())["id"] for r in answers}
    for _ in range(3000):
        if all(len(s) == 100 for s in seen):
            break
        await asyncio.sleep(0.02)
    jobs = (await (await client.get("/jobs?limit=500")).json())["jobs"]
    assert {j["id"] for j in jobs} == ids and {j["status"] for j in jobs} == {"succeeded"}
    in_order = [j.id for j in reversed(await client.app[STORE].list(limit=500))]  # the order they were queued
    assert backend.started == in_order and backend.most_active == 1
    assert all(s == in_order for s in seen)  # every listener, every job, in the order they ran
    for ws, reader in zip(listeners, readers):
        await ws.close()
        reader.cancel()


# -- the database at start


async def make_database(path: Path, jobs: int = 40) -> None:
    store = JobStore(path)
    await store.open()
    for i in range(jobs):
        await store.insert(JobRecord(id=f"job{i}", status="succeeded", params=JobParams(prompt="p" * 300),
                                     template="txt2img", workflow={"3": {"text": "w" * 1500}}, engine="embedded"))
    await store.close()


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "random bytes in a page":
        data[4096 * 5:4096 * 6] = random.Random(11).randbytes(4096)
    elif how == "truncated":
        del data[4096 * 5 + 100:]
    else:  # "not a database"
        data = bytearray(b"GIF89a, not a database at all\n" * 200)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["random bytes in a page", "truncated", "not a database"])
async def test_serve_refuses_a_damaged_database_in_one_line_naming_it_and_changes_nothing(tmp_path, how) -> None:
    data = tmp_path / "data"
    db = data / "sidecar.db"
    await make_database(db)
    damage(db, how)
    before = db.read_bytes()
    config = tmp_path / "empty.toml"
    config.touch()
    # Attached to a ComfyUI that is not there: the check comes first, nothing else is reached.
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "sidecar", "serve", "--data-dir", str(data), "--port", str(free_port()),
                         "--config", str(config), "--comfyui-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "sidecar starting" not in line]
    assert len(lines) == 1, proc.stderr
    assert str(db) in lines[0] and "mv " in lines[0] and "Traceback" not in proc.stderr
    assert {"random bytes in a page": "is damaged", "truncated": "is truncated",
            "not a database": "is not an SQLite database"}[how] in lines[0]
    assert db.read_bytes() == before


async def test_a_missing_database_beside_job_images_is_said_aloud(aiohttp_client, tmp_path, backend, caplog) -> None:
    outputs = tmp_path / "data" / "outputs"
    outputs.mkdir(parents=True)
    for i in range(3):
        (outputs / f"{i:032x}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (outputs / f".{0:032x}.png.1234.tmp").write_bytes(b"half")  # left by a daemon killed mid-write
    with caplog.at_level("WARNING", logger="sidecar"):
        client = await start(aiohttp_client, tmp_path, backend)
    health = await (await client.get("/health")).json()
    warning = next(w for w in health["warnings"] if "no job database" in w)
    assert "3 job image(s)" in warning and str(outputs) in warning
    assert any("3 job image(s)" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in outputs.iterdir()) == [f"{i:032x}.png" for i in range(3)]  # temp swept


async def test_a_healthy_database_starts_quietly(aiohttp_client, tmp_path, backend) -> None:
    await make_database(tmp_path / "data" / "sidecar.db", jobs=3)
    (tmp_path / "data" / "outputs").mkdir()
    (tmp_path / "data" / "outputs" / "job0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    client = await start(aiohttp_client, tmp_path, backend)
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["warnings"] == []
    assert len((await (await client.get("/jobs")).json())["jobs"]) == 3
    conn = sqlite3.connect(tmp_path / "data" / "sidecar.db")
    assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    conn.close()

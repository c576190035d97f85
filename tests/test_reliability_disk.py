"""A data dir that really runs out of space while a job writes its image: a small tmpfs (we run as
root on CI and dev boxes; skipped with the reason where mounting is not allowed). The job fails
`disk_full`, a submit meanwhile is 507, the database stays intact, and once space is freed the next
job runs and the failed job's record is written.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from tests.test_api_jobs import submit, wait_status

DONE = {"succeeded", "failed", "cancelled"}
SIZE = "16m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (mount -t tmpfs); run as root to test a full disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk (until ENOSPC)."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as fh:  # unbuffered: nothing left to flush at close
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    fh.write(chunk[:size])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


async def test_a_full_disk_while_a_job_writes_its_image_fails_it_disk_full_and_loses_nothing(
        aiohttp_client, small_disk, comfy_settings, fake_comfy) -> None:
    settings = comfy_settings.model_copy(update={"data_dir": small_disk / "data"})
    client = await aiohttp_client(create_app(settings))
    first = await wait_status(client, (await submit(client, seed=1, steps=3))["id"], DONE)
    assert first["status"] == "succeeded"

    # The second job's image arrives when there is no space left for it.
    fake_comfy.pause_at(2)
    second = await submit(client, seed=2, steps=3)
    await fake_comfy.wait_paused()
    filler = await asyncio.to_thread(fill, small_disk)
    fake_comfy.resume()
    failed = await wait_status(client, second["id"], DONE, timeout=30)
    assert failed["status"] == "failed" and failed["error"]["code"] == "disk_full", failed["error"]
    assert "No space left" in failed["error"]["message"]

    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", "seed": 3, "steps": 3})
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (507, "disk_full"), body
    health = await (await client.get("/health")).json()
    assert health["worker"]["running"] and health["queueDepth"] == 0

    filler.unlink()  # space freed: the queue moves on
    third = await wait_status(client, (await submit(client, seed=4, steps=3))["id"], DONE, timeout=30)
    assert third["status"] == "succeeded"
    outputs = small_disk / "data" / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == sorted(f"{j['id']}.png" for j in (first, third))
    await client.close()

    conn = sqlite3.connect(small_disk / "data" / "sidecar.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = dict(conn.execute("SELECT id, status || ':' || coalesce(error_code, '') FROM jobs").fetchall())
    finally:
        conn.close()
    assert rows == {first["id"]: "succeeded:", second["id"]: "failed:disk_full", third["id"]: "succeeded:"}

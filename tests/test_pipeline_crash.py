"""A version is whole or absent, whoever dies when: the daemon writes a page job's version (image +
workflow + log entry as one journalled commit), so a `sidecar serve` killed (SIGKILL) at every step of
that commit leaves no partial version, and after its restart the job's version is written exactly once
(the journal rolled forward, or the commit made again). `generate` killed or interrupted meanwhile
changes nothing of that: Ctrl-C while rendering cancels the job; SIGKILL leaves the daemon to finish it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from sidecar.config import Settings
from tests.pipeline_daemon import DaemonThread, SeededBackend, copy_example, read_json, run_generate_subprocess
from tests.test_comfy_e2e import START, Daemon, comfy, http  # noqa: F401 - fixtures

RAW = Path("output/ch-01/raw")
LOG = Path("output/ch-01/generation-log.json")

# Runs `sidecar serve`, stopping it (SIGKILL) just before the Nth call of os.<name> on a path in the
# project (fsync: the Nth call once the chapter's lock file is opened, i.e. within the commit).
DRIVER = """
import os, signal, sys
name, nth, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real, real_open = getattr(os, name), os.open
calls = 0
committing = False
def opening(path, *args, **kwargs):
    global committing
    if str(path).startswith(root):
        committing = True
    return real_open(path, *args, **kwargs)
def stop_at_nth(*args, **kwargs):
    global calls
    if (name == "fsync" and committing) or (name != "fsync" and str(args[0]).startswith(root)):
        calls += 1
        if calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
os.open = opening
setattr(os, name, stop_at_nth)
from sidecar.cli import main
main(sys.argv[4:], prog_name="sidecar")
"""

# The commit of a first version, in order: temps written and fsynced (image, workflow, log), the journal
# put in place (replace 1), image and workflow linked into place, the log replaced (replace 2), temps
# unlinked, the journal removed (unlink 3).
# The second item of each point: whether the commit is decided (journal in place) when it dies there.
KILL_POINTS = [("fsync", 1, False), ("fsync", 3, False), ("replace", 1, False), ("link", 1, True),
               ("link", 2, True), ("replace", 2, True), ("unlink", 3, True)]


class DyingDaemon(Daemon):
    """`sidecar serve` on the fake ComfyUI, started through DRIVER when `stop` is set."""

    stop_at: tuple[str, int, Path] | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        if self.stop_at is None:
            return await super().start(http)
        config = self.data_dir.parent / "sidecar.toml"
        config.touch()
        name, nth, root = self.stop_at
        log_path = self.data_dir.parent / f"daemon-{self.port}.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", DRIVER, name, str(nth), str(root), "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--comfyui-url", self.comfy.url, "--config", str(config)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log_path.read_text()
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{self.url}/health") as resp:
                    if resp.status == 200 and (await resp.json())["comfyui"]:
                        return
            await asyncio.sleep(0.1)
        raise AssertionError("the daemon did not start in time")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "project")


def versioned_state(project: Path) -> dict[int, set[str]]:
    """version -> which of its parts exist in final form: "png", "workflow", "entry"."""
    state: dict[int, set[str]] = {}
    raw = project / RAW
    for png in raw.glob("ch01_p001_v*.png"):
        with Image.open(png) as img:
            img.load()  # a final name never holds half a PNG
        state.setdefault(int(png.stem.split("_v")[1]), set()).add("png")
    for wf in raw.glob("ch01_p001_v*.workflow.json"):
        json.loads(wf.read_text())
        state.setdefault(int(wf.name.split("_v")[1].split(".")[0]), set()).add("workflow")
    if (project / LOG).exists():
        for entry in read_json(project / LOG):
            state.setdefault(entry["version"], set()).add("entry")
    return state


def hidden_leftovers(project: Path) -> list[str]:
    return sorted(p.name for p in (project / "output").rglob(".generate-*"))


def generate(project: Path, url: str) -> subprocess.Popen:
    return run_generate_subprocess(["--comfyui", "-c", "1", "--page", "1", "--root", str(project), "--daemon", url])


async def page_job(http: aiohttp.ClientSession, d: Daemon, project: Path) -> str:
    async with http.post(f"{d.url}/jobs", json={"page": {"chapter": 1, "page": 1, "project": str(project)},
                                                "steps": 2}) as resp:
        assert resp.status == 202, await resp.text()
        return (await resp.json())["id"]


async def wait_done(http: aiohttp.ClientSession, d: Daemon, job_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{d.url}/jobs/{job_id}") as resp:
            job = await resp.json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


@pytest.mark.parametrize(("name", "nth", "decided"), KILL_POINTS)
async def test_daemon_killed_mid_write_leaves_no_partial_version_and_writes_it_once_after_restart(
        tmp_path: Path, project: Path, comfy, http, name: str, nth: int, decided: bool) -> None:
    d = DyingDaemon(tmp_path / "data", comfy)
    d.stop_at = (name, nth, project)
    await d.start(http)
    try:
        job_id = await page_job(http, d, project)
        assert d.proc is not None
        for _ in range(600):  # the fake ComfyUI runs on this loop: wait without blocking it
            if d.proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert d.proc.returncode == -signal.SIGKILL, (tmp_path / f"daemon-{d.port}.log").read_text()
        state = versioned_state(project)
        assert (project / RAW / ".generate-journal.json").exists() == decided
        if not decided:
            assert state == {}, state  # nothing of v1 is visible
        # Restarted: the job is collected from ComfyUI again and its version completed, once.
        d.stop_at = None
        await d.start(http)
        job = await wait_done(http, d, job_id)
        assert job["status"] == "succeeded", job
        assert job["pageVersion"] == {"chapter": 1, "page": 1, "version": 1, "file": "output/ch-01/raw/ch01_p001_v1.png"}
        assert versioned_state(project) == {1: {"png", "workflow", "entry"}}
        assert [e["jobId"] for e in read_json(project / LOG)] == [job_id]
        assert hidden_leftovers(project) == []
    finally:
        d.stop()


async def test_daemon_killed_mid_render_still_publishes_the_version_after_its_restart(
        tmp_path: Path, project: Path, comfy, http) -> None:
    d = Daemon(tmp_path / "data", comfy)
    await d.start(http)
    try:
        comfy.pause_at(1)
        job_id = await page_job(http, d, project)
        await comfy.wait_paused()
        d.kill()  # SIGKILL mid-render: no client is connected, none will be
        comfy.resume()
        await d.start(http)
        job = await wait_done(http, d, job_id)
        assert job["status"] == "succeeded" and job["pageVersion"]["version"] == 1, job
        assert versioned_state(project) == {1: {"png", "workflow", "entry"}} and hidden_leftovers(project) == []
        second = await wait_done(http, d, await page_job(http, d, project))
        assert second["pageVersion"]["version"] == 2
    finally:
        d.stop()


def test_generate_killed_while_rendering_leaves_the_daemon_to_write_the_version(project: Path, tmp_path: Path) -> None:
    backend = SeededBackend()
    backend.auto_release = False  # the job stays running until released
    daemon = DaemonThread(Settings(data_dir=tmp_path / "data2", engine="embedded"), backend).start()
    try:
        proc = generate(project, daemon.url)
        job = daemon.wait_running()[0]
        proc.kill()
        proc.communicate(timeout=60)
        daemon.call(_release(backend, job["id"]))
        for _ in range(250):
            if daemon.jobs()[0]["status"] == "succeeded":
                break
            time.sleep(0.02)
        assert daemon.jobs()[0]["pageVersion"]["version"] == 1
        assert versioned_state(project) == {1: {"png", "workflow", "entry"}} and hidden_leftovers(project) == []
    finally:
        daemon.stop()


async def _release(backend: SeededBackend, job_id: str) -> None:
    backend.release(job_id)


def test_ctrl_c_while_rendering_cancels_the_job_and_writes_nothing(project: Path, tmp_path: Path) -> None:
    backend = SeededBackend()
    backend.auto_release = False  # the job stays running until released
    daemon = DaemonThread(Settings(data_dir=tmp_path / "data2", engine="embedded"), backend).start()
    try:
        proc = run_generate_subprocess(["-c", "1", "--page", "1", "--root", str(project), "--daemon", daemon.url])
        daemon.wait_running()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        for _ in range(250):
            if daemon.jobs()[0]["status"] == "cancelled":
                break
            time.sleep(0.02)
        assert daemon.jobs()[0]["status"] == "cancelled"
        assert versioned_state(project) == {} and hidden_leftovers(project) == []
    finally:
        daemon.stop()

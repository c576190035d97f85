"""Managed mode: the daemon starts ComfyUI (here: the fake behind a `main.py`), restarts it when it
dies, gives up on jobs after the deadline while it cannot start, and stops it with the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.comfyui.backend import ComfyBackend
from sidecar.config import Settings
from sidecar.errors import ComfyUnavailable, PromptLost
from tests.conftest_comfy import free_port, make_job, python_wrapper, workflow, write_fake_main
from tests.fake_comfyui import FakeComfyUI

START = 30.0  # generous: the fake imports numpy, pillow and aiohttp on a shared 2-core machine


def managed_settings(tmp_path: Path, comfy_dir: Path, **overrides) -> Settings:
    values = dict(data_dir=tmp_path / "data", engine="comfyui", comfyui_dir=comfy_dir,
                  comfyui_python=python_wrapper(tmp_path / "venv-bin"), comfyui_port=free_port(), comfyui_start_timeout=START,
                  comfyui_unavailable_deadline=START, history_poll_interval=0.2)
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def managed(settings: Settings) -> AsyncIterator[ComfyBackend]:
    backend = ComfyBackend(settings, restart_backoff=(0.1, 0.5))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until(condition, timeout: float = START) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_managed_comfyui_starts_with_the_seed_flags_and_runs_jobs(fake_comfy_install, tmp_path) -> None:
    settings = managed_settings(tmp_path, fake_comfy_install)
    async with managed(settings) as backend:
        health = await backend.health()  # the daemon answers at once, before ComfyUI is up
        assert backend.supervisor is not None and await backend.supervisor.wait_ready(START)
        health = await backend.health()
        assert health.available and health.warnings == [] and health.extra["mode"] == "managed"
        assert health.extra["argv"] == ["main.py", "--force-fp16", "--fp32-vae", "--listen", "127.0.0.1",
                                        "--port", str(settings.comfyui_port)]
        assert backend.models_dir("loras") == fake_comfy_install / "models" / "loras"
        result = await backend.run(make_job(tmp_path, workflow()).ctx)
        assert result.output_path.is_file()
    log = (settings.logs_dir / "comfyui.log").read_text()
    assert "sidecar starts ComfyUI" in log and "--fp32-vae" in log
    assert "To see the GUI go to" in log  # ComfyUI's own output lands in the log


async def test_managed_comfyui_is_restarted_when_it_dies(fake_comfy_install, tmp_path) -> None:
    settings = managed_settings(tmp_path, fake_comfy_install)
    async with managed(settings) as backend:
        supervisor = backend.supervisor
        assert supervisor is not None and await supervisor.wait_ready(START)
        first = supervisor.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_until(lambda: supervisor.starts == 2 and supervisor.ready.is_set())
        assert supervisor.pid not in (None, first) and not alive(first)
        assert (await backend.health()).available
        result = await backend.run(make_job(tmp_path, workflow()).ctx)
        assert result.output_path.is_file()


async def test_job_in_flight_when_comfyui_dies_is_lost_then_runs_after_restart(fake_comfy_install, tmp_path,
                                                                               monkeypatch) -> None:
    monkeypatch.setenv("FAKE_COMFYUI_STEP_DELAY", "0.05")  # inherited by the managed process
    settings = managed_settings(tmp_path, fake_comfy_install)
    async with managed(settings) as backend:
        supervisor = backend.supervisor
        assert supervisor is not None and await supervisor.wait_ready(START)
        job = make_job(tmp_path, workflow(steps=200))
        task = asyncio.create_task(backend.run(job.ctx))
        await wait_until(lambda: bool(job.progress))
        os.kill(supervisor.pid, signal.SIGKILL)
        with pytest.raises(PromptLost) as lost:
            await asyncio.wait_for(task, START)
        assert lost.value.details["prompt_id"] == job.prompt_ids[0]
        # What the runner does next: run the job again; it waits for the restarted ComfyUI.
        retry = make_job(tmp_path, workflow(steps=2), job_id="retry")
        result = await asyncio.wait_for(backend.run(retry.ctx), START)
        assert result.output_path.is_file() and supervisor.starts == 2


async def test_stopping_the_daemon_stops_comfyui(fake_comfy_install, tmp_path) -> None:
    settings = managed_settings(tmp_path, fake_comfy_install)
    async with managed(settings) as backend:
        assert backend.supervisor is not None and await backend.supervisor.wait_ready(START)
        pid = backend.supervisor.pid
    assert pid is not None and not alive(pid)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(f"http://127.0.0.1:{settings.comfyui_port}/system_stats")


async def test_jobs_fail_unavailable_while_comfyui_cannot_start(comfy_home, tmp_path) -> None:
    write_fake_main(comfy_home, "import sys\nprint('ModuleNotFoundError: No module named torch')\nsys.exit(1)\n")
    settings = managed_settings(tmp_path, comfy_home, comfyui_unavailable_deadline=1.5)
    async with managed(settings) as backend:
        with pytest.raises(ComfyUnavailable) as down:
            await backend.run(make_job(tmp_path, workflow()).ctx)
        assert down.value.code == "comfyui_unavailable"
        health = await backend.health()
        assert not health.available and health.warnings
        assert backend.supervisor is not None and backend.supervisor.starts >= 2  # retried with backoff
        assert backend.supervisor.last_exit == 1
    assert "No module named torch" in (settings.logs_dir / "comfyui.log").read_text()


async def test_comfyui_that_never_answers_is_killed_and_started_again(comfy_home, tmp_path) -> None:
    write_fake_main(comfy_home, "import time\nprint('loading models', flush=True)\ntime.sleep(600)\n")
    settings = managed_settings(tmp_path, comfy_home, comfyui_start_timeout=0.5)
    async with managed(settings) as backend:
        supervisor = backend.supervisor
        assert supervisor is not None
        await wait_until(lambda: supervisor.pid is not None)
        first = supervisor.pid
        await wait_until(lambda: supervisor.starts >= 2 and supervisor.pid not in (None, first))
        assert not alive(first) and not supervisor.ready.is_set()
        last = supervisor.pid
    assert last is None or not alive(last)


async def test_a_comfyui_already_on_the_port_is_used_not_duplicated(comfy_home, tmp_path) -> None:
    settings = managed_settings(tmp_path, comfy_home)
    other = FakeComfyUI(comfy_home, port=settings.comfyui_port)  # e.g. launchd's, or an orphan
    await other.start()
    try:
        async with managed(settings) as backend:
            assert backend.supervisor is not None and await backend.supervisor.wait_ready(START)
            assert backend.supervisor.starts == 0 and (await backend.health()).available
            result = await backend.run(make_job(tmp_path, workflow()).ctx)
            assert result.output_path.is_file()
    finally:
        await other.stop()


def test_comfyui_log_is_rotated_between_runs(tmp_path) -> None:
    from sidecar.comfyui.supervisor import rotate

    log = tmp_path / "comfyui.log"
    rotate(log, limit=10)  # no log yet: nothing to do
    for run in range(5):
        log.write_text(f"run {run}: " + "x" * 20)
        rotate(log, limit=10, backups=3)
    assert not log.exists()
    assert [(tmp_path / f"comfyui.log.{n}").read_text()[:5] for n in (1, 2, 3)] == ["run 4", "run 3", "run 2"]
    log.write_text("small")
    rotate(log, limit=10, backups=3)
    assert log.read_text() == "small"  # under the limit: kept

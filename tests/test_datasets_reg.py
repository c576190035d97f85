"""`sidecar dataset reg` against the real daemon app (scripted backend) on a local port: base-model jobs
with no LoRA, captions, resume after a stop, a failed job, a busy device and a daemon that is not there."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner
from PIL import Image

from sidecar.api.app import create_app
from sidecar.api.keys import DEVICE
from sidecar.cli import main
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend

PROMPT = "anime character, full body, simple background"


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def daemon(aiohttp_server, tmp_path, backend):
    app = create_app(Settings(data_dir=tmp_path / "data", engine="embedded"), backend)
    server = await aiohttp_server(app)
    return app, str(server.make_url("")).rstrip("/")


async def reg(url: str, out: Path, *args: str):
    # The CLI runs its own event loop: give it a thread while this loop serves the daemon.
    argv = ["dataset", "reg", "--prompt", PROMPT, "--out", str(out), "--url", url, "--poll-interval", "0.02", *args]
    return await asyncio.to_thread(CliRunner().invoke, main, argv)


async def test_reg_renders_base_model_images_with_captions_and_resumes(daemon, backend, tmp_path):
    app, url = daemon
    out = tmp_path / "reg"
    first = await reg(url, out, "--count", "3", "--seed", "100")
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.glob("reg_*")) == [f"reg_000{i}.{e}" for i in (1, 2, 3) for e in ("png", "txt")]
    assert (out / "reg_0002.txt").read_text() == PROMPT + "\n"
    assert Image.open(out / "reg_0001.png").size == (512, 512)
    assert "[3/3] reg_0003.png seed 102" in first.output  # plain lines when not a terminal

    # A stop mid-set: image 2 was never saved. The run goes on where it stopped, to a larger count.
    (out / "reg_0002.png").unlink()
    backend.started.clear()
    second = await reg(url, out, "--count", "5", "--seed", "100")
    assert second.exit_code == 0, second.output
    assert "2 of 5 image(s) already" in second.output and len(backend.started) == 3
    assert len(list(out.glob("reg_*.png"))) == 5

    async with aiohttp.ClientSession() as session:
        jobs = (await (await session.get(f"{url}/jobs?limit=50")).json())["jobs"]
    assert len(jobs) == 6
    assert {j["workflowTemplate"] for j in jobs} == {"txt2img"}  # no loraId: the base model alone
    assert all(j["params"].get("loraId") is None for j in jobs)
    assert sorted(j["params"]["seed"] for j in jobs) == [100, 101, 101, 102, 103, 104]
    assert {(j["params"]["width"], j["params"]["height"]) for j in jobs} == {(512, 512)}


async def test_a_failed_job_stops_the_run_and_keeps_what_was_rendered(daemon, backend, tmp_path):
    _, url = daemon
    backend.script = ["ok", "fail"]
    out = tmp_path / "reg"
    result = await reg(url, out, "--count", "3")
    assert result.exit_code == 1
    assert "reg_0002.png" in result.output and "execution_error" in result.output and "resume" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["reg_0001.png"]
    again = await reg(url, out, "--count", "3")
    assert again.exit_code == 0 and len(list(out.glob("*.png"))) == 3


async def test_other_settings_are_refused_on_resume(daemon, tmp_path):
    _, url = daemon
    out = tmp_path / "reg"
    assert (await reg(url, out, "--count", "1")).exit_code == 0
    argv = ["dataset", "reg", "--prompt", "a different prompt", "--out", str(out), "--url", url, "--count", "2"]
    result = await asyncio.to_thread(CliRunner().invoke, main, argv)
    assert result.exit_code == 2 and "prompt" in result.output and "reg.json" in result.output
    assert len(list(out.glob("*.png"))) == 1


async def test_training_in_progress_exits_device_busy(daemon, tmp_path):
    app, url = daemon
    app[DEVICE].training.open("run-1", lambda: {"id": "run-1", "status": "running", "step": 40, "total": 1000})
    result = await reg(url, tmp_path / "reg", "--count", "2")
    assert result.exit_code == 4 and "training" in result.output and "run-1" in result.output
    assert not (tmp_path / "reg").exists()


async def test_no_daemon_exits_3_with_the_fix(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = await reg(f"http://127.0.0.1:{port}", tmp_path / "reg", "--count", "2")
    assert result.exit_code == 3 and "sidecar serve" in result.output
    assert not (tmp_path / "reg").exists()


async def test_training_that_starts_mid_set_exits_device_busy_and_keeps_the_images(daemon, backend, tmp_path):
    app, url = daemon
    out = tmp_path / "reg"
    # A training run is queued while image 1 renders: the daemon answers 409 to the next POST /jobs.
    original = backend.run

    async def run_then_train(ctx):
        result = await original(ctx)
        app[DEVICE].training.open("run-2", lambda: {"id": "run-2", "status": "queued"})
        return result

    backend.run = run_then_train
    result = await reg(url, out, "--count", "3")
    assert result.exit_code == 4 and "training_in_progress" in result.output
    assert sorted(p.name for p in out.glob("*.png")) == ["reg_0001.png"]

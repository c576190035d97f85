"""Managed mode: the daemon starts ComfyUI (here: the fake behind a `main.py`), restarts it when it
dies, gives up on jobs after the deadline while it cannot start, and stops it with the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.comfyui.backend import ComfyBackend
from sidecar.config import Settings
from sidecar.errors import ComfyUnavailable, PromptLost
from sidecar.comfyui.supervisor import CRASH_LOOP_EXITS
from sidecar.doctor.checks import check_managed_launch
from tests.conftest_comfy import free_port, make_job, python_wrapper, workflow, write_fake_main
from tests.fake_comfyui import FakeComfyUI, load_fixture
from tests.processes import alive

START = 30.0  # generous: the fake imports numpy, pillow and aiohttp on a shared 2-core machine


def managed_settings(tmp_path: Path, comfy_dir: Path, **overrides) -> Settings:
    # device "cpu": launched with --cpu without asking ComfyUI's torch (4 s here); one test asks it.
    values = dict(data_dir=tmp_path / "data", engine="comfyui", comfyui_dir=comfy_dir,
                  comfyui_python=python_wrapper(tmp_path / "venv-bin"), comfyui_port=free_port(), comfyui_start_timeout=START,
                  comfyui_unavailable_deadline=START, history_poll_interval=0.2, device="cpu")
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
        # A CPU server: fp32 weights (no --force-fp16, which costs it a cast per layer per step).
        assert health.extra["argv"] == ["main.py", "--fp32-vae", "--listen", "127.0.0.1",
                                        "--port", str(settings.comfyui_port), "--cpu", "--preview-method",
                                        "latent2rgb"]  # live previews: ComfyUI sends none by default
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


# What ComfyUI 0.3.64 printed last when launched without --cpu on a machine with no NVIDIA driver
# (`fixtures/comfyui/view-metadata-and-launch.json`): it exits 1 at import.
NO_DRIVER = load_fixture("view-metadata-and-launch.json")["launch_without_cpu_flag_on_a_machine_without_nvidia"]
CRASHING_MAIN = f"""import sys
print("Checkpoint files will always be loaded safely.", flush=True)
print({NO_DRIVER["stderr_last_line_starts"]!r}, file=sys.stderr, flush=True)
sys.exit({NO_DRIVER["exit_code"]})
"""


async def test_a_comfyui_that_dies_at_start_up_is_reported_within_seconds_and_not_restarted_for_ever(
        comfy_home, tmp_path) -> None:
    write_fake_main(comfy_home, CRASHING_MAIN)
    # The default deadline (300 s): the job must not wait for it.
    settings = managed_settings(tmp_path, comfy_home, comfyui_unavailable_deadline=300.0)
    async with managed(settings) as backend:
        supervisor = backend.supervisor
        assert supervisor is not None
        with pytest.raises(ComfyUnavailable) as down:
            await asyncio.wait_for(backend.run(make_job(tmp_path, workflow()).ctx), START)
        assert down.value.code == "comfyui_unavailable"
        assert "exit code 1" in down.value.message and "Found no NVIDIA driver" in down.value.message
        details = down.value.details
        assert details["exitCode"] == 1 and details["gaveUp"] is True
        assert details["logTail"][-1].startswith("RuntimeError: Found no NVIDIA driver on your system")
        assert supervisor.starts == CRASH_LOOP_EXITS
        await asyncio.sleep(1.5)  # longer than the backoff: a loop would have started it again
        assert supervisor.starts == CRASH_LOOP_EXITS and supervisor.pid is None
        health = await backend.health()
        assert not health.available and "Found no NVIDIA driver" in health.warnings[0]
        assert health.extra["startupFailure"]["exitCode"] == 1 and health.extra["lastExit"] == 1
        # A second job fails at once too, with the same reason.
        with pytest.raises(ComfyUnavailable) as again:
            await asyncio.wait_for(backend.run(make_job(tmp_path, workflow(), job_id="j2").ctx), 5)
        assert again.value.details["exitCode"] == 1
    log = (settings.logs_dir / "comfyui.log").read_text()
    assert log.count("sidecar starts ComfyUI") == CRASH_LOOP_EXITS and "exited with code 1" in log
    # `sidecar doctor` reads the same from the log, daemon or not, and shows the launch it would do.
    checks = {c.name: c for c in check_managed_launch(settings)}
    assert checks["comfyui launch"].detail.startswith(f"{settings.comfyui_python} main.py --fp32-vae")
    assert "--cpu" in checks["comfyui launch"].detail
    last = checks["comfyui last run"]
    assert last.status == "fail" and "exited with code 1" in last.detail and "Found no NVIDIA driver" in last.detail


async def test_managed_launch_adds_cpu_where_comfyuis_torch_sees_no_gpu_and_the_extra_flags(
        fake_comfy_install, tmp_path) -> None:
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU: ComfyUI needs no --cpu here")
    settings = managed_settings(tmp_path, fake_comfy_install, device="auto",
                                comfyui_extra_args="--preview-method auto --dont-print-server")
    async with managed(settings) as backend:
        # Importing torch in ComfyUI's python comes first (4 s here, more on a busy machine).
        assert backend.supervisor is not None and await backend.supervisor.wait_ready(3 * START)
        argv = (await backend.health()).extra["argv"]
    assert argv[-4:] == ["--cpu", "--preview-method", "auto", "--dont-print-server"]


def test_device_flags_follow_the_setting_and_the_users_own_flags() -> None:
    from sidecar.comfyui.launch import device_flags, extra_args

    none = {"cuda": False, "mps": False, "xpu": False}
    assert device_flags("auto", [], none) == ["--cpu"]
    assert device_flags("auto", [], {**none, "mps": True}) == []
    assert device_flags("auto", [], None) == []  # cannot tell: ComfyUI's own error will say
    assert device_flags("cpu", [], {**none, "cuda": True}) == ["--cpu"]
    assert device_flags("auto", extra_args("--cpu --preview-method auto"), none) == []
    assert device_flags("auto", extra_args("--directml=1"), none) == []
    assert extra_args("--output-directory '/Volumes/My Disk/out'") == ["--output-directory", "/Volumes/My Disk/out"]


def test_force_fp16_goes_to_a_gpu_server_only() -> None:
    # On the CPU --force-fp16 stores the UNet in fp16 and casts each layer back to fp32 at every step
    # (bench/comfy_cpu_dtype.py): a CPU server, whoever chose --cpu, gets fp32 weights.
    from sidecar.comfyui.launch import launch_command

    python = Path("/venv/bin/python")
    assert launch_command(python, 8188, [])[2:4] == ["--force-fp16", "--fp32-vae"]  # CUDA or MPS
    assert "--force-fp16" not in launch_command(python, 8188, ["--cpu"])
    assert "--force-fp16" not in launch_command(python, 8188, [], ["--cpu", "--preview-method", "auto"])
    assert "--fp32-vae" in launch_command(python, 8188, ["--cpu"])


def test_comfyui_extra_args_setting_is_split_like_a_shell_and_a_bad_one_names_the_key(tmp_path) -> None:
    from sidecar.config import load_settings
    from sidecar.errors import ConfigError

    settings, sources = load_settings(environ={"SIDECAR_COMFYUI_EXTRA_ARGS": "--cpu --preview-method auto"})
    assert settings.comfyui_extra_args == "--cpu --preview-method auto"
    assert sources["comfyui_extra_args"] == "env SIDECAR_COMFYUI_EXTRA_ARGS"
    with pytest.raises(ConfigError) as bad:
        load_settings(environ={"SIDECAR_COMFYUI_EXTRA_ARGS": "--output-directory 'unclosed"})
    assert "comfyui_extra_args" in str(bad.value)


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


# A ComfyUI that answers, then sits mid-sampling: tqdm redraws its bar with "\r" and ends no line.
MID_SAMPLING_MAIN = """import http.server, sys
class Stats(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Stats)
print("To see the GUI go to: http://127.0.0.1", flush=True)
sys.stderr.write("\\r 20%|##        | 2/10 [00:01<00:04]\\r 50%|#####     | 5/10 [00:02<00:02]")
sys.stderr.flush()
server.serve_forever()
"""


async def test_the_exit_line_starts_its_own_line_after_a_progress_bar_and_a_stop_writes_one(
        comfy_home, tmp_path) -> None:
    from sidecar.comfyui.launch import last_run

    write_fake_main(comfy_home, MID_SAMPLING_MAIN)
    settings = managed_settings(tmp_path, comfy_home)
    log_path = settings.logs_dir / "comfyui.log"
    async with managed(settings) as backend:
        supervisor = backend.supervisor
        assert supervisor is not None and await supervisor.wait_ready(START)
        first = supervisor.pid
        os.kill(first, signal.SIGKILL)  # a crash mid-sampling
        await wait_until(lambda: supervisor.starts == 2 and supervisor.ready.is_set())
        crashed = log_path.read_text().split("sidecar starts ComfyUI")[1]
        assert re.search(rf"\| 5/10 \[00:02<00:02\]\n=== \S+ \S+ ComfyUI \(pid {first}\) exited with code -9\n",
                         crashed), crashed
        # What `last_run` and `sidecar doctor` read of that run (the log as it stood then).
        then = tmp_path / "then.log"
        then.write_text(log_path.read_text().rsplit("\n=== ", 1)[0] + "\n")
        run = last_run(then)
        assert run is not None and run.ended and run.exit_code == -9 and not run.stopped
        second = supervisor.pid
    # The daemon stopped the second run: an exit line follows it too, on its own line, and it is no failure.
    text = log_path.read_text()
    assert re.search(rf"\| 5/10 \[00:02<00:02\]\n=== \S+ \S+ ComfyUI \(pid {second}\) exited with code -15 "
                     r"\(stopped by the daemon\)\n$", text), text[-300:]
    run = last_run(log_path)
    assert run is not None and run.ended and run.stopped and run.exit_code == -15
    checks = {c.name: c for c in check_managed_launch(settings)}
    assert checks["comfyui last run"].status == "ok" and "stopped by the daemon" in checks["comfyui last run"].detail


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


async def test_queued_jobs_fail_within_seconds_with_the_reason_when_managed_comfyui_cannot_start(
        comfy_home, tmp_path, aiohttp_client) -> None:
    from sidecar.api.app import create_app

    write_fake_main(comfy_home, CRASHING_MAIN)
    settings = managed_settings(tmp_path, comfy_home, comfyui_unavailable_deadline=300.0)
    client = await aiohttp_client(create_app(settings))
    ids = []
    for seed in (1, 2):  # the second waits behind the first in the daemon's queue
        resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "seed": seed, "steps": 2})
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["id"])

    async def ended(job_id: str) -> dict:
        while True:
            job = await (await client.get(f"/jobs/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            await asyncio.sleep(0.1)

    for job_id in ids:
        job = await asyncio.wait_for(ended(job_id), START)  # far sooner than the 300 s deadline
        assert job["status"] == "failed" and job["error"]["code"] == "comfyui_unavailable"
        assert job["error"]["details"]["exitCode"] == 1 and "Found no NVIDIA driver" in job["error"]["message"]
    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded" and "Found no NVIDIA driver" in health["warnings"][0]
    assert health["backend"]["startupFailure"]["gaveUp"] is True

"""One daemon per data dir: the lock is taken before anything touches the data dir, a second daemon (a real
`sidecar serve`, an in-process app, `doctor --bench`) exits naming the owner and changes nothing, even
while the first one trains with kohya; and a busy port is found before recovery runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.api.app import create_app
from sidecar.api.keys import DATADIR_LOCK
from sidecar.config import Settings
from sidecar.datadir_lock import DataDirLock, locked_by
from sidecar.errors import DataDirLocked
from tests.conftest_comfy import free_port
from tests.scripted_backend import ScriptedBackend
from tests.processes import alive
from tests.training_fixtures import dataset_dir, kohya_dir  # noqa: F401  (fixtures)

START = 60.0  # a real `sidecar serve` imports torch for the embedded engine on a shared 2-core machine


# -- the lock itself --------------------------------------------------------------------------------
def test_a_second_lock_names_the_owner_and_a_released_one_is_free(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path / "data")
    first.acquire("127.0.0.1", 3123)
    assert locked_by(tmp_path / "data").pid == os.getpid()
    with pytest.raises(DataDirLocked) as exc:
        DataDirLock(tmp_path / "data").acquire("127.0.0.1", 3999)
    assert exc.value.details["pid"] == os.getpid() and exc.value.details["port"] == 3123
    assert f"pid {os.getpid()}, port 3123" in exc.value.message
    assert json.loads((tmp_path / "data" / "sidecar.lock").read_text())["port"] == 3123  # the loser wrote nothing
    first.release()
    assert locked_by(tmp_path / "data") is None
    again = DataDirLock(tmp_path / "data")
    again.acquire("127.0.0.1", 3999)
    again.release()


def test_the_lock_of_a_killed_daemon_is_free(tmp_path: Path) -> None:
    script = ("import sys, time; from pathlib import Path; from sidecar.datadir_lock import DataDirLock; "
              "DataDirLock(Path(sys.argv[1])).acquire('127.0.0.1', 3124); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert locked_by(tmp_path / "data").pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert locked_by(tmp_path / "data") is None  # kill -9 leaves no stale lock: the next daemon starts


async def test_an_app_on_a_locked_data_dir_starts_nothing(aiohttp_client, tmp_path: Path) -> None:
    owner = DataDirLock(tmp_path / "data")
    owner.acquire("127.0.0.1", 3125)
    backend = ScriptedBackend()
    try:
        with pytest.raises(DataDirLocked):
            await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data", engine="embedded"), backend))
        assert not (tmp_path / "data" / "sidecar.db").exists()  # the store was never opened
    finally:
        owner.release()
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data", engine="embedded"), backend))
    assert (await client.get("/health")).status == 200
    assert locked_by(tmp_path / "data").pid == os.getpid()


# -- doctor --bench ---------------------------------------------------------------------------------
async def test_bench_never_starts_a_daemon_on_a_locked_data_dir(tmp_path: Path) -> None:
    from sidecar.doctor.bench import run_bench

    owner = DataDirLock(tmp_path / "data")
    owner.acquire("127.0.0.1", free_port())  # its owner does not answer (hung, or starting)
    backend = ScriptedBackend()
    try:
        with pytest.raises(DataDirLocked) as exc:
            await run_bench(Settings(data_dir=tmp_path / "data", engine="embedded"),
                            f"http://127.0.0.1:{free_port()}", 1, 0.02, backend=backend)
        assert str(os.getpid()) in exc.value.message
        assert backend.started == [] and not (tmp_path / "data" / "sidecar.db").exists()
    finally:
        owner.release()


async def test_bench_uses_the_daemon_that_owns_the_data_dir(aiohttp_server, tmp_path: Path) -> None:
    from sidecar.doctor.bench import run_bench

    settings = Settings(data_dir=tmp_path / "data", engine="embedded")
    backend = ScriptedBackend()
    server = await aiohttp_server(create_app(settings, backend))  # holds the lock
    server.app[DATADIR_LOCK].record_port(server.port)  # as the bench's own in-process daemon records it
    assert locked_by(settings.data_dir).port == server.port
    result = await run_bench(settings, f"http://127.0.0.1:{free_port()}", 1, 0.02)
    assert result["source"] == f"daemon at http://127.0.0.1:{server.port} (the one that owns {settings.data_dir})"
    assert [r["status"] for r in result["runs"]] == ["succeeded"] and len(backend.started) == 1


# -- two real `sidecar serve` processes ---------------------------------------------------------------
def serve(data_dir: Path, port: int, *extra: str, env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen:
    config = data_dir.parent / "empty.toml"  # the user's own config never leaks in
    config.touch()
    out = log.open("ab") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--config", str(config), *extra],
        env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=log is None)


def get(url: str, timeout: float = 5) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def post(url: str, body: dict) -> Any:
    import urllib.request

    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_second_daemon_leaves_a_live_training_run_alone(tmp_path: Path, kohya_dir: Path, dataset_dir: Path) -> None:
    data = tmp_path / "data"
    checkpoint = data / "models" / "checkpoints" / "anything-v5.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a real model: the fake trainer only checks it exists")
    pids = tmp_path / "trainer.pids"
    env = {"FAKE_KOHYA_STEP_SECONDS": "0.1", "FAKE_KOHYA_PIDFILE": str(pids)}  # 500 s: it outlives the test
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Attached to a ComfyUI that is not there (no torch to import; the client_id file is still written).
    daemon_args = ["--engine", "comfyui", "--comfyui-url", f"http://127.0.0.1:{free_port()}",
                   "--kohya-dir", str(kohya_dir), "--models-dir", str(data / "models")]
    first = serve(data, port, *daemon_args, env=env, log=tmp_path / "first.log")
    try:
        wait_for(lambda: get(f"{url}/health")["status"], START, "the first daemon")
        run = post(f"{url}/loras/train", {"datasetDir": str(dataset_dir), "outputName": "spyke", "steps": 5000, "force": True,
                                          "saveEveryNSteps": 1000, "engine": "kohya"})
        wait_for(lambda: get(f"{url}/loras/{run['id']}/status")["step"] > 0, 60, "training to run")
        leader, worker = (int(p) for p in pids.read_text().split())
        lock_before = (data / "sidecar.lock").read_text()

        other_port = free_port()
        client_id = (data / "comfyui-client-id").read_text()
        second = serve(data, other_port, *daemon_args, env=env)
        out, err = second.communicate(timeout=START)
        assert second.returncode == 1, out + err
        assert f"pid {first.pid}, port {port}" in err and str(data) in err

        # It changed nothing: the trainer's process group runs on, the run is still running and
        # progressing, the lock still names the first daemon, nothing wrote the database.
        assert alive(leader) and alive(worker)
        status = get(f"{url}/loras/{run['id']}/status")
        assert status["status"] == "running" and status.get("error") is None
        step = status["step"]
        wait_for(lambda: get(f"{url}/loras/{run['id']}/status")["step"] > step, 30, "training to go on")
        assert (data / "sidecar.lock").read_text() == lock_before
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{other_port}/health", timeout=1)  # it never listened
        assert "starting" not in err  # it stopped before logging its start-up
        assert (data / "comfyui-client-id").read_text() == client_id
    finally:
        stop(first)  # a clean stop ends the trainer too; make sure of it whatever happened above
        if pids.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(pids.read_text().split()[0]), signal.SIGKILL)


def test_a_busy_port_is_found_before_recovery(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = serve(data, port, "--engine", "embedded")
        out, err = proc.communicate(timeout=START)
    assert proc.returncode == 1, out + err
    assert f"127.0.0.1:{port}" in err and "--port" in err
    assert not (data / "sidecar.db").exists() and not (data / "logs").exists()  # no recovery, no log
    assert locked_by(data) is None  # and the lock went with it


def test_gc_offline_never_writes_a_data_dir_another_daemon_owns(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sidecar.cli import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "sidecar.db").write_bytes(b"")  # a database exists: gc would open it offline
    owner = DataDirLock(data)
    owner.acquire("127.0.0.1", 3126)  # a daemon that owns the data dir and does not answer on gc's port
    try:
        before = (data / "sidecar.db").stat().st_mtime_ns
        result = CliRunner().invoke(main, ["gc", "--data-dir", str(data), "--port", str(free_port())],
                                    env={"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "SIDECAR_CONFIG": None})
        assert result.exit_code == 1, result.output
        assert f"pid {os.getpid()}, port 3126" in result.output
        assert (data / "sidecar.db").stat().st_mtime_ns == before and (data / "sidecar.db").read_bytes() == b""
    finally:
        owner.release()

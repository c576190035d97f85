"""Under launchd the logs go only to rotating files: the daemon with --no-log-stderr writes nothing to
launchd's stderr file (and trims what a crash loop left there), and ComfyUI's agent runs through
`sidecar.logpipe`, which rotates its output and passes signals and the exit status on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sidecar.logpipe import STDERR_LIMIT
from tests.conftest_comfy import free_port

REPO = Path(__file__).resolve().parents[1]


def wait_health(port: int, proc: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the daemon exited {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                return json.loads(resp.read())
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the daemon never answered /health")


def test_the_daemon_under_launchd_logs_only_to_its_rotating_file_and_trims_launchds(tmp_path):
    data, port = tmp_path / "data", free_port()
    err_file = tmp_path / "sidecar.err.log"
    err_file.write_bytes(b"old crash-loop line\n" * 60_000)  # 1.2 MB a crash loop left behind
    # Attached to a ComfyUI that is not there: the daemon starts at once, without torch.
    cmd = [sys.executable, "-m", "sidecar", "serve", "--no-log-stderr", "--data-dir", str(data),
           "--port", str(port), "--engine", "comfyui", "--comfyui-url", "http://127.0.0.1:9"]
    env = {**os.environ, "SIDECAR_CONFIG": str(tmp_path / "none.toml")}
    with err_file.open("ab") as err:  # as launchd opens StandardErrorPath
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        wait_health(port, proc)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs", timeout=5).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    log = (data / "logs" / "sidecar.log").read_text()
    assert "sidecar starting on" in log and "GET /jobs" in log
    stderr = err_file.read_bytes()
    assert len(stderr) <= STDERR_LIMIT and b"old crash-loop line" not in stderr and b"removed at start" in stderr
    assert b"GET /jobs" not in stderr and b"sidecar starting" not in stderr


CHILD = """
import signal, sys, time
def term(*_):
    print("child got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
for i in range(int(sys.argv[1])):
    print(f"line {i:05d} " + "x" * 90)
print("ready", flush=True)
if sys.argv[2] == "wait":
    time.sleep(60)
sys.exit(int(sys.argv[2]))
"""


def test_logpipe_rotates_the_programs_output_and_passes_its_exit_status(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    log = tmp_path / "logs" / "comfyui.log"
    done = subprocess.run([sys.executable, "-m", "sidecar.logpipe", str(log), "--max-bytes", "20000",
                           "--backups", "3", "--", sys.executable, str(child), "2000", "3"],
                          cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 3 and done.stdout == b"" and done.stderr == b""
    files = sorted(log.parent.iterdir())
    assert [f.name for f in files] == ["comfyui.log", "comfyui.log.1", "comfyui.log.2", "comfyui.log.3"]
    assert all(f.stat().st_size <= 20000 for f in files)
    assert log.read_text().splitlines()[-1] == "ready"
    kept = [line for f in reversed(files[1:]) for line in f.read_text().splitlines()] + log.read_text().splitlines()
    numbers = [int(line.split()[1]) for line in kept if line.startswith("line ")]
    assert numbers == list(range(numbers[0], 2000))  # the newest lines, in order, none lost among them


def test_logpipe_passes_sigterm_to_the_program(tmp_path):
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    log = tmp_path / "comfyui.log"
    proc = subprocess.Popen([sys.executable, "-m", "sidecar.logpipe", str(log), "--", sys.executable, str(child),
                             "1", "wait"], cwd=REPO)
    try:
        for _ in range(600):
            if log.exists() and "ready" in log.read_text():
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert log.read_text().splitlines()[-1] == "child got SIGTERM"

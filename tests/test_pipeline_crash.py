"""A `generate` process killed (SIGKILL) or interrupted (Ctrl-C) at any moment of writing leaves each
version whole or absent: image + workflow + log entry together. The process is stopped at every step of
the commit by a driver that wraps the `os` call it is about to make."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from sidecar.config import Settings
from tests.pipeline_daemon import DaemonThread, SeededBackend, copy_example, read_json, run_generate_subprocess

RAW = Path("output/ch-01/raw")
LOG = Path("output/ch-01/generation-log.json")

# Stops the process (SIGKILL or SIGINT) just before the Nth call of os.<name> on a path in the project
# (fsync: any call), then runs `generate` as usual.
DRIVER = """
import os, signal, sys
name, nth, root, sig = sys.argv[1], int(sys.argv[2]), sys.argv[3], getattr(signal, sys.argv[4])
real = getattr(os, name)
calls = 0
def stop_at_nth(*args, **kwargs):
    global calls
    if name == "fsync" or str(args[0]).startswith(root):
        calls += 1
        if calls == nth:
            os.kill(os.getpid(), sig)
            if sig == signal.SIGINT:
                setattr(os, name, real)
    return real(*args, **kwargs)
setattr(os, name, stop_at_nth)
from pipeline_stage.cli import main
main(sys.argv[5:], prog_name="generate")
"""

# The commit of a first version, in order: temps written and fsynced (image, workflow, log), the journal
# put in place (replace 1), image and workflow linked into place, the log replaced (replace 2), temps
# unlinked, the journal removed (unlink 3).
# The second item of each point: whether the commit is decided (journal in place) when it dies there.
KILL_POINTS = [("fsync", 1, False), ("fsync", 3, False), ("replace", 1, False), ("link", 1, True),
               ("link", 2, True), ("replace", 2, True), ("unlink", 3, True)]


@pytest.fixture
def daemon(tmp_path: Path):
    d = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded"), SeededBackend()).start()
    yield d
    d.stop()


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


def run(project: Path, url: str, *, stop: tuple[str, int, str] | None = None) -> tuple[int, str]:
    args = ["--comfyui", "-c", "1", "--page", "1", "--root", str(project), "--daemon", url]
    if stop:
        name, nth, sig = stop
        proc = run_generate_subprocess([name, str(nth), str(project), sig, *args], driver=DRIVER)
    else:
        proc = run_generate_subprocess(args)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize(("name", "nth", "decided"), KILL_POINTS)
def test_process_killed_mid_write_leaves_no_partial_version(project: Path, daemon: DaemonThread,
                                                            name: str, nth: int, decided: bool) -> None:
    code, err = run(project, daemon.url, stop=(name, nth, "SIGKILL"))
    assert code == -signal.SIGKILL, err
    state = versioned_state(project)
    assert (project / RAW / ".generate-journal.json").exists() == decided
    if not decided:
        assert state == {}, state  # nothing of v1 is visible
    # Decided (journal written): the next run completes it before anything else.

    code, err = run(project, daemon.url)
    assert code == 0, err
    state = versioned_state(project)
    assert all(parts == {"png", "workflow", "entry"} for parts in state.values()), state
    assert sorted(state) == ([1, 2] if decided else [1])
    assert hidden_leftovers(project) == []


def test_kill_after_the_journal_rolls_forward_to_a_complete_version(project: Path, daemon: DaemonThread) -> None:
    code, _ = run(project, daemon.url, stop=("link", 2, "SIGKILL"))  # image placed, workflow not yet
    assert code == -signal.SIGKILL
    assert (project / RAW / ".generate-journal.json").exists()
    assert run(project, daemon.url)[0] == 0
    assert versioned_state(project) == {1: {"png", "workflow", "entry"}, 2: {"png", "workflow", "entry"}}


def test_ctrl_c_during_the_commit_still_writes_the_whole_version(project: Path, daemon: DaemonThread) -> None:
    code, err = run(project, daemon.url, stop=("link", 1, "SIGINT"))
    assert code == 130, err
    assert versioned_state(project) == {1: {"png", "workflow", "entry"}}
    assert hidden_leftovers(project) == []


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

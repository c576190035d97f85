"""The command CI runs (`make test`, through .ci/run) spreads the suite over worker processes; it must still
exit with pytest's own status: 1 when a test fails on any worker, 5 when no test is collected (a suite
that vanished must fail CI, not pass it)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def suite_args() -> list[str]:
    """pytest's arguments in `make test`'s recipe, as make expands them (workers: 2, as on CI's 2 cores)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shown = subprocess.run(["make", "-n", "-s", "test", "TEST_WORKERS=2", "STAMP=/dev/null"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    [line] = [line for line in shown.splitlines() if " -m pytest" in line]
    return shlex.split(line.split(" -m pytest", 1)[1])


def run_suite(folder: Path) -> subprocess.CompletedProcess[str]:
    (folder / "pytest.ini").write_text("[pytest]\n")  # not this project's configuration
    # Only xdist's plugin is loaded (the others, schemathesis and playwright among them, take seconds to
    # import in every worker and have no say in the exit status).
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "xdist.plugin", *suite_args(),
                           "-p", "no:cacheprovider", "--rootdir", str(folder), "-c", str(folder / "pytest.ini"),
                           str(folder)], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})


def test_the_suite_command_runs_on_workers_and_fails_when_one_test_fails(tmp_path: Path) -> None:
    assert "-n" in suite_args()
    (tmp_path / "test_one.py").write_text("def test_fine():\n    pass\n")
    (tmp_path / "test_two.py").write_text("def test_broken():\n    assert 1 == 2\n")
    done = run_suite(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed" in done.stdout and "gw" in done.stdout  # both ran, on xdist workers


def test_the_suite_command_fails_when_no_test_is_collected(tmp_path: Path) -> None:
    (tmp_path / "test_none.py").write_text("def helper():\n    pass\n")
    done = run_suite(tmp_path)
    assert done.returncode == 5, done.stdout + done.stderr


def test_every_collected_test_has_its_own_node_id_so_no_worker_drops_one() -> None:
    # `--dist loadfile` schedules by node id: the fuzz suite's one test per API operation (schemathesis
    # gives them all the function's id) ran once instead of once per operation until each got its own.
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             "tests/test_api_fuzz.py"], cwd=REPO, capture_output=True, text=True, timeout=300)
    ids = [line for line in listed.stdout.splitlines() if "::test_every_operation_answers_as_documented" in line]
    assert len(ids) > 40 and len(set(ids)) == len(ids), listed.stdout + listed.stderr
    assert "tests/test_api_fuzz.py::test_every_operation_answers_as_documented[GET /health]" in ids

"""`generate --where pool -c 1 --all`: a chapter rendered across a pool of ComfyUI servers, its pages in
flight together, every output landing exactly as with one backend, each log entry naming its backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline_stage.cli import main
from sidecar.backends.spec import BackendSpec
from sidecar.config import Settings
from tests.conftest_comfy import free_port
from tests.fake_comfyui import FakeComfyUI, make_comfy_home
from tests.pipeline_daemon import DaemonThread, copy_example
from tests.scripted_backend import ScriptedBackend
from tests.test_backends_routing import overlaps

RAW = Path("output/ch-01/raw")
PAGES = 6


@pytest.fixture
def pool_daemon(tmp_path: Path):
    fakes = {name: FakeComfyUI(make_comfy_home(tmp_path / name), port=free_port(), step_delay=delay,
                               device_type="cuda")
             for name, delay in (("alpha", 0.01), ("beta", 0.02))}
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2,
                        backend_probe_interval=0.5,
                        backends=[BackendSpec(name=n, kind="comfyui", url=f.url, tags=("pool",), local=False)
                                  for n, f in fakes.items()])
    d = DaemonThread(settings, ScriptedBackend())
    d._thread.start()
    for fake in fakes.values():
        d.call(fake.start())
    d.call(d._start())
    yield d, fakes
    if d._runner is not None:  # the daemon first (its clients), then the servers it talks to
        d.call(d._runner.cleanup())
        d._runner = None
    for fake in fakes.values():
        d.call(fake.stop())
    d.stop()


def test_generate_where_pool_renders_a_chapter_across_the_backends(tmp_path: Path, pool_daemon) -> None:
    daemon, fakes = pool_daemon
    project = copy_example(tmp_path / "project")
    for page in range(3, PAGES + 1):
        (project / f"prompts/ch-01/ch01_p{page:03d}.txt").write_text(
            f"+++\nseed = {page}\n+++\nspyke_plasma_v1, page {page}\n")
    args = ["--comfyui", "--root", str(project), "--daemon", daemon.url, "-c", "1", "--all",
            "--steps", "3", "--width", "64", "--height", "96"]

    dry = CliRunner().invoke(main, [*args, "--where", "pool", "--dry-run", "--json"])
    assert dry.exit_code == 0 and {r["request"]["where"] for r in json.loads(dry.output)["requests"]} == {"pool"}

    result = CliRunner().invoke(main, [*args, "--where", "pool"])
    assert result.exit_code == 0, result.output
    log = json.loads((project / "output/ch-01/generation-log.json").read_text())
    entries = log["entries"] if isinstance(log, dict) else log
    assert sorted(e["imageFile"] for e in entries) == [
        f"output/ch-01/raw/ch01_p{p:03d}_v1.png" for p in range(1, PAGES + 1)]
    assert {e["backend"] for e in entries} == {"alpha", "beta"}  # both servers rendered pages
    for page in range(1, PAGES + 1):
        with Image.open(project / RAW / f"ch01_p{page:03d}_v1.png") as png:
            assert png.size == (64, 96)
        assert (project / RAW / f"ch01_p{page:03d}_v1.workflow.json").is_file()
    assert sum(len(f.history) for f in fakes.values()) == PAGES  # each page rendered once
    for fake in fakes.values():
        assert overlaps(fake) == []

"""`generate --where pool -c 1 --all`: a chapter rendered across a pool of ComfyUI servers, its pages in
flight together, every output landing exactly as with one backend, each log entry naming its backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline_stage.cli import main
from tests.pipeline_daemon import copy_example
from tests.pool_daemon import comfy_pool
from tests.test_backends_routing import overlaps

RAW = Path("output/ch-01/raw")
PAGES = 6


@pytest.fixture
def pool_daemon(tmp_path: Path):
    with comfy_pool(tmp_path, {"alpha": 0.01, "beta": 0.02}) as pool:
        yield pool


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

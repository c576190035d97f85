"""`sidecar grid` against the real daemon: on the embedded engine with tiny models every combination
is rendered and named in index.json; bad axes exit 2 before anything is submitted; a cell the daemon
refuses stops the grid with nothing of it left queued."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sidecar.api.app import create_app
from sidecar.cli import main
from sidecar.config import Settings
from tests.pipeline_daemon import DaemonThread
from tests.scripted_backend import ScriptedBackend

PROMPT = "+++\nwidth = 64\nheight = 64\ncfg = 5.0\nsampler = \"euler\"\n+++\nspyke_plasma_v1, standing\n"


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "ch01_p003.txt"
    path.write_text(PROMPT)
    return path


@pytest.fixture(scope="module")
def engine_daemon(tmp_path_factory: pytest.TempPathFactory, engine_models: Path):
    """The daemon on the embedded engine over the session's tiny models (tests/conftest_engine.py)."""
    if importlib.util.find_spec("torch") is None:
        pytest.skip("the embedded engine needs torch")
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), engine="embedded", device="cpu",
                        models_dir=engine_models, checkpoint="tiny-sd15.safetensors")
    daemon = DaemonThread(settings, None).start()
    yield daemon
    daemon.stop()


def grid(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["grid", *args], env=env)


@pytest.mark.engine
def test_a_grid_renders_every_combination_into_a_sheet_and_an_index(engine_daemon, prompt_file, tmp_path) -> None:
    out = tmp_path / "grid"
    result = grid(["--prompt-file", str(prompt_file), "--x", "steps=1,2", "--y", "seed=1,2", "--out", str(out),
                   "--cell", "64", "--url", engine_daemon.url, "--poll-interval", "0.05"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert index["axes"]["x"] == {"name": "steps", "values": [1, 2], "labels": ["steps=1", "steps=2"]}
    assert [(c["x"], c["y"]) for c in index["cells"]] == [
        ({"steps": 1}, {"seed": 1}), ({"steps": 2}, {"seed": 1}), ({"steps": 1}, {"seed": 2}), ({"steps": 2}, {"seed": 2})]
    jobs = {j["id"]: j for j in engine_daemon.jobs()}
    pixels = {}
    for cell in index["cells"]:
        assert cell["status"] == "succeeded" and cell["label"] == f"steps={cell['x']['steps']} · seed={cell['y']['seed']}"
        job = jobs[cell["jobId"]]  # the daemon rendered exactly what the cell names
        assert job["params"]["steps"] == cell["x"]["steps"] and job["params"]["seed"] == cell["y"]["seed"] == cell["seed"]
        assert job["params"]["cfg"] == 5.0 and job["params"]["width"] == 64  # the front matter holds for every cell
        with Image.open(out / cell["image"]) as im:
            pixels[(cell["x"]["steps"], cell["y"]["seed"])] = np.asarray(im.convert("RGB"))
    assert not np.array_equal(pixels[(2, 1)], pixels[(2, 2)])  # another seed, another image
    assert not np.array_equal(pixels[(1, 1)], pixels[(2, 1)])  # the steps axis changed the render
    with Image.open(out / "contact-sheet.png") as sheet:
        assert sheet.size == (260 + 2 * 64, 28 + 2 * 64)


@pytest.mark.parametrize(("args", "says"), [
    (["--x", "strength=0.6,0.8"], "'strength' is not a job parameter"),
    (["--x", "loraStrength=0.6,abc"], "'abc' is not a valid loraStrength"),
    (["--x", "steps=0,2"], "greater than or equal to 1"),
    (["--x", "seed=1,2", "--y", "seed=3,4"], "one axis only"),
    (["--x", "seed"], "NAME=V1,V2"),
    (["--x", "seed=0..99", "--y", "steps=1..11"], "at most 1000"),
    (["--x", "cfg=nan"], "cfg"),
])
def test_bad_axes_exit_2_naming_the_problem_before_anything_is_sent(prompt_file, args, says) -> None:
    result = grid(["--prompt-file", str(prompt_file), *args, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_a_grid_without_a_prompt_or_with_a_bad_front_matter_exits_2(tmp_path) -> None:
    result = grid(["--x", "seed=1,2", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "--prompt-file" in result.output
    bad = tmp_path / "bad.txt"
    bad.write_text("+++\nsteps = 500\n+++\nx\n")
    result = grid(["--prompt-file", str(bad), "--x", "seed=1,2", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "steps" in result.output


async def test_a_refused_cell_stops_the_grid_and_cancels_what_it_queued(aiohttp_client, prompt_file, tmp_path) -> None:
    backend = ScriptedBackend()
    backend.auto_release = False
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "d", engine="embedded"), backend))
    url = str(client.make_url("")).rstrip("/")
    result = await asyncio.to_thread(grid, ["--prompt-file", str(prompt_file), "--x",
                                            "loraId=spyke_plasma_v1,not_installed", "--out", str(tmp_path / "g"),
                                            "--url", url, "--poll-interval", "0.02"])
    assert result.exit_code == 2 and "not_installed" in result.output
    jobs = (await (await client.get("/jobs")).json())["jobs"]
    assert len(jobs) == 1
    for _ in range(200):
        job = await (await client.get(f"/jobs/{jobs[0]['id']}")).json()
        if job["status"] == "cancelled":
            break
        await asyncio.sleep(0.02)
    assert job["status"] == "cancelled"  # nothing of the stopped grid keeps the device busy

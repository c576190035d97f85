"""The page pipeline against a daemon attached to the fake ComfyUI (a CPU server launched with
`--force-fp16`, as the real one was): the version's `.workflow.json` and the PNG's `prompt` chunk are the
graph ComfyUI ran (fp32, the pose under the name ComfyUI loaded), ComfyUI accepts that file as it is,
and `generate --reproduce` posts the same graph again with the pose file the log entry names."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline_stage.cli import main
from sidecar.config import Settings
from tests.conftest_comfy import free_port
from tests.fake_comfyui import FakeComfyUI, make_comfy_home
from tests.pipeline_daemon import DaemonThread, copy_example

RAW = Path("output/ch-01/raw")


@pytest.fixture
def attached(tmp_path: Path):
    """(daemon, fake ComfyUI): both served from the daemon thread's event loop."""
    comfy = FakeComfyUI(make_comfy_home(tmp_path / "ComfyUI"), port=free_port())
    settings = Settings(data_dir=tmp_path / "data", engine="comfyui", comfyui_url=comfy.url,
                        history_poll_interval=0.2)
    d = DaemonThread(settings, None)
    d._thread.start()
    d.call(comfy.start())
    d.call(d._start())
    yield d, comfy
    d.call(comfy.stop())
    d.stop()


def test_a_pose_pages_saved_workflow_is_what_comfyui_ran_and_reproduces(tmp_path: Path, attached) -> None:
    daemon, comfy = attached
    project = copy_example(tmp_path / "project")
    (project / "poses").mkdir()
    Image.fromarray(np.full((96, 64, 3), 40, np.uint8)).save(project / "poses" / "p003.png")
    (project / "prompts/ch-01/ch01_p003.txt").write_text(
        '+++\nseed = 7\nsteps = 2\nwidth = 64\nheight = 96\nposeImage = "../../poses/p003.png"\n'
        'controlnetStrength = 0.8\n+++\nspyke_plasma_v1, standing\n')
    base = ["--comfyui", "--root", str(project), "--daemon", daemon.url]
    first = CliRunner().invoke(main, [*base, "-c", "1", "--page", "3"])
    assert first.exit_code == 0, first.output + first.stderr

    saved = json.loads((project / RAW / "ch01_p003_v1.workflow.json").read_text())
    [ran] = [entry["prompt"][2] for entry in comfy.history.values()]
    assert saved == ran
    with Image.open(project / RAW / "ch01_p003_v1.png") as png:
        assert json.loads(png.info["prompt"]) == ran
    assert [n["inputs"]["dtype"] for n in saved.values() if n["class_type"] == "ModelComputeDtype"] == ["fp32"]
    [image] = [n["inputs"]["image"] for n in saved.values() if n["class_type"] == "LoadImage"]
    assert image.startswith("sidecar-pose-") and (comfy.base_dir / "input" / image).is_file()
    [entry] = json.loads((project / "output/ch-01/generation-log.json").read_text())
    assert entry["poseImage"] == "poses/p003.png"

    again = CliRunner().invoke(main, [*base, "--reproduce", str(project / RAW / "ch01_p003_v1.workflow.json")])
    assert again.exit_code == 0, again.output + again.stderr
    assert json.loads((project / RAW / "ch01_p003_v2.workflow.json").read_text()) == saved
    assert [e["prompt"][2] for e in comfy.history.values()] == [saved, saved]

    # Loaded in ComfyUI as it is (a plain POST, as its UI does): queued, not "Invalid image file".
    async def post() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as http, http.post(f"{comfy.url}/prompt", json={"prompt": saved}) as r:
            return r.status, await r.json()

    status, answer = daemon.call(post())
    assert status == 200 and answer["node_errors"] == {}, answer

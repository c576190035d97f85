"""`generate` renders a page with an SDXL checkpoint on the embedded engine under the m1max-32gb profile
(the tiny random SDXL model, real torch on the CPU), with a LoRA from the page's front matter, and
`--reproduce` gives the same pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline_stage.cli import main
from sidecar.config import Settings
from tests.conftest_engine import TINY_SDXL, TINY_SDXL_LORA
from tests.pipeline_daemon import DaemonThread, copy_example

pytestmark = pytest.mark.engine

RAW = Path("output/ch-01/raw")


@pytest.fixture
def daemon(tmp_path: Path, sdxl_models: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=sdxl_models,
                        checkpoint=TINY_SDXL, profile="m1max-32gb")
    d = DaemonThread(settings, None).start()
    yield d
    d.stop()


def test_a_page_renders_with_an_sdxl_checkpoint_and_reproduces(tmp_path: Path, daemon: DaemonThread) -> None:
    project = copy_example(tmp_path / "project")
    page = project / "prompts" / "ch-01" / "ch01_p001.txt"
    body = page.read_text(encoding="utf-8").split("+++")[-1]
    page.write_text(f'+++\nseed = 1234\nsteps = 2\nwidth = 64\nheight = 96\ncheckpoint = "{TINY_SDXL}"\n'
                    'loras = [{id = "tiny-sdxl-lora", strength = 0.8}]\n+++' + body, encoding="utf-8")
    base = ["--comfyui", "--root", str(project), "--daemon", daemon.url]
    first = CliRunner().invoke(main, [*base, "-c", "1", "--page", "1"])
    assert first.exit_code == 0, first.output + first.stderr
    again = CliRunner().invoke(main, [*base, "--reproduce", str(project / RAW / "ch01_p001_v1.workflow.json")])
    assert again.exit_code == 0, again.output + again.stderr

    with Image.open(project / RAW / "ch01_p001_v1.png") as v1, Image.open(project / RAW / "ch01_p001_v2.png") as v2:
        assert v1.size == (64, 96) and np.asarray(v1).std() > 1
        assert np.array_equal(np.asarray(v1), np.asarray(v2))
    log = json.loads((project / "output/ch-01/generation-log.json").read_text())
    assert [(e["engine"], e["family"], e["model"]) for e in log] == [("embedded", "sdxl", TINY_SDXL)] * 2
    assert [(lo["file"], lo["strength"]) for lo in log[0]["loras"]] == [(TINY_SDXL_LORA, 0.8)]
    workflow = json.loads((project / RAW / "ch01_p001_v1.workflow.json").read_text())
    assert {n["class_type"] for n in workflow.values()} >= {"CheckpointLoaderSimple", "LoraLoader", "KSampler"}

"""The pipeline stage against the daemon on the embedded engine with tiny random-weight models (real torch
on CPU): page 1 renders, and `--reproduce` of v1 gives identical pixels. Skipped until the embedded
engine is in the tree."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline_stage.cli import main
from sidecar.config import Settings
from tests.pipeline_daemon import DaemonThread, copy_example

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(importlib.util.find_spec("sidecar.engine.backend") is None
                       or importlib.util.find_spec("sidecar.engine.cli") is None,
                       reason="the embedded engine is not in the tree yet"),
]

RAW = Path("output/ch-01/raw")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sidecar.cli import main as sidecar

    out = tmp_path_factory.mktemp("models")
    result = CliRunner().invoke(sidecar, ["models", "make-tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # The example chapter asks for the character's LoRA by name; the tiny one stands in for it.
    shutil.copy(out / "loras" / "tiny-lora.safetensors", out / "loras" / "spyke_plasma_v1.safetensors")
    return out


@pytest.fixture
def daemon(tmp_path: Path, tiny_models: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=tiny_models,
                        checkpoint="tiny-sd15.safetensors", controlnet_model="tiny-controlnet.safetensors")
    d = DaemonThread(settings, None).start()
    yield d
    d.stop()


def test_page_one_and_its_reproduction_on_the_cpu_engine(tmp_path: Path, daemon: DaemonThread) -> None:
    project = copy_example(tmp_path / "project")
    base = ["--comfyui", "--root", str(project), "--daemon", daemon.url]
    first = CliRunner().invoke(main, [*base, "-c", "1", "--page", "1", "--steps", "2"])
    assert first.exit_code == 0, first.output + first.stderr
    again = CliRunner().invoke(main, [*base, "--reproduce", str(project / RAW / "ch01_p001_v1.workflow.json")])
    assert again.exit_code == 0, again.output + again.stderr

    with Image.open(project / RAW / "ch01_p001_v1.png") as v1, Image.open(project / RAW / "ch01_p001_v2.png") as v2:
        assert v1.mode == "RGB" and v1.size == (512, 768)
        assert np.array_equal(np.asarray(v1), np.asarray(v2))
    log = json.loads((project / "output/ch-01/generation-log.json").read_text())
    assert [e["engine"] for e in log] == ["embedded", "embedded"] and log[0]["device"] == "cpu"
    assert log[0]["model"] == "tiny-sd15.safetensors" and log[1]["seed"] == log[0]["seed"] == 1234


def test_a_pose_page_is_reproduced_with_its_pose_image(tmp_path: Path, daemon: DaemonThread) -> None:
    project = copy_example(tmp_path / "project")
    pose = np.zeros((96, 64, 3), dtype=np.uint8)
    pose[10:80, 30:34] = 255  # a stick figure's spine, as OpenPose draws it
    (project / "poses").mkdir()
    Image.fromarray(pose).save(project / "poses" / "p003.png")
    (project / "prompts/ch-01/ch01_p003.txt").write_text(
        '+++\nseed = 7\nsteps = 2\nwidth = 64\nheight = 96\nposeImage = "../../poses/p003.png"\n'
        'controlnetStrength = 0.8\n+++\nspyke_plasma_v1, standing\n')
    base = ["--comfyui", "--root", str(project), "--daemon", daemon.url]
    first = CliRunner().invoke(main, [*base, "-c", "1", "--page", "3"])
    assert first.exit_code == 0, first.output + first.stderr
    [entry] = json.loads((project / "output/ch-01/generation-log.json").read_text())
    assert entry["poseImage"] == "poses/p003.png" and entry["workflowTemplate"] == "txt2img-pose-lora"

    # The workflow alone does not hold the pose: the log entry says which file it was.
    again = CliRunner().invoke(main, [*base, "--reproduce", str(project / RAW / "ch01_p003_v1.workflow.json")])
    assert again.exit_code == 0, again.output + again.stderr
    with Image.open(project / RAW / "ch01_p003_v1.png") as v1, Image.open(project / RAW / "ch01_p003_v2.png") as v2:
        assert np.array_equal(np.asarray(v1), np.asarray(v2))
    log = json.loads((project / "output/ch-01/generation-log.json").read_text())
    assert log[1]["poseImage"] == "poses/p003.png" and log[1]["reproducedFrom"].endswith("ch01_p003_v1.workflow.json")

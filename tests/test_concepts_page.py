"""From concept to page on the embedded engine (tiny random-weight models, real torch on CPU): a round of
a concept renders, the picked image's job becomes page 3's prompt file in one action, and `generate`
renders that page with the pick's seed, checkpoint and LoRA stack (its log entry says so). Ollama is
absent here: the concept is composed from its fields as written."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline_stage.cli import main as generate
from sidecar.config import Settings
from tests.pipeline_daemon import DaemonThread, copy_example

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the embedded engine needs torch"),
]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sidecar.cli import main as sidecar

    out = tmp_path_factory.mktemp("models")
    result = CliRunner().invoke(sidecar, ["models", "make-tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    shutil.copy(out / "loras" / "tiny-lora.safetensors", out / "loras" / "spyke_plasma_v1.safetensors")
    return out


def call(url: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_picked_concept_becomes_a_page_that_generate_renders(tmp_path: Path, tiny_models: Path) -> None:
    project = copy_example(tmp_path / "project")
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=tiny_models,
                        checkpoint="tiny-sd15.safetensors", project_root=project, ollama_url="http://127.0.0.1:9",
                        ollama_timeout=2)
    daemon = DaemonThread(settings, None).start()
    try:
        url = daemon.url
        status, _ = call(f"{url}/concepts", "POST", {"name": "dusk", "fields": {
            "subject": {"value": "1boy on a rooftop", "locked": True}, "lighting": {"value": "dusk"}},
            "render": {"width": 64, "height": 64, "steps": 2,
                       "loras": [{"id": "spyke_plasma_v1", "strength": 0.7}]}})
        assert status == 201
        status, started = call(f"{url}/concepts/dusk/rounds", "POST", {"seed": 77})
        assert status == 202, started
        ids = [j["id"] for j in started["jobs"]]
        for _ in range(600):
            jobs = [call(f"{url}/jobs/{i}")[1] for i in ids]
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
                break
            time.sleep(0.1)
        assert [j["status"] for j in jobs] == ["succeeded"] * 4, jobs
        pick = jobs[2]
        status, written = call(f"{url}/concepts/dusk/page", "POST", {"chapter": 1, "page": 3, "jobId": pick["id"]})
        assert status == 201, written
        assert written["file"] == "prompts/ch-01/ch01_p003.txt" and written["frontMatter"]["seed"] == 79

        result = CliRunner().invoke(generate, ["--comfyui", "--root", str(project), "--daemon", url, "-c", "1",
                                               "--page", "3"])
        assert result.exit_code == 0, result.output + result.stderr
    finally:
        daemon.stop()
    entry = json.loads((project / "output/ch-01/generation-log.json").read_text())[-1]
    workflow = json.loads((project / entry["workflowFile"]).read_text())
    texts = [n["inputs"]["text"] for n in workflow.values() if n["class_type"] == "CLIPTextEncode"]
    assert entry["seed"] == 79 and texts[0] == pick["params"]["prompt"] and "1boy on a rooftop" in texts[0]
    assert entry["model"] == "tiny-sd15.safetensors" and (entry["width"], entry["height"]) == (64, 64)
    assert [(u["id"], u["strength"]) for u in entry["loras"]] == [("spyke_plasma_v1", 0.7)]
    assert (project / "output/ch-01/raw/ch01_p003_v1.png").is_file()

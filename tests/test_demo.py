"""The README's main command, `make demo` = `sidecar demo`: tiny models, the daemon on the embedded
engine, page 1 of the example chapter through the pipeline stage, all in one folder, nothing left
running. A second run reuses the models and adds version 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest_comfy import free_port

pytestmark = pytest.mark.engine


def run_demo(folder: Path, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sidecar.cli", "demo", "--dir", str(folder), "--port", str(port)],
                          capture_output=True, text=True, timeout=600)


def test_demo_renders_page_one_twice_and_stops_its_daemon(tmp_path) -> None:
    folder, port = tmp_path / "demo", free_port()
    first = run_demo(folder, port)
    assert first.returncode == 0, first.stdout + first.stderr
    raw = folder / "project" / "output" / "ch-01" / "raw"
    with Image.open(raw / "ch01_p001_v1.png") as img:
        assert (img.mode, img.size) == ("RGB", (512, 768))
    assert (raw / "ch01_p001_v1.workflow.json").is_file()
    [entry] = json.loads((folder / "project" / "output" / "ch-01" / "generation-log.json").read_text())
    assert (entry["engine"], entry["model"], entry["loraId"]) == ("embedded", "tiny-sd15.safetensors", "spyke_plasma_v1")
    # The tiny models' headers say their family (modelspec metadata), and the demo names it.
    assert entry["family"] == "sd15"
    assert ("== model families (read from the files' headers): tiny-sd15.safetensors: sd15; "
            "spyke_plasma_v1.safetensors: sd15") in first.stdout
    # It ends with the studio's URL on the demo page, and the daemon it names shows the demo's project.
    assert first.stdout.rstrip().splitlines()[-2].endswith(f"sidecar serve --config {folder.resolve() / 'sidecar.toml'}")
    assert f"http://127.0.0.1:{port}/#/pages/1/1" in first.stdout.rstrip().splitlines()[-1]
    assert f'project_root = "{folder.resolve() / "project"}"' in (folder / "sidecar.toml").read_text()

    second = run_demo(folder, port)  # the port is free again: the first daemon was stopped
    assert second.returncode == 0, second.stdout + second.stderr
    assert "making tiny models" not in second.stdout
    assert (raw / "ch01_p001_v2.png").is_file()

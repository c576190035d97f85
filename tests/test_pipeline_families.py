"""The pipeline stage with a LoRA stack: front matter names the checkpoint and `loras`, the log entry
records the family and every LoRA with its strength and SHA-256, and `--reproduce` replays them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sidecar.config import Settings
from tests.family_headers import SD15_CHECKPOINT, SD15_LORA, write_safetensors
from tests.pipeline_daemon import DaemonThread, SeededBackend, copy_example, read_json
from tests.test_pipeline_generate import LOG, RAW, generate

LORAS = ("spyke_plasma_v1", "ink_style", "screentone")


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "anything-v5.safetensors", SD15_CHECKPOINT)
    for i, name in enumerate(LORAS):
        write_safetensors(root / "loras" / f"{name}.safetensors", SD15_LORA, metadata={"n": str(i)})
    return root


@pytest.fixture
def daemon(tmp_path: Path, models: Path):
    backend = SeededBackend(folders={f: models / f for f in ("checkpoints", "loras", "controlnet")})
    d = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded"), backend).start()
    yield d
    d.stop()


def test_a_page_s_lora_stack_is_logged_with_strengths_and_hashes_and_reproduced(tmp_path, daemon, models) -> None:
    project = copy_example(tmp_path / "project")
    page = project / "prompts" / "ch-01" / "ch01_p001.txt"
    body = page.read_text(encoding="utf-8").split("+++")[-1]
    page.write_text('+++\nseed = 1234\ncheckpoint = "anything-v5.safetensors"\n'
                    'loras = [{id = "spyke_plasma_v1", strength = 0.9}, {id = "ink_style", strength = 0.4}, '
                    '{id = "screentone", strength = 0.6}]\n+++' + body, encoding="utf-8")
    result = generate(project, daemon.url, "-c", "1", "--page", "1")
    assert result.exit_code == 0, result.output

    [entry] = read_json(project / LOG)
    digest = {n: hashlib.sha256((models / "loras" / f"{n}.safetensors").read_bytes()).hexdigest() for n in LORAS}
    assert entry["family"] == "sd15" and entry["model"] == "anything-v5.safetensors"
    assert entry["loras"] == [{"id": name, "strength": strength, "file": f"{name}.safetensors", "sha256": digest[name]}
                              for name, strength in zip(LORAS, (0.9, 0.4, 0.6), strict=True)]
    assert (entry["loraId"], entry["loraStrength"]) == ("spyke_plasma_v1", 0.9)  # pipeline.toml's loraId replaced

    source = project / RAW / "ch01_p001_v1.workflow.json"
    result = generate(project, daemon.url, "--reproduce", str(source))
    assert result.exit_code == 0, result.output
    v1, v2 = read_json(project / LOG)
    assert v2["loras"] == v1["loras"] and v2["family"] == "sd15"
    assert read_json(project / RAW / "ch01_p001_v2.workflow.json") == read_json(source)


def test_a_draft_of_a_lora_stack_is_finished_with_the_whole_stack_and_no_lora_drops_it(tmp_path, daemon) -> None:
    project = copy_example(tmp_path / "project")
    page = project / "prompts" / "ch-01" / "ch01_p001.txt"
    body = page.read_text(encoding="utf-8").split("+++")[-1]
    page.write_text('+++\nseed = 77\nloras = [{id = "ink_style", strength = 0.5}, '
                    '{id = "screentone", strength = 0.3}]\n+++' + body, encoding="utf-8")
    assert generate(project, daemon.url, "-c", "1", "--page", "1", "--drafts", "1", "--draft-steps", "2").exit_code == 0
    result = generate(project, daemon.url, "-c", "1", "--page", "1", "--from-draft", "1")
    assert result.exit_code == 0, result.output
    [entry] = read_json(project / LOG)
    assert [(lora["id"], lora["strength"]) for lora in entry["loras"]] == [("ink_style", 0.5), ("screentone", 0.3)]
    assert generate(project, daemon.url, "-c", "1", "--page", "1", "--no-lora").exit_code == 0
    assert read_json(project / LOG)[-1]["loras"] is None


def test_drafts_on_a_faster_checkpoint_and_the_final_on_the_page_s_by_img2img(tmp_path) -> None:
    from tests.family_headers import SDXL_CHECKPOINT

    models = tmp_path / "models"
    write_safetensors(models / "checkpoints" / "anything-v5.safetensors", SD15_CHECKPOINT)
    write_safetensors(models / "checkpoints" / "animagine-xl.safetensors", SDXL_CHECKPOINT)
    (models / "loras").mkdir()
    (models / "loras" / "spyke_plasma_v1.safetensors").write_bytes(b"a LoRA of no family read here")
    backend = SeededBackend(folders={f: models / f for f in ("checkpoints", "loras", "controlnet")})
    backend.data_dir = tmp_path / "data"
    daemon = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded", profile="cuda-24gb"), backend).start()
    try:
        project = copy_example(tmp_path / "project")
        page = project / "prompts" / "ch-01" / "ch01_p001.txt"
        body = page.read_text(encoding="utf-8").split("+++")[-1]
        page.write_text('+++\nseed = 5\ncheckpoint = "animagine-xl.safetensors"\nwidth = 832\nheight = 1216\n+++'
                        + body, encoding="utf-8")
        drafted = generate(project, daemon.url, "-c", "1", "--page", "1", "--drafts", "2", "--draft-steps", "2",
                           "--draft-checkpoint", "anything-v5.safetensors")
        assert drafted.exit_code == 0, drafted.output
        index = read_json(project / "output" / "ch-01" / "drafts" / "ch01_p001" / "index.json")
        first = index["drafts"][0]
        assert (first["params"]["checkpoint"], first["params"]["family"]) == ("anything-v5.safetensors", "sd15")
        assert (first["params"]["width"], first["params"]["height"]) == (1024, 1024)  # SD 1.5's default there
        assert first["draftCheckpoint"] == "anything-v5.safetensors"

        final = generate(project, daemon.url, "-c", "1", "--page", "1", "--from-draft", "1")
        assert final.exit_code == 0, final.output
        [entry] = read_json(project / LOG)
        assert (entry["model"], entry["family"], entry["width"], entry["height"]) == (
            "animagine-xl.safetensors", "sdxl", 832, 1216)
        assert entry["seed"] == first["seed"] and entry["denoise"] == 0.6
        assert entry["draftOf"] == entry["initImage"] == f"output/ch-01/drafts/ch01_p001/{first['file']}"
        assert entry["workflowTemplate"] == "sdxl-img2img-lora"
        # Without --drafts the option means nothing: refused.
        refused = generate(project, daemon.url, "-c", "1", "--page", "1", "--draft-checkpoint", "x.safetensors")
        assert refused.exit_code == 2 and "--draft-checkpoint goes with --drafts" in refused.output
    finally:
        daemon.stop()


def test_reproduce_replays_an_sdxl_page_s_family_checkpoint_and_stack_and_stops_when_a_lora_changed(tmp_path) -> None:
    from tests.family_headers import SDXL_CHECKPOINT, SDXL_LORA

    models = tmp_path / "models"
    write_safetensors(models / "checkpoints" / "animagine-xl.safetensors", SDXL_CHECKPOINT)
    for i, name in enumerate(LORAS):
        write_safetensors(models / "loras" / f"{name}.safetensors", SDXL_LORA, metadata={"n": str(i)})
    backend = SeededBackend(folders={f: models / f for f in ("checkpoints", "loras", "controlnet")})
    daemon = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded", profile="cuda-24gb"), backend).start()
    try:
        project = copy_example(tmp_path / "project")
        page = project / "prompts" / "ch-01" / "ch01_p001.txt"
        body = page.read_text(encoding="utf-8").split("+++")[-1]
        page.write_text('+++\nseed = 9\ncheckpoint = "animagine-xl.safetensors"\nwidth = 832\nheight = 1216\n'
                        'loras = [{id = "spyke_plasma_v1", strength = 0.9}, {id = "ink_style", strength = 0.4}, '
                        '{id = "screentone", strength = 0.6}]\n+++' + body, encoding="utf-8")
        assert generate(project, daemon.url, "-c", "1", "--page", "1").exit_code == 0
        source = project / RAW / "ch01_p001_v1.workflow.json"
        result = generate(project, daemon.url, "--reproduce", str(source))
        assert result.exit_code == 0, result.output
        v1, v2 = read_json(project / LOG)
        for key in ("family", "model", "loras", "width", "height", "seed"):
            assert v2[key] == v1[key], key
        assert (v2["family"], v2["model"], [(lo["id"], lo["strength"]) for lo in v2["loras"]]) == (
            "sdxl", "animagine-xl.safetensors", [("spyke_plasma_v1", 0.9), ("ink_style", 0.4), ("screentone", 0.6)])
        assert all(lo["sha256"] for lo in v2["loras"]) and v2["reproducedFrom"] == f"{RAW}/ch01_p001_v1.workflow.json"

        # ink_style trained again and promoted under the same name: v1 cannot be made again; nothing is sent.
        write_safetensors(models / "loras" / "ink_style.safetensors", SDXL_LORA, metadata={"n": "retrained"})
        jobs_before = len(daemon.jobs())
        refused = generate(project, daemon.url, "--reproduce", str(source))
        assert refused.exit_code == 2, refused.output
        assert "ink_style.safetensors has changed since output/ch-01/raw/ch01_p001_v1.png was made" in refused.output
        assert len(read_json(project / LOG)) == 2 and len(daemon.jobs()) == jobs_before
        assert not (project / RAW / "ch01_p001_v3.png").exists()
        as_json = generate(project, daemon.url, "--reproduce", str(source), "--json")
        assert as_json.exit_code == 2
        error = json.loads(as_json.stdout[as_json.stdout.index("{"):])["error"]
        assert error["code"] == "lora_changed" and error["details"]["file"] == "ink_style.safetensors"
        assert error["details"]["loggedSha256"] == v1["loras"][1]["sha256"]
    finally:
        daemon.stop()

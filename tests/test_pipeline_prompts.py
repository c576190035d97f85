"""Prompt files, front matter, pipeline.toml and command-line precedence, seen through
`generate --dry-run --json` (the request that would be submitted), and their input errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline_stage.cli import main
from tests.pipeline_daemon import copy_example


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "project")


def dry_run(project: Path, *args: str):
    return CliRunner().invoke(main, ["--comfyui", "--root", str(project), "--dry-run", "--json", *args])


def request_for(project: Path, *args: str) -> dict:
    result = dry_run(project, "-c", "1", *args)
    assert result.exit_code == 0, result.output
    [item] = json.loads(result.stdout)["requests"]
    return item["request"]


def write_prompt(project: Path, page: int, text: str) -> Path:
    path = project / "prompts" / "ch-01" / f"ch01_p{page:03d}.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_front_matter_keys_become_the_request(project: Path) -> None:
    pose_dir = project / "prompts" / "ch-01" / "poses"
    pose_dir.mkdir()
    Image.new("RGB", (64, 96)).save(pose_dir / "p3.png")
    write_prompt(project, 3, """+++
negativePrompt = "blurry"
seed = 5
loraId = "spyke_plasma_v1"
loraStrength = 0.7
steps = 25
cfg = 6.5
sampler = "dpmpp_2m"
scheduler = "karras"
width = 448
height = 640
poseImage = "poses/p3.png"
controlnetStrength = 0.55
+++

spyke_plasma_v1, kneeling
""")
    request = request_for(project, "--page", "3")
    assert request == {
        "prompt": "spyke_plasma_v1, kneeling", "negativePrompt": "blurry", "loraId": "spyke_plasma_v1",
        "loraStrength": 0.7, "seed": 5, "steps": 25, "cfg": 6.5, "sampler": "dpmpp_2m", "scheduler": "karras",
        "resolution": {"width": 448, "height": 640}, "poseImagePath": str(pose_dir / "p3.png"),
        "controlnetStrength": 0.55,
    }


def test_command_line_beats_front_matter_beats_pipeline_toml(project: Path) -> None:
    request = request_for(project, "--page", "1", "--seed", "77", "--cfg", "5")
    assert request["seed"] == 77 and request["cfg"] == 5.0  # command line
    assert request["loraStrength"] == 0.85  # front matter over pipeline.toml's 0.8
    assert request["steps"] == 20 and request["loraId"] == "spyke_plasma_v1"  # pipeline.toml
    assert "seed" not in request_for(project, "--page", "2")  # nobody set one: the daemon picks


def test_lora_can_be_switched_off_by_front_matter_or_flag(project: Path) -> None:
    write_prompt(project, 3, '+++\nloraId = ""\n+++\nbackground, empty street\n')
    request = request_for(project, "--page", "3")
    assert "loraId" not in request and "loraStrength" not in request
    assert "loraId" not in request_for(project, "--page", "1", "--no-lora")
    assert request_for(project, "--page", "3", "--lora", "other")["loraId"] == "other"


def test_file_without_front_matter_is_all_prompt(project: Path) -> None:
    write_prompt(project, 3, "a = 1\n+++\nstill prompt\n")
    assert request_for(project, "--page", "3")["prompt"] == "a = 1\n+++\nstill prompt"


def test_pipeline_toml_daemon_url_and_foreign_tables(project: Path) -> None:
    config = project / "pipeline.toml"
    config.write_text('[overlay]\nfont = "x"\n\n[generate]\ndaemon = "http://127.0.0.1:3999"\nsteps = 9\n')
    result = dry_run(project, "-c", "1", "--page", "1")
    [item] = json.loads(result.stdout)["requests"]
    assert item["daemon"] == "http://127.0.0.1:3999" and item["request"]["steps"] == 9


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("+++\nseed = 1\nnever closed\n", "never closed"),
        ("+++\nsed = 1\n+++\nprompt\n", "sed"),
        ("+++\nseed = \n+++\nprompt\n", "not valid TOML"),
        ("+++\nseed = -4\n+++\nprompt\n", "seed"),
        ("+++\nseed = 4\n+++\n\n  \n", "no prompt text"),
    ],
)
def test_bad_prompt_file_is_an_input_error_naming_it(project: Path, content: str, expect: str) -> None:
    path = write_prompt(project, 3, content)
    result = dry_run(project, "-c", "1", "--page", "3")
    assert result.exit_code == 2
    assert str(path) in result.stderr and expect in result.stderr
    assert json.loads(result.stdout)["error"]["code"] == "input_error"


def test_values_past_the_daemons_limits_are_refused_before_any_submit(project: Path) -> None:
    # The request is the daemon's own typed model (sidecar.api.models.JobRequest), so its limits hold here.
    path = write_prompt(project, 3, "+++\nsteps = 151\n+++\nkneeling\n")
    result = dry_run(project, "-c", "1", "--page", "3")
    assert result.exit_code == 2 and str(path) in result.stderr and "steps" in result.stderr
    over = dry_run(project, "-c", "1", "--page", "1", "--cfg", "31")
    assert over.exit_code == 2 and "cfg" in over.stderr


def test_bad_pipeline_toml_is_an_input_error_naming_it(project: Path) -> None:
    (project / "pipeline.toml").write_text("[generate]\nstep = 3\n")
    result = dry_run(project, "-c", "1", "--page", "1")
    assert result.exit_code == 2 and str(project / "pipeline.toml") in result.stderr and "step" in result.stderr


def test_missing_pose_image_names_the_path(project: Path) -> None:
    write_prompt(project, 3, '+++\nposeImage = "poses/missing.png"\n+++\nkneeling\n')
    result = dry_run(project, "-c", "1", "--page", "3")
    assert result.exit_code == 2
    assert str(project / "prompts" / "ch-01" / "poses" / "missing.png") in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--page", "1"],  # no chapter
        ["-c", "1"],  # no pages
        ["-c", "1", "--page", "1", "--all"],
        ["-c", "1", "--pages", "3-1"],
        ["-c", "1", "--pages", "one"],
        ["-c", "1", "--page", "1", "--repeat", "0"],
    ],
)
def test_page_selection_errors_exit_2(project: Path, args: list[str]) -> None:
    assert dry_run(project, *args).exit_code == 2


def test_pages_spec_and_all(project: Path) -> None:
    write_prompt(project, 7, "seven\n")
    result = dry_run(project, "-c", "1", "--all")
    assert [r["page"] for r in json.loads(result.stdout)["requests"]] == ["ch01_p001", "ch01_p002", "ch01_p007"]
    result = dry_run(project, "-c", "1", "--pages", "2,7,1-2")
    assert [r["page"] for r in json.loads(result.stdout)["requests"]] == ["ch01_p001", "ch01_p002", "ch01_p007"]


def test_help_documents_exit_codes_and_both_forms() -> None:
    text = CliRunner().invoke(main, ["--help"]).output
    for line in ("generate --comfyui -c 1 --page 1", "generate approve -c 1 --page 1 --version 2", "sidecar serve",
                 "  3 ", "  4 ", "  5 "):
        assert line in text

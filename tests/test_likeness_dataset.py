"""`sidecar dataset check` judges every training image against the character's references: a planted
stranger is an error naming the file, a flip is judged as its mirror (an asymmetric character's flip is
not flagged), and without weights the check still runs and says how to get them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from tests.likeness_fixtures import BLUE, RED, figure, tiny_likeness_models, write_project
from sidecar.likeness.judge import LikenessService
from sidecar.likeness.tiny import TINY_MODEL

CAPTION = "spyke_plasma_v1, full body, standing, simple background"


def training_set(project: Path) -> Path:
    folder = project / "dataset"
    folder.mkdir()
    for i in range(15):
        figure(RED, dx=(i % 5) * 6 - 12, seed=100 + i, size=(512, 512), bracer=True).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(CAPTION + "\n")
    with Image.open(folder / "img03.png") as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "img03_flip.png")
    (folder / "img03_flip.txt").write_text(CAPTION + ", mirrored\n")
    figure(BLUE, seed=7, size=(512, 512)).save(folder / "stranger.png")
    (folder / "stranger.txt").write_text(CAPTION + "\n")
    return folder


def _check(folder: Path, project: Path, models: Path) -> dict:
    from sidecar.cli import main

    result = CliRunner().invoke(main, ["dataset", "check", str(folder), "--project", str(project), "--json"],
                                env={"SIDECAR_MODELS_DIR": str(models), "SIDECAR_LIKENESS_MODEL": TINY_MODEL,
                                     "SIDECAR_TRIGGER_WORD": "spyke_plasma_v1"})
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.output)


def test_check_flags_the_planted_stranger_and_judges_flips_mirrored(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_project(project, bracer=True)
    models = tiny_likeness_models(tmp_path / "models")
    folder = training_set(project)
    body = _check(folder, project, models)
    likeness = [f for f in body["errors"] + body["warnings"] if f["check"] == "likeness"]
    assert [(f["file"], f["level"]) for f in likeness] == [("stranger.png", "error")]
    assert "not the character" in likeness[0]["message"]
    # The flip is her: only judged as she stands in the references (unmirrored it is someone else).
    (plain,) = LikenessService(models, TINY_MODEL, None, project).score([folder / "img03_flip.png"])
    assert plain.verdict != "same"


def test_without_weights_check_still_runs_and_names_the_fetch_command(tmp_path: Path) -> None:
    project = tmp_path / "project"
    write_project(project)
    folder = training_set(project)
    body = _check(folder, project, tmp_path / "no-models")
    (finding,) = [f for f in body["warnings"] if f["check"] == "likeness"]
    assert "sidecar models fetch ccip" in finding["message"]
    assert {"images", "captions", "flips"} <= set(body["passed"])  # the other checks ran as ever

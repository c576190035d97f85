"""The example in datasets/example/ is what the tools make: re-running the commands the manual shows
(docs/training/dataset-format.md, "The example"), on a copy, gives the same images and captions, and the
set passes `check` (scaled to three images)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from sidecar.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "example"


def run(*args: str):
    return CliRunner().invoke(main, ["dataset", *args])


def test_the_example_set_is_reproduced_by_its_commands(tmp_path):
    work = tmp_path / "example"
    shutil.copytree(EXAMPLE, work)
    images = work / "images"
    (images / "spyke_front.txt").unlink()
    result = run("crop", str(work / "reference_sheet.png"), "--regions", str(work / "reference_sheet.regions.toml"),
                 "--out", str(tmp_path / "recropped"))
    assert result.exit_code == 0, result.output
    for name in ("spyke_front.png", "spyke_side.png", "spyke_back.png"):
        again = np.asarray(Image.open(tmp_path / "recropped" / name))
        assert np.array_equal(again, np.asarray(Image.open(EXAMPLE / "images" / name))), name

    result = run("caption", str(images), "--trigger", "spyke_plasma_v1", "--table", str(images / "captions.csv"))
    assert result.exit_code == 0, result.output
    for txt in sorted((EXAMPLE / "images").glob("*.txt")):
        assert (images / txt.name).read_text() == txt.read_text(), txt.name

    result = run("check", str(EXAMPLE / "images"), "--trigger", "spyke_plasma_v1", "--min-images", "3")
    assert result.exit_code == 0, result.output


def test_the_example_images_stay_small():
    for path in EXAMPLE.rglob("*.png"):
        assert path.stat().st_size < 32_000, path

"""`sidecar dataset caption` (the CSV table round trip) and `flip` (mirrored images with a tagged
caption), on small generated images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from sidecar.cli import main
from tests.dataset_fixtures import TRIGGER, figure, snapshot, training_set


def run(*args: str):
    return CliRunner().invoke(main, ["dataset", *args])


def fill_table(table: Path, rows: dict[str, tuple[str, str, str]]) -> None:
    with table.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "framing", "pose", "background"])
        for name, parts in rows.items():
            w.writerow([name, *parts])


@pytest.fixture
def uncaptioned(tmp_path: Path) -> Path:
    folder = tmp_path / "set"
    training_set(folder, 3, captions=False)
    return folder


def test_init_then_table_writes_one_caption_per_image_in_the_four_part_format(uncaptioned):
    result = run("caption", str(uncaptioned), "--init")
    assert result.exit_code == 0, result.output
    table = uncaptioned / "captions.csv"
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert [r["file"] for r in rows] == ["view_00.png", "view_01.png", "view_02.png"]
    assert all(r["framing"] == r["pose"] == r["background"] == "" for r in rows)

    fill_table(table, {"view_00.png": ("full body", "standing", "plain white background"),
                       "view_01.png": ("upper body", "arms crossed", "plain white background"),
                       "view_02.png": ("portrait", "looking back", "city street")})
    result = run("caption", str(uncaptioned), "--trigger", TRIGGER, "--table", str(table))
    assert result.exit_code == 0, result.output
    assert (uncaptioned / "view_02.txt").read_text() == f"{TRIGGER}, portrait, looking back, city street\n"
    assert (uncaptioned / "view_00.txt").read_text().startswith(f"{TRIGGER}, full body, standing")


def test_missing_table_rows_name_the_images_and_write_no_caption(uncaptioned):
    table = uncaptioned / "captions.csv"
    fill_table(table, {"view_00.png": ("full body", "standing", "plain background")})
    before = snapshot(uncaptioned)
    result = run("caption", str(uncaptioned), "--trigger", TRIGGER, "--table", str(table))
    assert result.exit_code == 2
    assert "view_01.png" in result.output and "view_02.png" in result.output and "no row" in result.output
    assert snapshot(uncaptioned) == before  # not even view_00.txt


@pytest.mark.parametrize(("rows", "expected"), [
    ({"view_00.png": ("full body", "", "white")}, "pose is empty"),
    ({"view_00.png": ("full body", "standing, smiling", "white")}, "contains a comma"),
    ({"nope.png": ("full body", "standing", "white")}, "no image nope.png"),
])
def test_bad_table_rows_are_named_and_nothing_is_written(uncaptioned, rows, expected):
    table = uncaptioned / "captions.csv"
    fill_table(table, {**rows, "view_01.png": ("a", "b", "c"), "view_02.png": ("a", "b", "c")})
    before = snapshot(uncaptioned)
    result = run("caption", str(uncaptioned), "--table", str(table))
    assert result.exit_code == 2 and expected in result.output and str(table) in result.output
    assert snapshot(uncaptioned) == before


def test_init_keeps_the_artists_rows_and_prefills_new_ones_from_existing_captions(uncaptioned):
    table = uncaptioned / "captions.csv"
    fill_table(table, {"view_00.png": ("full body", "standing", "white")})
    (uncaptioned / "view_01.txt").write_text(f"{TRIGGER}, upper body, waving, sky\n")
    result = run("caption", str(uncaptioned), "--init")
    assert result.exit_code == 0, result.output
    rows = {r["file"]: r for r in csv.DictReader(table.open(encoding="utf-8"))}
    assert rows["view_00.png"]["pose"] == "standing"
    assert rows["view_01.png"]["pose"] == "waving" and rows["view_01.png"]["background"] == "sky"
    assert rows["view_02.png"]["pose"] == ""


def test_flip_writes_mirrors_with_the_caption_plus_the_mirrored_tag(tmp_path):
    folder = tmp_path / "set"
    training_set(folder, 2)
    result = run("flip", str(folder))
    assert result.exit_code == 0, result.output
    original = Image.open(folder / "view_00.png")
    flipped = Image.open(folder / "view_00_flip.png")
    assert np.array_equal(np.asarray(flipped), np.asarray(ImageOps.mirror(original)))
    caption = (folder / "view_00.txt").read_text().strip()
    assert (folder / "view_00_flip.txt").read_text().strip() == f"{caption}, mirrored"

    # Running again flips nothing twice and keeps an edited flip caption.
    (folder / "view_01_flip.txt").write_text("edited\n")
    again = run("flip", str(folder))
    assert again.exit_code == 0 and "kept 2 existing flip(s)" in again.output
    assert not list(folder.glob("*_flip_flip*"))
    assert (folder / "view_01_flip.txt").read_text() == "edited\n"


def test_the_flip_tag_is_configurable_and_only_selects_views(tmp_path):
    folder = tmp_path / "set"
    training_set(folder, 3)
    result = run("flip", str(folder), "--tag", "flipped_view", "--only", "view_01*")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.glob("*_flip.*")) == ["view_01_flip.png", "view_01_flip.txt"]
    assert (folder / "view_01_flip.txt").read_text().strip().endswith(", flipped_view")


def test_caption_table_also_captions_existing_flips_with_the_tag(uncaptioned):
    assert run("flip", str(uncaptioned)).exit_code == 0  # no captions yet: flips get none
    assert not (uncaptioned / "view_00_flip.txt").exists()
    assert run("caption", str(uncaptioned), "--init").exit_code == 0
    table = uncaptioned / "captions.csv"
    assert "view_00_flip.png" not in table.read_text()  # flips follow their source
    fill_table(table, {f"view_0{i}.png": ("full body", "standing", "white") for i in range(3)})
    assert run("caption", str(uncaptioned), "--table", str(table), "--flip-tag", "mirror").exit_code == 0
    assert (uncaptioned / "view_00_flip.txt").read_text() == f"{TRIGGER}, full body, standing, white, mirror\n"


def test_an_unreadable_image_stops_flip_before_any_file_is_written(tmp_path):
    folder = tmp_path / "set"
    training_set(folder, 2)
    figure(5).save(folder / "view_00.png")
    (folder / "view_01.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    before = snapshot(folder)
    result = run("flip", str(folder))
    assert result.exit_code == 2 and "view_01.png" in result.output
    assert snapshot(folder) == before

"""`sidecar dataset crop`: figures found on a reference sheet, the regions file the artist edits, square
crops (pad or crop), and bad input that names the file and changes nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sidecar.cli import main
from tests.dataset_fixtures import reference_sheet, snapshot


def run(*args: str):
    return CliRunner().invoke(main, ["dataset", *args])


@pytest.fixture
def sheet(tmp_path: Path) -> tuple[Path, list[tuple[int, int, int, int]]]:
    path = tmp_path / "Spyke_Final.png"
    return path, reference_sheet(path)


def test_auto_finds_each_figure_in_reading_order_and_writes_an_editable_regions_file(sheet, tmp_path):
    path, boxes = sheet
    result = run("crop", str(path), "--auto")
    assert result.exit_code == 0, result.output
    regions_file = tmp_path / "Spyke_Final.regions.toml"
    data = tomllib.loads(regions_file.read_text())
    regions = data["region"]
    assert [r["name"] for r in regions] == ["spyke_final_01", "spyke_final_02", "spyke_final_03"]
    assert data["background"] == "#ffffff" and data["sheet"] == "Spyke_Final.png"
    for r, (x0, y0, x1, y1) in zip(regions, boxes):
        # Each region holds its whole figure (the detached sword included) with a small margin only.
        assert r["x"] <= x0 and r["y"] <= y0 and r["x"] + r["width"] >= x1 and r["y"] + r["height"] >= y1
        assert r["width"] <= (x1 - x0) + 20 and r["height"] <= (y1 - y0) + 20
    assert "found 3 figure(s)" in result.output and "1 small mark(s) ignored" in result.output
    assert "#" in regions_file.read_text().splitlines()[0]  # the file tells the artist what to do


def test_crop_from_edited_regions_writes_512_squares_padded_with_the_background(sheet, tmp_path):
    path, _ = sheet
    assert run("crop", str(path), "--auto").exit_code == 0
    regions_file = tmp_path / "Spyke_Final.regions.toml"
    # The artist renames a region and deletes another.
    text = regions_file.read_text().replace('"spyke_final_01"', '"front"')
    text = text[: text.index('[[region]]\nname = "spyke_final_03"')]
    regions_file.write_text(text)

    out = tmp_path / "set"
    result = run("crop", str(path), "--regions", str(regions_file), "--out", str(out), "--size", "512", "--fit", "pad")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["front.png", "spyke_final_02.png"]
    img = np.asarray(Image.open(out / "front.png").convert("RGB"))
    assert img.shape == (512, 512, 3)
    assert (img[:, :40] == 255).all() and (img[:, -40:] == 255).all()  # a tall figure: padded at the sides
    assert (img[250, 256] != 255).any()  # the figure is in the middle


def test_fit_crop_fills_the_square_where_pad_keeps_the_whole_figure(sheet, tmp_path):
    path, _ = sheet
    regions = tmp_path / "body.toml"
    regions.write_text('[[region]]\nname = "body"\nx = 120\ny = 150\nwidth = 120\nheight = 400\n')
    for fit in ("pad", "crop"):
        out = tmp_path / fit
        assert run("crop", str(path), "--regions", str(regions), "--out", str(out), "--fit", fit).exit_code == 0
    padded = np.asarray(Image.open(tmp_path / "pad" / "body.png"))
    cropped = np.asarray(Image.open(tmp_path / "crop" / "body.png"))
    body = np.array([40, 60, 150])
    assert cropped.shape == padded.shape == (512, 512, 3)
    assert (np.abs(cropped.astype(int) - body).max(axis=2) < 8).mean() > 0.99  # all body, edge to edge
    assert (padded[:, 0] == 255).all()  # the whole figure, white beside it


def test_a_region_past_the_sheet_names_the_file_and_writes_nothing(sheet, tmp_path):
    path, _ = sheet
    regions = tmp_path / "regions.toml"
    regions.write_text('[[region]]\nname = "ok"\nx = 0\ny = 0\nwidth = 100\nheight = 100\n\n'
                       '[[region]]\nname = "too_far"\nx = 1100\ny = 0\nwidth = 200\nheight = 100\n')
    out = tmp_path / "set"
    result = run("crop", str(path), "--regions", str(regions), "--out", str(out))
    assert result.exit_code == 2
    assert str(regions) in result.output and "too_far" in result.output and "1200x700" in result.output
    assert not out.exists()


def test_a_bad_regions_file_names_the_region_and_field(sheet, tmp_path):
    path, _ = sheet
    regions = tmp_path / "regions.toml"
    regions.write_text('[[region]]\nname = "front"\nx = 0\ny = 0\nwidth = -5\nheight = 100\n')
    result = run("crop", str(path), "--regions", str(regions), "--out", str(tmp_path / "set"))
    assert result.exit_code == 2
    assert "region 'front' width" in result.output and str(regions) in result.output


def test_an_unreadable_sheet_is_named(tmp_path):
    bad = tmp_path / "sheet.png"
    bad.write_text("not an image")
    result = run("crop", str(bad), "--auto")
    assert result.exit_code == 2 and str(bad) in result.output and "not a readable image" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png"]


def test_existing_crops_and_an_edited_regions_file_are_not_overwritten(sheet, tmp_path):
    path, _ = sheet
    out = tmp_path / "set"
    assert run("crop", str(path), "--auto", "--out", str(out)).exit_code == 0
    regions_file = tmp_path / "Spyke_Final.regions.toml"
    regions_file.write_text(regions_file.read_text() + "\n# my edits\n")
    before = snapshot(tmp_path)

    again = run("crop", str(path), "--auto", "--out", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.output
    recrop = run("crop", str(path), "--regions", str(regions_file), "--out", str(out))
    assert recrop.exit_code == 2 and "spyke_final_01.png" in recrop.output
    assert snapshot(tmp_path) == before
    assert run("crop", str(path), "--regions", str(regions_file), "--out", str(out), "--overwrite").exit_code == 0


def test_a_sheet_with_no_figures_says_so(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (300, 200), (250, 250, 250)).save(blank)
    result = run("crop", str(blank), "--auto")
    assert result.exit_code == 2 and "No figures found" in result.output
    assert not (tmp_path / "blank.regions.toml").exists()


def test_crop_without_regions_or_auto_is_a_usage_error(sheet):
    path, _ = sheet
    result = run("crop", str(path))
    assert result.exit_code == 2 and "--auto" in result.output

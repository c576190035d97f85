"""`sidecar dataset check`: a good set passes; each kind of problem is reported with the file named
and a non-zero exit; the asymmetry warning fires when flips of an asymmetric character pass the share."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from sidecar.cli import main
from tests.dataset_fixtures import TRIGGER, asymmetric_figure, training_set


def run(*args: str):
    return CliRunner().invoke(main, ["dataset", *args])


def report(folder: Path, *extra: str) -> tuple[int, dict]:
    result = run("check", str(folder), "--trigger", TRIGGER, "--json", *extra)
    return result.exit_code, json.loads(result.output)


def problems(rep: dict, level: str = "errors") -> set[tuple[str, str | None]]:
    return {(f["check"], f["file"]) for f in rep[level]}


@pytest.fixture
def good_set(tmp_path: Path) -> Path:
    folder = tmp_path / "set"
    training_set(folder, 16)
    return folder


def test_a_good_set_passes_with_a_table_of_ok_checks(good_set):
    result = run("check", str(good_set), "--trigger", TRIGGER)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for check in ("count", "size", "blank", "captions", "trigger", "parts", "duplicates"):
        assert any(line.startswith("ok") and check in line for line in lines), check
    assert "16 images + 0 flips, 0 error(s)" in lines[-1]


def test_too_few_images_is_an_error(tmp_path):
    folder = tmp_path / "set"
    training_set(folder, 10)
    code, rep = report(folder)
    assert code == 1 and ("count", None) in problems(rep)
    assert "10 source images" in rep["errors"][0]["message"]


def test_too_many_images_is_an_error(tmp_path):
    # 21: one past the 15-20 a single character's LoRA wants.
    folder = tmp_path / "set"
    training_set(folder, 21)
    code, rep = report(folder)
    assert code == 1 and problems(rep) == {("count", None)}
    assert "21 source images" in rep["errors"][0]["message"] and "15-20" in rep["errors"][0]["message"]


def test_twenty_images_and_their_flips_are_within_the_count(tmp_path):
    folder = tmp_path / "set"
    training_set(folder, 20)
    assert run("flip", str(folder)).exit_code == 0  # flips do not count towards the 20
    code, rep = report(folder, "--symmetric")
    assert code == 0, rep["errors"]
    assert (rep["sourceImages"], rep["flips"]) == (20, 20)


def test_each_broken_image_and_caption_is_named(good_set):
    (good_set / "view_00.txt").unlink()  # no caption
    (good_set / "view_01.txt").write_text("full body, spyke_plasma_v1, standing, white\n")  # trigger not first
    (good_set / "view_02.txt").write_text(f"{TRIGGER}, full body, standing\n")  # three parts
    (good_set / "view_03.txt").write_text("")  # empty
    Image.open(good_set / "view_04.png").resize((768, 768)).save(good_set / "view_04.png")  # not 512
    Image.new("RGB", (512, 512), (255, 255, 255)).save(good_set / "view_05.png")  # blank
    (good_set / "view_06.png").write_bytes(b"garbage")  # unreadable
    code, rep = report(good_set)
    assert code == 1
    assert problems(rep) >= {
        ("captions", "view_00.png"), ("trigger", "view_01.png"), ("parts", "view_02.png"),
        ("captions", "view_03.png"), ("size", "view_04.png"), ("blank", "view_05.png"), ("images", "view_06.png"),
    }
    assert not any(f == "view_07.png" for _, f in problems(rep))


def test_near_duplicates_are_found_by_perceptual_hash(good_set):
    # A re-saved, slightly rescaled copy under another name: same picture, different bytes.
    buf = io.BytesIO()
    Image.open(good_set / "view_03.png").resize((500, 500)).resize((512, 512)).save(buf, "JPEG", quality=80)
    Image.open(buf).save(good_set / "view_99.png")
    (good_set / "view_99.txt").write_text(f"{TRIGGER}, full body, standing, white\n")
    code, rep = report(good_set)
    assert code == 1
    dupes = [f for f in rep["errors"] if f["check"] == "duplicates"]
    assert len(dupes) == 1 and {dupes[0]["file"], *dupes[0]["message"].split()} >= {"view_99.png", "view_03.png"}


def test_flips_of_an_asymmetric_character_over_the_share_warn_but_do_not_fail(good_set):
    asymmetric_figure().save(good_set / "view_00.png")
    assert run("flip", str(good_set)).exit_code == 0  # 16 flips: 50% of 32
    code, rep = report(good_set)
    assert code == 0, rep["errors"]
    warning = [w for w in rep["warnings"] if w["check"] == "flips"]
    assert len(warning) == 1 and "50%" in warning[0]["message"] and "asymmetric" in warning[0]["message"]

    code, rep = report(good_set, "--symmetric")
    assert code == 0 and not [w for w in rep["warnings"] if w["check"] == "flips"]

    human = run("check", str(good_set), "--trigger", TRIGGER)
    assert human.exit_code == 0 and "warning" in human.output and "right bracer" in human.output


def test_a_few_flips_under_the_share_do_not_warn(good_set):
    assert run("flip", str(good_set), "--only", "view_0[0-3]*").exit_code == 0  # 4 of 20 = 20%
    code, rep = report(good_set)
    assert code == 0 and rep["warnings"] == [] and rep["flips"] == 4


def test_a_flip_caption_without_the_tag_is_a_warning(good_set):
    assert run("flip", str(good_set), "--only", "view_00*").exit_code == 0
    (good_set / "view_00_flip.txt").write_text((good_set / "view_00.txt").read_text())
    code, rep = report(good_set)
    assert code == 0 and ("flips", "view_00_flip.png") in problems(rep, "warnings")


def test_a_missing_folder_is_an_input_error(tmp_path):
    result = run("check", str(tmp_path / "nope"))
    assert result.exit_code == 2 and "does not exist" in result.output

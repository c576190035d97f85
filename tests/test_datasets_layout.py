"""`sidecar dataset layout`: the kohya folder names (img/<repeats>_<trigger> <class>/, reg/1_<class>/),
checked against the training package's own dataset reader; a failing set or a busy --out changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.cli import main
from sidecar.training.dataset import load_dataset
from tests.dataset_fixtures import TRIGGER, figure, snapshot, training_set


def run(*args: str):
    return CliRunner().invoke(main, ["dataset", *args])


@pytest.fixture
def sets(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "set"
    training_set(src, 16)
    reg = tmp_path / "reg"
    reg.mkdir()
    for i in range(3):
        figure(100 + i).save(reg / f"reg_{i + 1:04d}.png")
        (reg / f"reg_{i + 1:04d}.txt").write_text("anime character, full body\n")
    return src, reg


def test_layout_builds_the_kohya_tree_with_the_reg_set_beside_it(sets, tmp_path):
    src, reg = sets
    root = tmp_path / "train"
    result = run("layout", str(src), "--repeats", "10", "--class", "anime character", "--trigger", TRIGGER,
                 "--reg", str(reg), "--out", str(root))
    assert result.exit_code == 0, result.output
    img_dir = root / "img" / f"10_{TRIGGER} anime character"
    reg_dir = root / "reg" / "1_anime character"
    assert sorted(p.name for p in root.iterdir()) == ["img", "reg"]  # no staging left behind
    assert len(list(img_dir.glob("*.png"))) == 16 and len(list(img_dir.glob("*.txt"))) == 16
    assert sorted(p.name for p in reg_dir.iterdir()) == [f"reg_000{i}.{e}" for i in (1, 2, 3) for e in ("png", "txt")]
    assert (img_dir / "view_05.txt").read_text() == (src / "view_05.txt").read_text()
    assert f'POST /loras/train {{"datasetDir": "{root}"' in result.output

    # What the trainer reads from that datasetDir: kohya layout, 10 repeats, class tokens after the
    # first underscore, and the regularisation set beside it.
    ds = load_dataset(root, TRIGGER)
    assert ds.layout == "kohya" and ds.image_count == 16 and ds.images_with_repeats == 160
    assert ds.subsets[0].class_tokens == f"{TRIGGER} anime character"
    assert ds.reg_image_count == 3 and ds.reg_subsets[0].class_tokens == "anime character"


def test_a_set_with_check_errors_is_not_laid_out(sets, tmp_path):
    src, _ = sets
    (src / "view_03.txt").unlink()
    root = tmp_path / "train"
    result = run("layout", str(src), "--out", str(root), "--trigger", TRIGGER)
    assert result.exit_code == 1 and "view_03.png" in result.output
    assert not root.exists()


def test_an_existing_layout_is_replaced_only_with_overwrite(sets, tmp_path):
    src, reg = sets
    root = tmp_path / "train"
    assert run("layout", str(src), "--out", str(root), "--trigger", TRIGGER, "--repeats", "5").exit_code == 0
    before = snapshot(root)
    again = run("layout", str(src), "--out", str(root), "--trigger", TRIGGER, "--repeats", "10")
    assert again.exit_code == 2 and "--overwrite" in again.output and str(root / "img") in again.output
    assert snapshot(root) == before

    assert run("layout", str(src), "--out", str(root), "--trigger", TRIGGER, "--repeats", "10",
               "--overwrite").exit_code == 0
    # The old 5_ folder is gone: kohya would otherwise train on both.
    assert [p.name for p in (root / "img").iterdir()] == [f"10_{TRIGGER} anime character"]


def test_a_reg_set_rendered_straight_into_the_root_is_kept(sets, tmp_path):
    src, reg = sets
    root = tmp_path / "train"
    in_place = root / "reg" / "1_anime character"
    in_place.mkdir(parents=True)
    (in_place / "reg_0001.png").write_bytes((reg / "reg_0001.png").read_bytes())
    result = run("layout", str(src), "--out", str(root), "--trigger", TRIGGER)
    assert result.exit_code == 0, result.output
    assert "kept the regularisation set" in result.output and (in_place / "reg_0001.png").exists()


def test_bad_names_are_refused(sets, tmp_path):
    src, _ = sets
    result = run("layout", str(src), "--out", str(tmp_path / "t"), "--class", "a/b", "--trigger", TRIGGER)
    assert result.exit_code == 2 and "class" in result.output
    result = run("layout", str(src), "--out", str(tmp_path / "t"), "--repeats", "0", "--trigger", TRIGGER)
    assert result.exit_code == 2 and "at least 1" in result.output
    assert not (tmp_path / "t").exists()

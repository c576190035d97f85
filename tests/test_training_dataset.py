"""Dataset checks at POST /loras/train: what kohya would silently mis-train on is a 400 naming the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training_fixtures import (  # noqa: F401  (fixtures)
    CAPTIONS,
    TRIGGER,
    backend,
    client,
    dataset_dir,
    fake_env,
    kohya_dir,
    make_dataset,
    settings,
    wait_run,
)


async def post(client, dataset: Path, **body):
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset), "force": True, "outputName": "spyke", "steps": 4,
                                                   "saveEveryNSteps": 2, "engine": "kohya", **body})
    return resp.status, await resp.json()


async def test_missing_dataset_dir(client, tmp_path) -> None:
    status, body = await post(client, tmp_path / "nope")
    assert status == 400 and body["error"]["code"] == "dataset_invalid"
    assert "does not exist" in body["error"]["message"]


async def test_empty_dataset_dir(client, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    status, body = await post(client, tmp_path / "empty")
    assert status == 400 and body["error"]["code"] == "dataset_invalid" and "No images" in body["error"]["message"]


async def test_relative_dataset_dir_is_refused(client) -> None:
    status, body = await post(client, Path("dataset"))
    assert status == 400 and body["error"]["code"] == "dataset_invalid"


async def test_images_without_captions_are_named(client, dataset_dir) -> None:
    (dataset_dir / "img01.txt").unlink()
    (dataset_dir / "img02.txt").unlink()
    status, body = await post(client, dataset_dir)
    assert status == 400 and body["error"]["code"] == "dataset_invalid"
    assert body["error"]["details"]["missingCaptions"] == ["img01.png", "img02.png"]
    assert "img01.png" in body["error"]["message"]


async def test_caption_without_trigger_word_first_is_named(client, dataset_dir) -> None:
    (dataset_dir / "img01.txt").write_text(f"upper body, {TRIGGER}, smiling\n")
    (dataset_dir / "img02.txt").write_text("")
    status, body = await post(client, dataset_dir)
    assert status == 400
    details = body["error"]["details"]
    assert details["triggerWordNotFirst"] == [{"file": "img01.txt", "firstTag": "upper body"}]
    assert details["emptyCaptions"] == ["img02.txt"]
    assert TRIGGER in body["error"]["message"]


async def test_another_trigger_word_can_be_given(client, tmp_path) -> None:
    ds = make_dataset(tmp_path / "june", [c.replace(TRIGGER, "june_v1") for c in CAPTIONS])
    assert (await post(client, ds))[0] == 400
    status, body = await post(client, ds, triggerWord="june_v1")
    assert status == 202 and body["triggerWord"] == "june_v1"


async def test_kohya_layout_is_passed_to_kohya_as_its_parent(client, tmp_path, fake_env) -> None:
    img = tmp_path / "set" / "img"
    make_dataset(img / f"10_{TRIGGER} character")
    (img / "notes").mkdir()
    status, body = await post(client, img)
    assert status == 202, body
    assert any("notes/ is ignored" in w for w in body["warnings"])
    done = await wait_run(client, body["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    argv = json.loads(fake_env["argv"].read_text())
    data_dir = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--train_data_dir=")))
    # kohya reads <repeats>_<class> folders under train_data_dir: the subset is there, linked to the real one.
    assert (data_dir / f"10_{TRIGGER} character").resolve() == (img / f"10_{TRIGGER} character").resolve()


async def test_flat_folder_is_laid_out_for_kohya(client, dataset_dir, fake_env) -> None:
    status, body = await post(client, dataset_dir)
    assert status == 202
    done = await wait_run(client, body["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    argv = json.loads(fake_env["argv"].read_text())
    data_dir = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("--train_data_dir=")))
    subsets = list(data_dir.iterdir())
    assert [p.name for p in subsets] == [f"10_{TRIGGER} character"]
    assert subsets[0].resolve() == dataset_dir.resolve()


@pytest.mark.parametrize("bad", ["img/../x", "a/b", ".hidden", ""])
async def test_output_name_must_be_a_plain_name(client, dataset_dir, bad: str) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": bad})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_field"


async def test_laid_out_root_with_a_regularisation_set(client, tmp_path, fake_env) -> None:
    """What `sidecar dataset layout` writes: ROOT/img/<n>_<trigger> <class>/ and ROOT/reg/<n>_<class>/."""
    root = tmp_path / "train"
    make_dataset(root / "img" / f"10_{TRIGGER} character")
    reg = root / "reg" / "1_character"
    make_dataset(reg, ["character, standing", "character, sitting"])
    (reg / "img01.txt").unlink()  # reg captions are optional: kohya falls back to the class tokens
    status, body = await post(client, root)
    assert status == 202, body
    assert any("regularisation set: 2 image(s)" in w for w in body["warnings"])
    done = await wait_run(client, body["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    argv = dict(a.split("=", 1) for a in json.loads(fake_env["argv"].read_text()) if "=" in a)
    assert (Path(argv["--train_data_dir"]) / f"10_{TRIGGER} character").resolve() == \
        (root / "img" / f"10_{TRIGGER} character").resolve()
    assert (Path(argv["--reg_data_dir"]) / "1_character").resolve() == reg.resolve()


async def test_hidden_files_are_ignored_as_kohya_and_the_dataset_tools_ignore_them(client, tmp_path, fake_env) -> None:
    """macOS leaves `._name.png` AppleDouble files on external drives: kohya's `*.png` glob skips them and
    so does `sidecar dataset check`; the daemon's check reads the layout through the same code."""
    img = tmp_path / "set" / "img"
    subset = make_dataset(img / f"10_{TRIGGER} character")
    (subset / "._img00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    status, body = await post(client, img)
    assert status == 202, body  # not "1 image(s) without a .txt caption (._img00.png)"

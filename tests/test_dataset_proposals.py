"""Caption proposals (`sidecar dataset caption DIR --auto`): a WD14-style tagger (a tiny ONNX model built
here, with the real input and output names and shapes) or a vision model through the fake Ollama
proposes framing, pose and background into captions.csv as `proposed` rows; confirmed rows are never
overwritten, `caption --table` and `dataset check` accept the set once the artist confirmed it, flips keep
their `mirrored` tag and the trigger word comes first."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from sidecar.cli import main
from sidecar.dataprep.tagger import Wd14Tagger, read_tags
from tests.dataset_fixtures import TRIGGER, snapshot, training_set
from tests.fake_ollama import FakeOllama, Reply, ollama_fake, ollama_server  # noqa: F401
from tests.tiny_tagger import build_tagger


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_tagger(root / "taggers" / "tiny-wd14")
    return root


def run(models: Path, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["dataset", *args], env={"SIDECAR_MODELS_DIR": str(models),
                                                             "SIDECAR_CONFIG": str(models / "none.toml"),
                                                             **(env or {})})


def rows(table: Path) -> dict[str, dict[str, str]]:
    return {r["file"]: r for r in csv.DictReader(table.open(encoding="utf-8"))}


def test_the_tagger_runs_its_real_preprocessing_and_thresholds(models: Path) -> None:
    tagger = Wd14Tagger(models / "taggers" / "tiny-wd14")
    assert (tagger.size, tagger.input_name, tagger.output_name) == (32, "input_1:0", "predictions_sigmoid")
    red_figure = Image.new("RGB", (20, 40), (255, 0, 0))  # padded to a 40x40 white square, then 32x32
    array = tagger.preprocess(red_figure)
    assert array.shape == (1, 32, 32, 3) and array.dtype.name == "float32"
    assert array[0, 16, 0].tolist() == [255.0, 255.0, 255.0] and array[0, 16, 16].tolist() == [0.0, 0.0, 255.0]
    found = {t.name: round(t.score, 2) for t in tagger.tag(red_figure)}
    assert found == {"full body": 0.95, "standing": 0.73, "simple background": 0.88, "spyke (plasma)": 0.88}
    assert ("^_^", 0) in read_tags(models / "taggers" / "tiny-wd14" / "selected_tags.csv")  # kaomoji kept


def test_proposals_then_confirmation_give_a_set_that_check_accepts(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    training_set(folder, 16, captions=False)
    for i in (0, 1):  # two figures as the tagger sees them: red ones (full body, standing)
        Image.new("RGB", (512, 512), "white").save(folder / f"view_{i:02d}.png")
        img = Image.open(folder / f"view_{i:02d}.png")
        img.paste((255, 0, 0), (128 + 40 * i, 0, 384 - 10 * i, 512))
        img.save(folder / f"view_{i:02d}.png")
    table = folder / "captions.csv"
    table.write_text("file,framing,pose,background,status\n"
                     "view_03.png,upper body,arms crossed,city street,confirmed\n"
                     "view_04.png,portrait,,,\n")
    result = run(models, "caption", str(folder), "--auto")
    assert result.exit_code == 0, result.output
    got = rows(table)
    assert got["view_00.png"]["framing"] == "full body" and got["view_00.png"]["pose"] == "standing"
    assert got["view_00.png"]["status"] == "proposed"
    assert got["view_03.png"] == {"file": "view_03.png", "framing": "upper body", "pose": "arms crossed",
                                  "background": "city street", "status": "confirmed"}  # never overwritten
    assert got["view_04.png"]["framing"] == "portrait" and got["view_04.png"]["status"] == "proposed"
    assert "confirm" in result.output and "tiny-wd14" in result.output
    # Proposals are not captions yet: --table refuses them, check names them.
    before = snapshot(folder)
    refused = run(models, "caption", str(folder), "--trigger", TRIGGER)
    assert refused.exit_code == 2 and "not confirmed" in refused.output and snapshot(folder) == before
    # The artist fills and confirms every row (here: all at once), flips a back view, writes the captions.
    with table.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "framing", "pose", "background", "status"])
        for name, r in sorted(got.items()):
            w.writerow([name, r["framing"] or "full body", r["pose"] or "standing", r["background"] or "white",
                        "confirmed"])
    assert run(models, "flip", str(folder), "--only", "view_05*").exit_code == 0
    assert run(models, "caption", str(folder), "--trigger", TRIGGER).exit_code == 0
    assert (folder / "view_00.txt").read_text() == f"{TRIGGER}, full body, standing, simple background\n"
    assert (folder / "view_05_flip.txt").read_text().startswith(TRIGGER)
    assert (folder / "view_05_flip.txt").read_text().rstrip().endswith(", mirrored")
    checked = run(models, "check", str(folder), "--trigger", TRIGGER)
    assert checked.exit_code == 0, checked.output
    # Proposing again changes nothing the artist confirmed.
    confirmed = table.read_bytes()
    again = run(models, "caption", str(folder), "--auto")
    assert again.exit_code == 0 and table.read_bytes() == confirmed
    assert "kept 16 confirmed" in again.output


def test_check_refuses_a_set_whose_proposals_are_not_confirmed(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "set"
    training_set(folder, 16, captions=True)
    (folder / "captions.csv").write_text("file,framing,pose,background,status\n"
                                         "view_00.png,full body,standing,white,proposed\n")
    checked = run(models, "check", str(folder), "--trigger", TRIGGER)
    assert checked.exit_code == 1 and "view_00.png" in checked.output and "not confirmed" in checked.output


def test_the_vision_model_proposes_through_ollama_and_a_failure_writes_nothing(
        models: Path, tmp_path: Path, ollama_fake: FakeOllama) -> None:
    folder = tmp_path / "set"
    training_set(folder, 3, captions=False)
    env = {"SIDECAR_OLLAMA_URL": ollama_fake.url}
    ollama_fake.answer({"framing": "full body", "pose": "standing", "background": "plain white background"},
                       Reply(status=500))
    failed = run(models, "caption", str(folder), "--auto", "--proposer", "ollama", env=env)
    assert failed.exit_code == 1 and "status 500" in failed.output
    assert not (folder / "captions.csv").exists()
    ollama_fake.default = Reply('{"framing": "upper body", "pose": "spyke_plasma_v1 sitting", "background": ""}')
    done = run(models, "caption", str(folder), "--auto", "--proposer", "ollama", env=env)
    assert done.exit_code == 0, done.output
    got = rows(folder / "captions.csv")
    assert {r["framing"] for r in got.values()} == {"upper body"}
    assert {r["pose"] for r in got.values()} == {"sitting"}  # the trigger word is never a part
    assert ollama_fake.chats[-1]["model"] == "llava:7b" and ollama_fake.chats[-1]["messages"][1]["images"]
    assert "background" in done.output  # the empty part is named for the artist to fill


def test_no_tagger_says_where_to_put_one(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    training_set(folder, 2, captions=False)
    result = run(tmp_path / "empty-models", "caption", str(folder), "--auto", "--proposer", "tagger")
    assert result.exit_code == 2 and str(tmp_path / "empty-models" / "taggers") in result.output


def test_doctor_says_whether_ollama_runs_has_the_models_and_where_a_tagger_goes(
        models: Path, tmp_path: Path, ollama_fake: FakeOllama) -> None:
    from sidecar.config import Settings
    from sidecar.doctor.assist_checks import check_assistants

    del ollama_fake.models["llava:7b"]
    found = {c.name: c for c in check_assistants(Settings(data_dir=tmp_path, ollama_url=ollama_fake.url,
                                                          models_dir=models))}
    assert found["ollama"].status == "ok" and found["prompt_model"].status == "ok"
    assert (found["vision_model"].status, found["vision_model"].fix) == ("warn", "ollama pull llava:7b")
    assert found["caption tagger"].detail == "tiny-wd14"
    down = {c.name: c for c in check_assistants(Settings(data_dir=tmp_path, ollama_url="http://127.0.0.1:9",
                                                         models_dir=tmp_path / "none"))}
    assert down["ollama"].status == "warn" and "https://ollama.com" in down["ollama"].fix
    assert str(tmp_path / "none" / "taggers") in down["caption tagger"].fix

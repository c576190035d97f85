"""POST /loras/train with what a hostile or careless caller sends: a sample prompt (or trigger word) that would
become more than one prompt, or carry options, in the trainers' prompt syntax (kohya's prompt file is one
prompt a line split on " --"; ai-toolkit splits each prompt on "--": `--w 4096` past the run's size) is
refused with invalid_field naming it, and no run is queued."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training_fixtures import (  # noqa: F401  (fixtures)
    backend,
    client,
    dataset_dir,
    fake_env,
    kohya_dir,
    settings,
)


@pytest.mark.parametrize("body", [
    {"samplePrompts": ["spyke_plasma_v1, portrait --n blurry"]},
    {"samplePrompts": ["fine", "spyke_plasma_v1--w 4096 --h 4096"]},
    {"samplePrompts": ["spyke_plasma_v1, portrait\n--w 4096 --h 4096 --s 1000"]},
    {"samplePrompts": ["two\rlines"]},
    {"samplePrompts": ["nul\x00"]},
    {"samplePrompts": ["--n everything"]},
    {"triggerWord": "spyke --l 30"},
    {"triggerWord": "spyke\nx"},
    {"samplePrompts": ["p"] * 17},  # bounded: at most 16
    {"samplePrompts": ["x" * 1001]},
])
async def test_a_sample_prompt_that_would_carry_trainer_options_is_refused_and_nothing_runs(
        client, dataset_dir, body) -> None:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True,
                                                   "outputName": "s", **body})
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "invalid_field", answer
    assert answer["error"]["details"]["field"] in ("samplePrompts", "triggerWord") or \
        answer["error"]["details"]["field"].startswith("samplePrompts.")
    assert (await (await client.get("/loras/runs")).json())["runs"] == []


async def test_a_prompt_with_single_dashes_and_unicode_is_accepted(client, dataset_dir) -> None:
    prompts = ["spyke_plasma_v1, half-body - smiling", "spyke_plasma_v1, 東京の夜, café — rain"]
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "s",
                                                   "samplePrompts": prompts, "steps": 2, "saveEveryNSteps": 2})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["params"]["samplePrompts"] == prompts


async def test_a_sample_replaced_by_a_link_out_of_the_run_is_not_served(client, dataset_dir, fake_env, tmp_path) -> None:
    from tests.training_fixtures import wait_run

    resp = await client.post("/loras/train", json={
        "datasetDir": str(dataset_dir), "force": True, "outputName": "spyke", "engine": "kohya", "steps": 4,
        "saveEveryNSteps": 2, "samplePrompts": ["spyke_plasma_v1, portrait", "spyke_plasma_v1, full body"]})
    assert resp.status == 202, await resp.text()
    done = await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    first, second = [c for c in done["checkpoints"] if c["step"] == 4][0]["samples"][:2]
    assert (await client.get(f"/loras/{done['id']}/samples/{first}")).status == 200
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not the run's: a file elsewhere on this machine")
    sample = Path(done["outputDir"]) / "sample" / first
    sample.unlink()
    sample.symlink_to(secret)
    got = await client.get(f"/loras/{done['id']}/samples/{first}")
    assert got.status == 404 and (await got.json())["error"]["code"] == "not_found"
    assert (await client.get(f"/loras/{done['id']}/samples/{second}")).status == 200
    for bad in ("..%2F..%2Ftrain.log", "%2Fetc%2Fpasswd", "a%00.png", "x" * 300 + ".png"):
        got = await client.get(f"/loras/{done['id']}/samples/{bad}")
        assert got.status == 404 and (await got.json())["error"]["code"] == "not_found", bad


def test_a_link_in_the_samples_folder_is_never_listed(tmp_path) -> None:
    from sidecar.training.adapter import samples_by_step
    from sidecar.training.kohya_args import KohyaAdapter

    out = tmp_path / "out"
    (out / "sample").mkdir(parents=True)
    (out / "sample" / "spyke_000002_00_5.png").write_bytes(b"\x89PNG")
    (tmp_path / "elsewhere.png").write_bytes(b"\x89PNG")
    (out / "sample" / "spyke_000002_01_6.png").symlink_to(tmp_path / "elsewhere.png")
    assert samples_by_step(KohyaAdapter(), out, "spyke") == {2: ["sample/spyke_000002_00_5.png"]}


async def test_publish_never_replaces_a_folder_that_is_not_a_bundle(client, dataset_dir, fake_env, tmp_path) -> None:
    from tests.training_fixtures import wait_run

    resp = await client.post("/loras/train", json={"datasetDir": str(dataset_dir), "force": True, "outputName": "spyke",
                                                   "engine": "kohya", "steps": 2, "saveEveryNSteps": 2})
    done = await wait_run(client, (await resp.json())["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    root = tmp_path / "site"
    mine = root / "dist" / "spyke"  # a web project's own build output, say: not ours to delete
    mine.mkdir(parents=True)
    (mine / "index.html").write_text("the user's page")
    got = await client.post(f"/loras/{done['id']}/publish", json={"root": str(root)})
    answer = await got.json()
    assert got.status == 400 and answer["error"]["code"] == "invalid_field", answer
    assert answer["error"]["details"]["field"] == "name"
    assert (mine / "index.html").read_text() == "the user's page" and sorted(p.name for p in mine.iterdir()) == [
        "index.html"]
    assert not (root / "dist" / "spyke.zip").exists()
    # Under another name it is written; published again under that name, the bundle is replaced as before.
    for _ in range(2):
        got = await client.post(f"/loras/{done['id']}/publish", json={"root": str(root), "name": "spyke-v1"})
        assert got.status == 201, await got.text()
    assert (root / "dist" / "spyke-v1" / "metadata.json").is_file()
    for bad in ({"name": "../escape"}, {"name": "a/b"}, {"name": ".hidden"}, {"root": "relative/dir"},
                {"root": "/tmp/x\u0000y"}, {"name": "x" * 101}, {"step": 0}, {"step": "2"}, {"withDataset": "yes"}, {"withDataset": 1}):
        got = await client.post(f"/loras/{done['id']}/publish", json={"root": str(root), **bad})
        assert got.status == 400, (bad, await got.text())
    assert sorted(p.name for p in (root / "dist").iterdir()) == ["spyke", "spyke-v1", "spyke-v1.zip"]

"""The Explorer through the real app (scripted backend serving real LoRA files with kohya headers): the
installed LoRAs with family, trigger word and metadata; a showcase rendered once, served from the cache
while the LoRA file stays the same, rendered again once it changes; two LoRA combinations compared on the
same seeds, the columns differing only in their LoRA stack."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.family_headers import SD15_CHECKPOINT, SD15_LORA, SDXL_LORA, write_safetensors
from tests.scripted_backend import ScriptedBackend


@pytest.fixture
async def explorer(aiohttp_client, tmp_path: Path):
    models = tmp_path / "models"
    write_safetensors(models / "checkpoints" / "anything-v5.safetensors", SD15_CHECKPOINT)
    write_safetensors(models / "loras" / "ink_style.safetensors", SD15_LORA, {"ss_tag_frequency":
                      '{"10_inkstyle": {"inkstyle": 20, "monochrome": 5}}', "ss_network_dim": "8"})
    write_safetensors(models / "loras" / "screentone.safetensors", SD15_LORA)
    write_safetensors(models / "loras" / "xl_light.safetensors", SDXL_LORA)
    backend = ScriptedBackend(folders={"checkpoints": models / "checkpoints", "loras": models / "loras"})
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", models_dir=models)
    return await aiohttp_client(create_app(settings, backend)), models


def tmp_data(client) -> Path:
    from sidecar.api.keys import SETTINGS

    return client.server.app[SETTINGS].data_dir


async def settled(client, ids: list[str]) -> list[dict]:
    for _ in range(500):
        jobs = [await (await client.get(f"/jobs/{i}")).json() for i in ids]
        if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
            return jobs
        await asyncio.sleep(0.02)
    raise AssertionError("jobs did not finish")


async def test_loras_with_family_and_trigger_and_a_cached_showcase(explorer) -> None:
    client, models = explorer
    listing = (await (await client.get("/explorer/loras")).json())["loras"]
    by_id = {lora["id"]: lora for lora in listing}
    assert {k: v["family"] for k, v in by_id.items()} == {"ink_style": "sd15", "screentone": "sd15", "xl_light": "sdxl"}
    assert by_id["ink_style"]["trigger"] == by_id["ink_style"]["info"]["triggerWord"]
    assert by_id["screentone"]["trigger"] == "screentone" and by_id["ink_style"]["showcase"]["status"] == "none"

    body = {"width": 64, "height": 96}
    first = await client.post("/explorer/loras/ink_style/showcase", json=body)
    assert first.status == 202, await first.text()
    shown = await first.json()
    assert not shown["cached"] and len(shown["jobs"]) == 3
    jobs = await settled(client, [j["id"] for j in shown["jobs"]])
    assert all(j["params"]["loras"][0]["id"] == "ink_style" and j["params"]["seed"] == shown["seed"] for j in jobs)
    assert all(j["params"]["prompt"].startswith(by_id["ink_style"]["trigger"]) for j in jobs)

    again = await client.post("/explorer/loras/ink_style/showcase", json=body)
    assert again.status == 200 and (await again.json())["cached"]
    assert [j["id"] for j in (await again.json())["jobs"]] == [j["id"] for j in jobs]
    state = {lora["id"]: lora for lora in (await (await client.get("/explorer/loras")).json())["loras"]}
    assert state["ink_style"]["showcase"]["status"] == "cached"

    # The LoRA file replaced (a new run promoted under the same name): stale, and rendered anew.
    write_safetensors(models / "loras" / "ink_style.safetensors", SD15_LORA, {"ss_network_dim": "16"})
    state = {lora["id"]: lora for lora in (await (await client.get("/explorer/loras")).json())["loras"]}
    assert state["ink_style"]["showcase"]["status"] == "stale"
    third = await client.post("/explorer/loras/ink_style/showcase", json=body)
    assert third.status == 202 and not (await third.json())["cached"]

    missing = await client.post("/explorer/loras/nope/showcase", json={})
    assert missing.status == 400 and (await missing.json())["error"]["code"] == "lora_not_found"


async def test_a_showcase_asked_with_other_settings_is_rendered_again_not_served_stale(explorer) -> None:
    client, _ = explorer
    base = {"width": 64, "height": 96, "strength": 0.5, "steps": 4}
    first = await client.post("/explorer/loras/screentone/showcase", json=base)
    assert first.status == 202, await first.text()
    await settled(client, [j["id"] for j in (await first.json())["jobs"]])
    assert (await client.post("/explorer/loras/screentone/showcase", json=base)).status == 200
    for change in ({"strength": 0.9}, {"width": 96}, {"height": 64}, {"steps": 5}):
        other = await client.post("/explorer/loras/screentone/showcase", json=base | change)
        shown = await other.json()
        assert other.status == 202 and not shown["cached"], change
        jobs = await settled(client, [j["id"] for j in shown["jobs"]])
        key, value = next(iter(change.items()))
        got = jobs[0]["params"]["loras"][0]["strength"] if key == "strength" else jobs[0]["params"][key]
        assert got == value
        # that setting is now the cached one; the one before it renders again
        assert (await client.post("/explorer/loras/screentone/showcase", json=base | change)).status == 200
    assert (await client.post("/explorer/loras/screentone/showcase", json=base)).status == 202


async def test_two_lora_combinations_side_by_side_on_the_same_seeds(explorer) -> None:
    client, _ = explorer
    resp = await client.post("/explorer/compare", json={
        "prompt": "1boy, rooftop, dusk", "seed": 5, "rows": 2, "width": 64, "height": 96,
        "a": {"label": "ink", "loras": {"ink_style": 0.6}},
        "b": {"label": "ink + tone", "loras": {"ink_style": 0.6, "screentone": 0.4}}})
    assert resp.status == 202, await resp.text()
    grid = await resp.json()
    assert [(c["column"], c["seed"]) for c in grid["cells"]] == [("a", 5), ("b", 5), ("a", 6), ("b", 6)]
    jobs = await settled(client, [c["job"]["id"] for c in grid["cells"]])
    assert all(j["status"] == "succeeded" and j["groupId"] == grid["groupId"] for j in jobs)
    stacks = [[(u["id"], u["strength"]) for u in j["params"]["loras"]] for j in jobs]
    assert stacks[0] == stacks[2] == [("ink_style", 0.6)]
    assert stacks[1] == stacks[3] == [("ink_style", 0.6), ("screentone", 0.4)]
    assert [j["params"]["seed"] for j in jobs] == [5, 5, 6, 6]
    assert len({j["params"]["prompt"] for j in jobs}) == 1

    # The contact sheet: A and B side by side, a row per seed, each cell the job's own image; kept on disk
    # beside the compare's index so it can be saved and shared.
    assert grid["sheet"] == f"/explorer/compare/{grid['groupId']}/sheet.png"
    resp = await client.get(grid["sheet"])
    assert resp.status == 200 and resp.content_type == "image/png"
    sheet = Image.open(io.BytesIO(await resp.read())).convert("RGB")
    assert sheet.size == (260 + 2 * 256, 28 + 2 * 256)
    for cell, job in zip(grid["cells"], jobs):
        row, col = [5, 6].index(cell["seed"]), "ab".index(cell["column"])
        image = Image.open(io.BytesIO(await (await client.get(f"/jobs/{job['id']}/image")).read())).convert("RGB")
        assert image.size == (64, 96)
        x0, y0 = 260 + col * 256 + (256 - 64) // 2, 28 + row * 256 + (256 - 96) // 2
        assert sheet.crop((x0, y0, x0 + 64, y0 + 96)).tobytes() == image.tobytes(), cell
    folder = tmp_data(client) / "explorer" / "compare" / grid["groupId"]
    index = json.loads((folder / "index.json").read_text())
    assert index["columns"] == {"a": "ink", "b": "ink + tone"} and index["seeds"] == [5, 6]
    assert [c["jobId"] for c in index["cells"]] == [c["job"]["id"] for c in grid["cells"]]
    assert (folder / "contact-sheet.png").read_bytes() == await (await client.get(grid["sheet"])).read()
    for path, status, code in ((f"/explorer/compare/{'0' * 32}/sheet.png", 404, "not_found"),
                               ("/explorer/compare/..%2F..%2Fx/sheet.png", 404, "not_found"),
                               ("/explorer/compare/ABC/sheet.png", 404, "not_found")):
        resp = await client.get(path)
        assert resp.status == status and (await resp.json())["error"]["code"] == code, path

    # An SDXL LoRA on the SD 1.5 checkpoint: refused before anything is queued.
    bad = await client.post("/explorer/compare", json={
        "prompt": "x", "seed": 1, "a": {"loras": {}}, "b": {"loras": {"xl_light": None}}})
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "lora_family_mismatch"
    # A LoRA given twice in one combination (a repeated JSON key: parsers keep the last one): refused.
    twice = await client.post("/explorer/compare", headers={"Content-Type": "application/json"},
                              data='{"prompt": "x", "seed": 1, "a": {"loras": {"ink_style": 0.5, "ink_style": 0.9}},'
                                   ' "b": {"loras": {}}}')
    assert twice.status == 400 and (await twice.json())["error"]["code"] == "invalid_field"
    assert "twice" in (await twice.json())["error"]["message"]
    listing = await (await client.get("/jobs")).json()
    assert len(listing["jobs"]) == 4

"""GET /loras and the metadata it reads from safetensors headers (kohya's real metadata fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.training.lora_metadata import read_lora_metadata, summary
from tests.scripted_backend import ScriptedBackend

FIXTURE = Path(__file__).parent / "fixtures" / "kohya" / "lora-metadata.json"


def test_kohya_metadata_is_read_from_the_header_only(tmp_path) -> None:
    meta = json.loads(FIXTURE.read_text())
    path = tmp_path / "spyke.safetensors"
    save_file({"lora_unet_x.alpha": np.array(16.0, dtype=np.float32)}, str(path), metadata=meta)
    assert read_lora_metadata(path) == meta
    assert summary(meta) == {"triggerWord": "spyke_plasma_v1", "steps": 6, "networkDim": 32, "networkAlpha": 16.0,
                             "baseModel": "sd_v1", "resolution": "64x64"}


def test_trigger_phrase_wins_over_tag_counts() -> None:
    assert summary({"modelspec.trigger_phrase": "june_v1", "ss_tag_frequency": '{"a": {"x": 9}}'})["triggerWord"] \
        == "june_v1"


def test_not_a_safetensors_file(tmp_path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError):
        read_lora_metadata(bad)
    empty = tmp_path / "y.safetensors"
    save_file({"t": np.zeros(1, dtype=np.float32)}, str(empty))
    assert read_lora_metadata(empty) == {}


async def test_get_loras_lists_installed_files_with_their_metadata(aiohttp_client, tmp_path) -> None:
    loras = tmp_path / "loras"
    loras.mkdir()
    meta = json.loads(FIXTURE.read_text())
    save_file({"lora_unet_x.alpha": np.array(16.0, dtype=np.float32)}, str(loras / "spyke_plasma_v1.safetensors"),
              metadata=meta)
    save_file({"t": np.zeros(1, dtype=np.float32)}, str(loras / "plain.safetensors"))  # no metadata: still listed
    (loras / "broken.safetensors").write_bytes(b"\xff" * 4)  # unreadable header: listed, no metadata
    # Saved before its first step (the tiny engine's LoRA, a step-0 checkpoint): 0 steps is a count, not "unknown".
    save_file({"t": np.zeros(1, dtype=np.float32)}, str(loras / "fresh.safetensors"),
              metadata={"ss_steps": "0", "ss_max_train_steps": "400", "ss_network_dim": "inf"})
    (loras / "sweep--spyke-1a2b3c4d-step00000200.safetensors").write_bytes(b"")  # a sweep's staging link
    (loras / "notes.txt").write_text("not a LoRA")

    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data"), ScriptedBackend(folders={"loras": loras})))
    resp = await client.get("/loras")
    assert resp.status == 200
    items = {item["id"]: item for item in (await resp.json())["loras"]}
    assert sorted(items) == ["broken", "fresh", "plain", "spyke_plasma_v1"]
    assert (items["fresh"]["steps"], items["fresh"]["networkDim"]) == (0, None)
    spyke = items["spyke_plasma_v1"]
    assert (spyke["triggerWord"], spyke["steps"], spyke["networkDim"], spyke["networkAlpha"], spyke["baseModel"],
            spyke["resolution"]) == ("spyke_plasma_v1", 6, 32, 16.0, "sd_v1", "64x64")
    assert spyke["fileName"] == "spyke_plasma_v1.safetensors" and spyke["sizeBytes"] > 0
    assert items["plain"]["triggerWord"] is None and items["broken"]["metadata"] == {}


async def test_get_loras_of_an_attached_comfyui_lists_its_names(aiohttp_client, tmp_path) -> None:
    backend = ScriptedBackend({"loras": ["spyke_plasma_v1.safetensors", "sweep--x-step00000200.safetensors"]})
    client = await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data"), backend))
    items = (await (await client.get("/loras")).json())["loras"]
    assert [(i["id"], i["fileName"]) for i in items] == [("spyke_plasma_v1", "spyke_plasma_v1.safetensors")]

"""Every route that reads a folder or file a client names holds it to the same limits: a path the file
system cannot hold, a huge caption, a PNG of too many pixels or a thin one, a `captions.csv` field past
its bound give a clear 4xx or a per-file finding, never a 500 or a stall."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import make_dataset


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    return await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data", engine="embedded"), ScriptedBackend()))


async def test_a_path_with_a_name_over_255_bytes_is_a_400_on_every_route(client, tmp_path: Path) -> None:
    long = str(tmp_path / ("x" * 300) / "set")
    answers = {
        "GET /dataset": await client.get("/dataset", params={"dir": long}),
        "GET /dataset/captions": await client.get("/dataset/captions", params={"dir": long}),
        "POST /loras/train": await client.post("/loras/train", json={"datasetDir": long, "outputName": "spyke"}),
        "POST /jobs": await client.post("/jobs", json={"prompt": "x", "poseImagePath": long + ".png"}),
    }
    for route, resp in answers.items():
        body = await resp.json()
        assert resp.status == 400, (route, body)
        assert "255" in body["error"]["message"] or "too long" in body["error"]["message"], (route, body)

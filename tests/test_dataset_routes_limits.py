"""Every route that reads a folder or file a client names holds it to the same limits: a path the file
system cannot hold, a huge caption, a PNG of too many pixels or a thin one, a `captions.csv` field past
its bound give a clear 4xx or a per-file finding, never a 500 or a stall."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import CAPTIONS, make_dataset


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


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims `width` x `height` (a few dozen bytes): what a hostile file looks like
    to everything that reads the header only; its pixels are never there."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


async def test_the_dataset_view_reports_a_huge_caption_and_image_bombs_per_file(client, tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "set", CAPTIONS[:3])
    with open(folder / "img01.txt", "wb") as fh:  # 2 MiB of one "line": over the 1 MiB every reader holds to
        fh.write(b"spyke_plasma_v1, " + b"x" * (2 * 1024 * 1024))
    png_header(folder / "bomb.png", 50_000, 50_000)  # PIL's own bound refuses it at open (was a 500)
    Image.new("RGB", (1, 2048), "white").save(folder / "thin.png")  # 1:2048, under the pixel bound
    (folder / "thin.txt").write_text("spyke_plasma_v1, full body, standing, white background\n")
    resp = await client.get("/dataset", params={"dir": str(folder)})
    data = await resp.json()
    assert resp.status == 200, data
    images = {i["name"]: i for i in data["images"]}
    assert images["img01.png"]["caption"] is None and images["img00.png"]["caption"] == CAPTIONS[0]
    findings = {(f["check"], f["file"]): f["message"] for f in data["findings"]}
    assert "not read" in findings[("captions", "img01.png")] and str(2 * 1024 * 1024 + 17) in findings[
        ("captions", "img01.png")]
    assert "bomb.png" in [f for c, f in findings if c == "images"]
    assert "times the short one" in findings[("images", "thin.png")]


async def test_a_caption_table_cell_over_csvs_field_limit_is_a_400_naming_the_row(client, tmp_path: Path) -> None:
    folder = make_dataset(tmp_path / "set", CAPTIONS[:2])
    (folder / "captions.csv").write_text("file,framing,pose,background\nimg00.png,portrait," + "y" * 200_000
                                         + ",white\n")
    resp = await client.get("/dataset/captions", params={"dir": str(folder)})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "dataset_invalid", body
    assert "captions.csv row" in body["error"]["message"] and body["error"]["details"]["row"] == 2
    # The dataset view reads the same table: a warning there, not a 500.
    view = await client.get("/dataset", params={"dir": str(folder)})
    assert view.status == 200
    assert any("captions.csv cannot be read" in f["message"] for f in (await view.json())["findings"])

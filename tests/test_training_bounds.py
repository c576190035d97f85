"""Files in a training set are bounded before they are read: a 1 GB caption (the daemon used to read it
whole and be killed at 18.5 GB), an image of too many bytes or pixels, or an undecodable one is refused
at submit with `dataset_invalid` naming the file; the embedded trainer checks again before it decodes
(a file replaced after the submit). Sparse files: nothing here writes a gigabyte."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.errors import DatasetInvalid
from sidecar.training.dataset import load_dataset
from sidecar.training.file_limits import MAX_CAPTION_BYTES, MAX_IMAGE_PIXELS
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import TRIGGER, make_dataset

GB = 1 << 30


def sparse(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (the pixel data is never there)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded")
    base = settings.models_path / "checkpoints"
    base.mkdir(parents=True)
    (base / settings.checkpoint).write_bytes(b"a base model file")
    return await aiohttp_client(create_app(settings, ScriptedBackend()))


async def refused(client, dataset: Path) -> dict:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset), "force": True, "outputName": "spyke",
                                                   "engine": "embedded", "steps": 4})
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["code"] == "dataset_invalid"
    return body["error"]


async def test_a_1_gb_caption_is_refused_at_submit_naming_it(client, tmp_path):
    data = make_dataset(tmp_path / "set")
    sparse(data / "img01.txt", f"{TRIGGER}, standing\n".encode(), GB)
    err = await refused(client, data)
    assert "img01.txt" in err["message"] and str(MAX_CAPTION_BYTES) in err["message"]
    assert err["details"]["oversizedCaptions"] == [{"file": "img01.txt", "sizeBytes": GB}]
    assert (await (await client.get("/loras/runs")).json())["runs"] == []  # nothing was queued


async def test_images_too_big_in_bytes_or_pixels_or_undecodable_are_refused_naming_each(client, tmp_path):
    data = make_dataset(tmp_path / "set")
    sparse(data / "img00.png", png_header(64, 64), 200 * 1024 * 1024)  # 200 MB "PNG"
    (data / "img01.png").write_bytes(png_header(5000, 5000))  # 25 megapixels, a few bytes
    (data / "img02.png").write_bytes(b"not an image at all")
    err = await refused(client, data)
    bad = {entry["file"]: entry["reason"] for entry in err["details"]["unusableImages"]}
    assert set(bad) == {"img00.png", "img01.png", "img02.png"}
    assert "bytes" in bad["img00.png"] and "5000x5000" in bad["img01.png"] and "decod" in bad["img02.png"]
    assert "img00.png" in err["message"]
    assert err["details"]["limits"]["maxImagePixels"] == MAX_IMAGE_PIXELS


def test_a_decompression_bomb_is_refused_without_decoding(tmp_path):
    data = make_dataset(tmp_path / "set")
    (data / "img00.png").write_bytes(png_header(30000, 30000))  # 900 megapixels: PIL's own bomb limit
    with pytest.raises(DatasetInvalid) as err:
        load_dataset(data, TRIGGER)
    assert err.value.details["unusableImages"][0]["file"] == "img00.png"


@pytest.mark.engine
async def test_the_embedded_trainer_checks_each_image_again_before_decoding_it(tmp_path, engine_models):
    """A set that passed the submit check, then an image replaced by a huge one before the trainer
    caches it: the run fails dataset_invalid naming it, and writes nothing."""
    from sidecar.engine.tiny import CHECKPOINT
    from sidecar.training.embedded import EmbeddedTrainer
    from sidecar.training.spec import TrainerHooks, TrainJob, TrainSpec

    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=engine_models,
                        checkpoint=CHECKPOINT)
    data = make_dataset(tmp_path / "set")
    spec = TrainSpec(output_name="spyke", dataset_dir=str(data), steps=2, resolution=64, network_dim=4,
                     network_alpha=2.0, learning_rate=0.05, save_every=2, seed=5, engine="embedded",
                     trigger_word=TRIGGER, checkpoint=CHECKPOINT)
    work = tmp_path / "run"
    work.mkdir()
    job = TrainJob("r1", spec, load_dataset(data, TRIGGER), work, work / "out",
                   engine_models / "checkpoints" / CHECKPOINT)
    (data / "img01.png").write_bytes(png_header(5000, 5000))
    hooks = TrainerHooks(progress=lambda *a: None, checkpoint=lambda *a: None, log=lambda _: None,
                         warning=lambda _: None)
    with pytest.raises(DatasetInvalid) as err:
        await EmbeddedTrainer(settings).run(job, hooks)
    assert "img01.png" in err.value.message and "5000x5000" in err.value.message
    assert err.value.code == "dataset_invalid"
    assert not list((work / "out").glob("*.safetensors")) and not (work / "out" / "spyke-state").exists()

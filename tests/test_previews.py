"""Live previews (issue 14): ComfyUI's binary preview frames, both recorded forms, decoded and forwarded
as `job.preview` events and `GET /jobs/{id}/preview`; the embedded engine's own, made from the latent
while it renders; the rate limit and the setting that turns them off. Through the real app: the fake
ComfyUI sends frames as the recordings show (tests/fixtures/comfyui/ws-transcript-txt2img-previews-*.json),
the embedded engine renders the tiny models on the CPU.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.comfyui.previews import decode_frame
from sidecar.config import Settings
from tests.conftest_engine import TINY_CHECKPOINT

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"


def transcript(form: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"ws-transcript-txt2img-previews-{form}.json").read_text())


def jpeg(size: tuple[int, int] = (341, 512), colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize("form", ["legacy", "featureflags"])
def test_frames_laid_out_as_recorded_decode_to_their_image(form: str) -> None:
    """Each recorded binary frame rebuilt from its recorded header fields (the image bytes were not kept:
    any JPEG of the recorded length stands in) starts with the recorded bytes and decodes to its image."""
    frames = [m for m in transcript(form)["messages"] if m["kind"] == "binary"]
    assert len(frames) == 4  # one per step of the recorded 4-step run
    for recorded in frames:
        image = jpeg()
        if recorded["event_type"] == 1:
            frame = struct.pack(">II", 1, recorded["image_format_code"]) + image
        else:
            meta = json.dumps(recorded["metadata"], separators=(", ", ": ")).encode()
            assert len(meta) == recorded["metadata_length"]  # the recorded JSON, byte for byte
            frame = struct.pack(">II", 4, len(meta)) + meta + image
        assert frame[:len(bytes.fromhex(recorded["head_hex"]))] == bytes.fromhex(recorded["head_hex"])[:len(frame)] \
            or recorded["event_type"] == 1 and frame[:8] == bytes.fromhex(recorded["head_hex"])[:8]
        decoded = decode_frame(frame)
        assert decoded is not None and decoded.image == image and decoded.mime == "image/jpeg"
        if recorded["event_type"] == 4:
            assert decoded.prompt_id == recorded["metadata"]["prompt_id"] and decoded.node_id == "6"
        else:
            assert decoded.prompt_id is None
    for junk in (b"", b"\x00\x00\x00\x01", struct.pack(">II", 3, 1) + b"6hello", struct.pack(">II", 1, 9) + image,
                 struct.pack(">II", 4, 10**6) + b"{}", struct.pack(">II", 4, 2) + b"[]" + image):
        assert decode_frame(junk) is None


async def collect_previews(client, submit: dict[str, Any], timeout: float = 60,
                           order: list[str] | None = None) -> tuple[dict, list[dict]]:
    """Submit a job with /events open; the job when it ends and its job.preview events (a legacy frame
    comes right after the last step, and may go out just after the job's end). `order` gets the job's
    job.started, job.preview and end event types in the order they arrived."""
    previews: list[dict] = []
    ended: dict | None = None
    async with client.ws_connect("/events") as ws:
        resp = await client.post("/jobs", json=submit)
        job = await resp.json()
        assert resp.status == 202, job
        async with asyncio.timeout(timeout):
            while True:
                try:
                    msg = await asyncio.wait_for(ws.receive(), 1.0 if ended else None)
                except TimeoutError:
                    return ended, previews
                event = json.loads(msg.data)
                if order is not None and event["type"] != "job.progress" \
                        and (event.get("jobId") or event.get("job", {}).get("id")) == job["id"]:
                    order.append(event["type"])
                if event["type"] == "job.preview" and event["jobId"] == job["id"]:
                    previews.append(event)
                elif event["type"] in ("job.succeeded", "job.failed") and event["job"]["id"] == job["id"]:
                    ended = event["job"]


def pixels(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        return np.asarray(img.resize(size, Image.Resampling.BILINEAR) if size else img).astype(np.float32)


@pytest.mark.parametrize("supports_metadata", [True, False], ids=["featureflags", "legacy"])
async def test_comfyui_previews_become_job_preview_events_and_the_latest_is_served(
        aiohttp_client, fake_comfy, comfy_settings, supports_metadata: bool) -> None:
    fake_comfy.preview_method = "latent2rgb"
    fake_comfy.feature_flags = supports_metadata  # an older ComfyUI ignores the handshake: the legacy form
    client = await aiohttp_client(create_app(comfy_settings.model_copy(update={"preview_interval": 0.0})))
    job, previews = await collect_previews(client, {"prompt": "spyke_plasma_v1", "steps": 3, "seed": 4,
                                                    "resolution": {"width": 64, "height": 96}})
    assert job["status"] == "succeeded", job
    assert len(previews) == len(fake_comfy.previews_sent) == 3
    assert [p["seq"] for p in previews] == [1, 2, 3]
    assert [(p["step"], p["total"]) for p in previews] == [(1, 3), (2, 3), (3, 3)]
    for event, sent in zip(previews, fake_comfy.previews_sent, strict=True):
        assert (event["width"], event["height"]) == (170, 256) and event["url"] == f"/jobs/{job['id']}/preview"
        mine = pixels(base64.b64decode(event["image"]))
        assert np.abs(mine - pixels(sent, (170, 256))).mean() < 8  # the frame's image, made small
    resp = await client.get(f"/jobs/{job['id']}/preview")
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    assert await resp.read() == base64.b64decode(previews[-1]["image"])


async def test_previews_are_rate_limited_and_off_with_the_setting(aiohttp_client, fake_comfy, comfy_settings,
                                                                   tmp_path: Path) -> None:
    fake_comfy.preview_method = "latent2rgb"
    body = {"prompt": "spyke_plasma_v1", "steps": 4, "resolution": {"width": 64, "height": 96}}
    client = await aiohttp_client(create_app(comfy_settings.model_copy(update={"preview_interval": 3600.0})))
    job, previews = await collect_previews(client, body)
    assert len(fake_comfy.previews_sent) == 4 and len(previews) == 1  # one per interval gets through

    off = await aiohttp_client(create_app(comfy_settings.model_copy(update={"previews": False,
                                                                            "data_dir": tmp_path / "off"})))
    job, previews = await collect_previews(off, body)
    assert job["status"] == "succeeded" and previews == []
    resp = await off.get(f"/jobs/{job['id']}/preview")
    error = (await resp.json())["error"]
    assert resp.status == 404 and error["code"] == "preview_not_found" and "off" in error["message"]
    assert (await off.get("/jobs/nosuchjob/preview")).status == 404


@pytest.mark.engine
async def test_the_embedded_engine_sends_previews_while_it_renders(aiohttp_client, tmp_path: Path,
                                                                   engine_models: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=engine_models,
                        checkpoint=TINY_CHECKPOINT, preview_interval=0.0)
    client = await aiohttp_client(create_app(settings))
    order: list[str] = []
    job, previews = await collect_previews(client, {"prompt": "spyke_plasma_v1", "steps": 4, "seed": 1,
                                                    "resolution": {"width": 64, "height": 96}}, timeout=120,
                                           order=order)
    assert job["status"] == "succeeded", job
    # They arrive during the render, not after it: between the job's start and its end.
    assert order == ["job.queued", "job.started", *["job.preview"] * 4, "job.succeeded"], order
    assert [(p["step"], p["total"]) for p in previews] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    first, last = (pixels(base64.b64decode(p["image"])) for p in (previews[0], previews[-1]))
    assert first.shape == (256, 171, 3) and not np.array_equal(first, last)  # the image takes shape
    resp = await client.get(f"/jobs/{job['id']}/preview")
    assert resp.status == 200 and await resp.read() == base64.b64decode(previews[-1]["image"])

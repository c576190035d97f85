"""Thumbnails of job and page-version images (`?size=256`): a small JPEG the studio's cards and strips
load instead of the PNG, made once and cached, answered 304 to a browser that already has it."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.config import Settings
import numpy as np

from sidecar.backend import RunContext, RunResult
from tests.scripted_backend import ScriptedBackend


class GrainyBackend(ScriptedBackend):
    """Renders what a photo-like page weighs as a PNG (about 1 MB at 512x768): gradients under a fine
    per-pixel grain, different for every seed."""

    async def run(self, ctx: RunContext) -> RunResult:
        result = await super().run(ctx)
        seed = next(n for n in ctx.workflow.values() if n["class_type"] == "KSampler")["inputs"]["seed"]
        with Image.open(ctx.output_path) as drawn:
            width, height = drawn.size
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / 2, y / 3, (x + y) / 5], -1)
        grain = np.random.default_rng(seed % 2**32).normal(0, 25, base.shape)
        Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(ctx.output_path)
        return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(asset_path(EXAMPLE_CHAPTER), root)
    return root


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path, project: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project)
    return await aiohttp_client(create_app(settings, GrainyBackend()))


async def succeeded(client, body: dict) -> dict:
    job = await (await client.post("/jobs", json=body)).json()
    for _ in range(500):
        job = await (await client.get(f"/jobs/{job['id']}")).json()
        if job["status"] == "succeeded":
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(job)


async def test_a_job_thumbnail_is_a_small_cached_jpeg_with_an_etag(client, tmp_path: Path) -> None:
    job = await succeeded(client, {"prompt": "spyke_plasma_v1, standing", "seed": 1})
    full = await client.get(job["output"]["url"])
    png = await full.read()
    resp = await client.get(f"{job['output']['url']}?size=256")
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    data = await resp.read()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (171, 256)  # the longer side, the aspect kept
    assert len(data) < len(png) / 20
    etag = resp.headers["ETag"]
    again = await client.get(f"{job['output']['url']}?size=256", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    cache = tmp_path / "data" / "outputs" / "thumbnails"
    assert [p.name.split("-")[:2] for p in cache.iterdir()] == [[job["id"], "256"]]  # made once, kept
    other = await client.get(f"{job['output']['url']}?size=64", headers={"If-None-Match": etag})
    assert other.status == 200 and other.headers["ETag"] != etag
    for bad in ("0", "abc", "5000", "-1"):
        error = await client.get(f"{job['output']['url']}?size={bad}")
        assert error.status == 400 and (await error.json())["error"]["code"] == "invalid_field"
    # `sidecar gc` removes a job's thumbnails with its image.
    removed = await (await client.post("/gc", json={"keepDays": 0})).json()
    assert removed["removedJobs"] == 1 and list(cache.iterdir()) == []


async def test_nine_job_cards_of_thumbnails_weigh_under_300_kb(client) -> None:
    # The issue measured 3.1 MB for 9 cards of full PNGs.
    total = 0
    for seed in range(9):
        job = await succeeded(client, {"prompt": f"spyke_plasma_v1, pose {seed}", "seed": seed})
        total += len(await (await client.get(f"{job['output']['url']}?size=256")).read())
    assert total < 300_000, total


async def test_a_page_version_has_a_thumbnail_too(client) -> None:
    job = await succeeded(client, {"page": {"chapter": 1, "page": 1}})
    url = "/project/pages/1/1/versions/1/image"
    resp = await client.get(f"{url}?size=128")
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    with Image.open(io.BytesIO(await resp.read())) as image:
        assert max(image.size) == 128
    assert (await client.get(f"{url}?size=128", headers={"If-None-Match": resp.headers["ETag"]})).status == 304
    assert job["pageVersion"]["version"] == 1

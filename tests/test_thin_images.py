"""Thin images: a few bytes of PNG that are 1 pixel wide and thousands tall pass a bound on total pixels,
then cost gigabytes when scaled to cover a job (a 31 KB 1x16,000,000 pose had the daemon OOM-killed at
18 GB). Every place an image enters holds it to one rule (`sidecar.userfiles.shape_problem`: pixels,
each side, the aspect ratio), read from the header before anything is decoded or resized; and a fit
resamples only the part that shows, so its memory is the output's."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.jobs.init_image import fit
from sidecar.userfiles import MAX_ASPECT, MAX_IMAGE_SIDE, shape_problem
from tests.scripted_backend import ScriptedBackend
from tests.test_training_bounds import client, png_header, refused  # noqa: F401 (the fixture)
from tests.training_fixtures import make_dataset


def thin(path: Path, width: int = 1, height: int = 2048) -> Path:
    Image.new("RGB", (width, height), "white").save(path)  # ~100 bytes of PNG
    return path


def test_the_rule_bounds_each_side_and_the_shape_not_only_the_pixels() -> None:
    assert shape_problem(512, 768) is None and shape_problem(512, 512 * int(MAX_ASPECT)) is None
    assert "times the short one" in shape_problem(1, 2048)
    assert "times the short one" in shape_problem(1, 16_000_000) or "each side" in shape_problem(1, 16_000_000)
    assert "each side" in shape_problem(MAX_IMAGE_SIDE + 1, 3000)
    assert "4096x4096" in shape_problem(4096, 4097)


@pytest.mark.parametrize(("field", "code"), [("poseImagePath", "pose_image_invalid"),
                                             ("initImagePath", "init_image_invalid")])
async def test_a_thin_pose_or_init_image_is_a_400_before_it_is_decoded(client, tmp_path, field, code):  # noqa: F811
    image = thin(tmp_path / "thin.png", 1, 16_384)  # 150 bytes; 1:16384
    extra = {"denoise": 0.6} if field == "initImagePath" else {}
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1", "resolution": {"width": 512, "height": 768},
                                            field: str(image), **extra})
    body = await resp.json()
    assert resp.status == 400, body
    assert body["error"]["code"] == code and "1x16384" in body["error"]["message"]
    assert body["error"]["details"]["field"] == field and body["error"]["details"]["maxAspect"] == MAX_ASPECT


async def test_a_thin_pose_uploaded_in_the_studio_is_refused_and_not_kept(aiohttp_client, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded")
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    data = base64.b64encode(thin(tmp_path / "thin.png").read_bytes()).decode()
    resp = await client.post("/studio/poses", json={"fileName": "thin.png", "dataBase64": data})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "pose_image_invalid", body
    assert not list((settings.data_dir / "poses").glob("pose-*"))


async def test_a_thin_training_image_is_refused_at_submit_naming_it(client, tmp_path):  # noqa: F811
    data = make_dataset(tmp_path / "set")
    thin(data / "img01.png")
    (data / "img02.png").write_bytes(png_header(1, 16_000_000))  # 31 KB in the probe; a header here
    err = await refused(client, data)
    bad = {entry["file"]: entry["reason"] for entry in err["details"]["unusableImages"]}
    assert set(bad) == {"img01.png", "img02.png"} and "times the short one" in bad["img01.png"]
    assert err["details"]["limits"]["maxAspect"] == MAX_ASPECT


def test_a_fit_resamples_only_what_shows_and_matches_scaling_then_cropping() -> None:
    rng = np.random.default_rng(3)
    source = Image.fromarray(rng.integers(0, 255, (512, 4096, 3), dtype=np.uint8))  # 8:1, the widest taken
    fitted = fit(source, 64, 96)
    # The old way: scale the whole image to cover, then crop the middle (here 768x96 before the crop).
    scale = max(64 / 4096, 96 / 512)
    covered = source.resize((round(4096 * scale), round(512 * scale)), Image.Resampling.LANCZOS)
    left, top = (covered.width - 64) // 2, (covered.height - 96) // 2
    old = covered.crop((left, top, left + 64, top + 96))
    assert fitted.size == (64, 96)
    diff = np.abs(np.asarray(fitted, dtype=np.int16) - np.asarray(old, dtype=np.int16))
    assert diff.mean() < 12  # the same picture (resampling a box keeps the filter's support at its edges)

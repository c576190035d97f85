"""A job's family comes from its checkpoint's header: the profile says which families it runs and at
which sizes; a LoRA of another family is refused naming both; routing admits a job only where the
backend's profile runs its family."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.backends.admission import Capabilities, Needs
from sidecar.backends.member import Member
from sidecar.backends.router import admit
from sidecar.config import Settings
from sidecar.errors import FamilyNotSupported, NoBackendAdmits
from sidecar.profiles import get_profile
from tests.family_headers import (
    FLUX_KOHYA_LORA, SD15_CHECKPOINT, SD15_LORA, SDXL_CHECKPOINT, SDXL_LORA, write_safetensors,
)
from tests.scripted_backend import ScriptedBackend

SDXL = "animagine-xl.safetensors"
SD15 = "anything-v5.safetensors"


def _models(root: Path) -> ScriptedBackend:
    write_safetensors(root / "checkpoints" / SDXL, SDXL_CHECKPOINT)
    write_safetensors(root / "checkpoints" / SD15, SD15_CHECKPOINT)
    write_safetensors(root / "loras" / "spyke_xl.safetensors", SDXL_LORA)
    write_safetensors(root / "loras" / "spyke_15.safetensors", SD15_LORA)
    write_safetensors(root / "loras" / "spyke_flux.safetensors", FLUX_KOHYA_LORA)
    return ScriptedBackend(folders={f: root / f for f in ("checkpoints", "loras", "controlnet", "diffusion_models")})


@pytest.fixture
async def laptop(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data"), _models(tmp_path / "models")))


@pytest.fixture
async def gpu(aiohttp_client, tmp_path):
    settings = Settings(data_dir=tmp_path / "data", profile="cuda-24gb")
    return await aiohttp_client(create_app(settings, _models(tmp_path / "models")))


async def _post(client, **body):
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", **body})
    return resp.status, await resp.json()


async def test_the_laptop_refuses_an_sdxl_checkpoint_naming_where_it_runs(laptop) -> None:
    status, body = await _post(laptop, checkpoint=SDXL)
    assert status == 400 and body["error"]["code"] == "family_not_supported"
    details = body["error"]["details"]
    assert (details["family"], details["profile"], details["allowedFamilies"]) == ("sdxl", "m1pro-16gb", ["sd15"])
    assert "cuda-24gb" in details["profiles"] and "cuda-24gb" in body["error"]["message"]
    # SD 1.5 still renders there, at its 512x768.
    status, job = await _post(laptop, checkpoint=SD15)
    p = job["params"]
    assert status == 202 and (p["family"], p["width"], p["height"]) == ("sd15", 512, 768)


async def test_a_gpu_profile_renders_sdxl_at_its_buckets_and_holds_each_family_to_its_sizes(gpu) -> None:
    status, job = await _post(gpu, checkpoint=SDXL)
    assert status == 202, job
    assert (job["params"]["family"], job["params"]["width"], job["params"]["height"]) == ("sdxl", 832, 1216)
    status, job = await _post(gpu, checkpoint=SDXL, resolution={"width": 1216, "height": 832})
    assert status == 202
    # More pixels than SDXL's megapixel buckets: refused, the area named.
    status, body = await _post(gpu, checkpoint=SDXL, resolution={"width": 1024, "height": 1216})
    assert status == 400 and body["error"]["code"] == "resolution_exceeds_profile"
    assert body["error"]["details"]["limit"]["maxPixels"] == 1024 * 1024
    # SD 1.5 on the same profile stops at 1024 a side.
    status, body = await _post(gpu, checkpoint=SD15, resolution={"width": 832, "height": 1216})
    assert status == 400 and body["error"]["details"]["limit"] == {"maxWidth": 1024, "maxHeight": 1024}


async def test_a_lora_of_another_family_than_the_checkpoint_is_refused_naming_both(gpu) -> None:
    status, body = await _post(gpu, checkpoint=SDXL, loraId="spyke_15")
    assert status == 400 and body["error"]["code"] == "lora_family_mismatch"
    assert body["error"]["details"] == {"loraId": "spyke_15", "loraFamily": "sd15", "checkpoint": SDXL,
                                        "checkpointFamily": "sdxl"}
    status, body = await _post(gpu, checkpoint=SD15, loraId="spyke_flux")
    assert body["error"]["code"] == "lora_family_mismatch" and "flux" in body["error"]["message"]
    status, job = await _post(gpu, checkpoint=SDXL, loraId="spyke_xl")
    assert status == 202 and job["params"]["loraId"] == "spyke_xl"


async def test_a_reproduced_sdxl_workflow_is_held_to_sdxl_sizes(gpu) -> None:
    status, job = await _post(gpu, checkpoint=SDXL)
    full = await (await gpu.get(f"/jobs/{job['id']}")).json()
    resp = await gpu.post("/jobs", json={"workflow": full["workflow"]})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["params"]["family"] == "sdxl"


def _member(name: str, profile: str) -> Member:
    return Member(name=name, backend=ScriptedBackend(), profile=get_profile(profile), kind="comfyui attached",
                  local=False, lock=asyncio.Lock(), tags=("pool",), state="up",
                  caps=Capabilities(models={"checkpoints": frozenset({SDXL})}))


def test_routing_admits_an_sdxl_job_only_where_the_profile_runs_sdxl() -> None:
    needs = Needs(sizes=((832, 1216, 1),), models=(("checkpoints", SDXL),), checkpoint=SDXL, family="sdxl")
    verdicts = {v.backend: v for v in admit("pool", needs, [_member("desk", "cuda-24gb"),
                                                            _member("attic", "m1pro-16gb")], {})}
    assert verdicts["desk"].admitted
    assert verdicts["attic"].reason == "its m1pro-16gb profile does not run sdxl models (it runs sd15)"
    # Where nothing allowed runs the family: family_not_supported, naming the backends that do.
    with pytest.raises(FamilyNotSupported) as refused:
        admit("attic", needs, [_member("desk", "cuda-24gb"), _member("attic", "m1pro-16gb")], {})
    assert refused.value.details["backends"] == ["desk"] and "desk" in refused.value.message
    assert refused.value.details["reasons"]["attic"].startswith("its m1pro-16gb profile does not run sdxl")
    # Refused for another reason (the size): each backend's reason, as before.
    big = Needs(sizes=((1536, 1536, 1),), models=(("checkpoints", SDXL),), checkpoint=SDXL, family="sdxl")
    with pytest.raises(NoBackendAdmits) as refused_size:
        admit("desk", big, [_member("desk", "cuda-24gb"), _member("attic", "m1pro-16gb")], {})
    assert "exceeds its cuda-24gb profile limit of 1536x1536, at most 1048576 pixels for sdxl" in refused_size.value.message


def test_the_manual_s_family_table_says_what_each_profile_runs() -> None:
    from sidecar.profiles import PROFILES

    page = (Path(__file__).resolve().parent.parent / "docs" / "families.md").read_text(encoding="utf-8")
    table = page.split("## What each profile runs")[1].split("\n## ")[0]
    rows = {tuple(cell.strip(" `") for cell in line.split("|")[1:3]) for line in table.splitlines()
            if line.startswith("| `")}
    assert rows == {(p.name, f) for p in PROFILES.values() for f in p.family_names}


async def test_an_sdxl_pose_job_is_refused_for_want_of_an_sdxl_pose_template(gpu, tmp_path) -> None:
    from PIL import Image

    pose = tmp_path / "pose.png"
    Image.new("RGB", (64, 96)).save(pose)
    status, body = await _post(gpu, checkpoint=SDXL, poseImagePath=str(pose))
    assert status == 400 and body["error"]["code"] == "family_not_supported"
    assert body["error"]["details"]["template"] == "sdxl-txt2img-pose" and "pose" in body["error"]["message"]


def test_the_readme_s_family_table_is_the_profiles_data() -> None:
    from sidecar.config import Settings
    from sidecar.family_sizes import profile_table
    from sidecar.profiles import PROFILES

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    table = profile_table(PROFILES, Settings.model_fields["profile"].default)
    assert table in readme, ("README.md's family table is not the profiles' data; paste this one under "
                             "'## Model families':\n" + table)

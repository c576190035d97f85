"""Several backends: an SDXL job (its family read from this machine's copy of the checkpoint) goes only
to a backend whose profile runs SDXL; asked of one that does not, it is refused naming the one that does."""

from __future__ import annotations

from sidecar.api.app import create_app
from tests.family_headers import SDXL_CHECKPOINT, write_safetensors
from tests.scripted_backend import ScriptedBackend
from tests.test_backends_routing import fakes, pool_settings, post, run  # noqa: F401 (fakes: a fixture)

SDXL = "animagine-xl.safetensors"


async def test_an_sdxl_job_runs_only_where_the_profile_runs_sdxl(aiohttp_client, tmp_path, fakes) -> None:  # noqa: F811
    local = tmp_path / "local-models"
    write_safetensors(local / "checkpoints" / SDXL, SDXL_CHECKPOINT)
    for fake in fakes.values():  # both servers have the file; only the desk's profile runs SDXL
        (fake.base_dir / "models" / "checkpoints" / SDXL).write_bytes(b"weights")
    home = ScriptedBackend(folders={"checkpoints": local / "checkpoints"})
    client = await aiohttp_client(create_app(pool_settings(tmp_path, fakes), home))

    done = await run(client, where="pool", checkpoint=SDXL)
    assert done["status"] == "succeeded", done["error"]
    assert (done["backend"], done["params"]["family"]) == ("desk", "sdxl")
    assert (done["params"]["width"], done["params"]["height"]) == (832, 1216)  # the desk's SDXL default
    assert fakes["attic"].prompt_posts == 0

    status, body = await post(client, where="attic", checkpoint=SDXL)
    assert status == 400 and body["error"]["code"] == "family_not_supported"
    assert body["error"]["details"]["backends"] == ["desk"]
    assert "m1pro-16gb profile does not run sdxl" in body["error"]["details"]["reasons"]["attic"]

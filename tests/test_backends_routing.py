"""Several backends: jobs routed by `where`, profile, models and load over fake ComfyUI servers on local
ports (each with its own system_stats, object_info, model folder and speed), refused with a reason per
backend when none admits them, and never two prompts at once on any one server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.backends.admission import Capabilities, Needs
from sidecar.backends.member import Member
from sidecar.backends.router import Queued, plan
from sidecar.config.backends import BackendSpec
from sidecar.config import Settings
from tests.fake_comfyui import DEFAULT_MODELS, FakeComfyUI, make_comfy_home
from sidecar.profiles import get_profile
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status

NO_LORA = {**DEFAULT_MODELS, "loras": []}


def overlaps(fake: FakeComfyUI) -> list[tuple[str, str]]:
    """Pairs of prompts this server held at the same time (queued or running): none may exist."""
    spans = sorted((fake.accepted_at[p], fake.finished_at.get(p, float("inf")), p) for p in fake.accepted_at)
    return [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


async def start_fake(root: Path, name: str, models: dict, *, step_delay: float, device: str) -> FakeComfyUI:
    fake = FakeComfyUI(make_comfy_home(root / name, models), step_delay=step_delay, device_type=device)
    await fake.start()
    return fake


@pytest.fixture
async def fakes(tmp_path: Path) -> AsyncIterator[dict[str, FakeComfyUI]]:
    servers = {
        "desk": await start_fake(tmp_path, "desk", DEFAULT_MODELS, step_delay=0.005, device="cuda"),
        "attic": await start_fake(tmp_path, "attic", NO_LORA, step_delay=0.02, device="cuda"),
    }
    # The attic's ComfyUI lacks a node type the ControlNet templates use.
    del servers["attic"]._object_info["ControlNetApplyAdvanced"]
    yield servers
    for fake in servers.values():
        await fake.stop()


def pool_settings(tmp_path: Path, fakes: dict[str, FakeComfyUI], **extra) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2, comfyui_unavailable_deadline=5.0,
        backend_probe_interval=0.2,
        backends=[
            BackendSpec(name="desk", kind="comfyui", url=fakes["desk"].url, profile="cuda-24gb",
                        tags=("pool", "fast"), local=False),
            BackendSpec(name="attic", kind="comfyui", url=fakes["attic"].url, profile="m1pro-16gb", tags=("pool",),
                        local=False),
        ], **extra)


@pytest.fixture
async def pool_client(aiohttp_client, tmp_path, fakes):
    # The laptop itself is the implicit `local` backend (no table is local): a scripted one here.
    return await aiohttp_client(create_app(pool_settings(tmp_path, fakes), ScriptedBackend()))


async def post(client, **body):
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", "steps": 3, **body})
    return resp.status, await resp.json()


async def run(client, **body) -> dict:
    status, job = await post(client, **body)
    assert status == 202, job
    return await wait_status(client, job["id"], {"succeeded", "failed", "cancelled"}, timeout=20)


async def test_jobs_go_where_they_are_admitted_and_the_choice_is_recorded(pool_client, fakes, tmp_path) -> None:
    health = await (await pool_client.get("/health")).json()
    assert {b["name"]: (b["state"], b["profile"], b["local"]) for b in health["backends"]} == {
        "local": ("up", "m1pro-16gb", True), "desk": ("up", "cuda-24gb", False), "attic": ("up", "m1pro-16gb", False)}
    assert next(b for b in health["backends"] if b["name"] == "desk")["device"] == "cuda"

    by_default = await run(pool_client)  # default_where = local: the laptop
    assert (by_default["status"], by_default["where"], by_default["backend"]) == ("succeeded", "local", "local")

    named = await run(pool_client, where="attic", loraId=None)
    assert (named["status"], named["backend"]) == ("succeeded", "attic") and named["backendReason"]
    assert fakes["attic"].prompt_posts == 1

    big = await run(pool_client, where="pool", resolution={"width": 1024, "height": 1024})
    assert (big["status"], big["backend"]) == ("succeeded", "desk")  # the attic's profile stops at 512x768
    with Image.open(await _image(pool_client, big)) as img:
        assert img.size == (1024, 1024)

    lora = await run(pool_client, where="pool", loraId="spyke_plasma_v1")
    assert (lora["status"], lora["backend"]) == ("succeeded", "desk")  # the attic has no such LoRA

    pose = tmp_path / "pose.png"
    Image.new("RGB", (64, 96), (0, 0, 0)).save(pose)
    posed = await run(pool_client, where="pool", poseImagePath=str(pose))
    assert (posed["status"], posed["backend"]) == ("succeeded", "desk")  # the attic lacks ControlNetApplyAdvanced
    assert any(name.startswith("sidecar-pose-") for name in fakes["desk"].uploads)  # sent by /upload/image
    assert fakes["attic"].prompt_posts == 1  # nothing the attic cannot run reached it


async def _image(client, job: dict) -> Path:
    full = await (await client.get(f"/jobs/{job['id']}")).json()
    data = await (await client.get(full["output"]["url"])).read()
    path = Path(f"/tmp/{job['id']}.png")
    path.write_bytes(data)
    return path


async def test_a_job_no_backend_admits_is_refused_naming_each_reason(pool_client, fakes) -> None:
    status, body = await post(pool_client, where="any", resolution={"width": 2048, "height": 2048})
    assert status == 400 and body["error"]["code"] == "no_backend_admits"
    reasons = body["error"]["details"]["backends"]
    assert set(reasons) == {"local", "desk", "attic"}
    assert "exceeds its cuda-24gb profile limit of 1024x1024" in reasons["desk"]
    assert "m1pro-16gb" in reasons["local"] and "m1pro-16gb" in reasons["attic"]

    status, body = await post(pool_client, where="attic", loraId="spyke_plasma_v1")
    assert status == 400 and "lacks the LoRA spyke_plasma_v1.safetensors and has no ssh target" in body["error"]["details"][
        "backends"]["attic"]

    status, body = await post(pool_client, resolution={"width": 1024, "height": 1024})  # default: local
    assert status == 400 and set(body["error"]["details"]["backends"]) == {"local"}

    status, body = await post(pool_client, where="nowhere")
    assert status == 400 and body["error"]["code"] == "invalid_field" and "attic" in body["error"]["details"]["allowed"]
    assert sum(f.prompt_posts for f in fakes.values()) == 0


async def test_a_burst_spreads_by_load_and_no_server_ever_holds_two_prompts(pool_client, fakes) -> None:
    jobs = [(await post(pool_client, where="pool", seed=i))[1] for i in range(8)]
    done = [await wait_status(pool_client, j["id"], {"succeeded", "failed"}, timeout=30) for j in jobs]
    assert {d["status"] for d in done} == {"succeeded"}
    used = {d["backend"] for d in done}
    assert used == {"desk", "attic"}, used  # both took work
    for fake in fakes.values():
        assert overlaps(fake) == []
    # Each job ran exactly once, on the server it names.
    assert sum(len(f.executions) for f in fakes.values()) == 8
    assert len(fakes["desk"].executions) == sum(d["backend"] == "desk" for d in done)
    health = await (await pool_client.get("/health")).json()
    desk = next(b for b in health["backends"] if b["name"] == "desk")
    assert desk["secondsPerStep"] is not None and desk["jobsRun"] >= 1


def _member(name: str, *, speed: float | None = None, loaded: str | None = None) -> Member:
    m = Member(name=name, backend=ScriptedBackend(), profile=get_profile("cuda-24gb"), kind="comfyui attached",
               local=False, lock=asyncio.Lock(), tags=("pool",), state="up",
               caps=Capabilities(models={"checkpoints": frozenset({"a.safetensors", "b.safetensors"})}))
    m.seconds_per_step, m.loaded_checkpoint = speed, loaded
    return m


def _needs(checkpoint: str = "a.safetensors", steps: int = 20) -> Needs:
    return Needs(sizes=((512, 768, 1),), models=(("checkpoints", checkpoint),), steps=steps, checkpoint=checkpoint)


def test_the_router_prefers_the_loaded_checkpoint_then_the_soonest_free_backend() -> None:
    a, b = _member("a", speed=0.5, loaded="b.safetensors"), _member("b", speed=0.5, loaded="a.safetensors")
    picked = plan([Queued("j1", "pool", _needs("a.safetensors"))], [a, b], {})
    assert list(picked.picks) == ["b"] and "checkpoint loaded" in picked.picks["b"].reason

    a.started("running", _needs(steps=100))  # a is busy for ~50 s: the next job goes to b even unloaded
    b.loaded_checkpoint = None
    picked = plan([Queued("j2", "pool", _needs("b.safetensors"))], [a, b], {})
    assert list(picked.picks) == ["b"]

    fast, slow = _member("fast", speed=0.1), _member("slow", speed=1.0)
    chapter = [Queued(f"p{i}", "pool", _needs()) for i in range(12)]
    counts = plan(chapter, [fast, slow], {}).queued
    assert counts["fast"] > counts["slow"] >= 1 and sum(counts.values()) == 12

    slow.mark_down("no answer")  # out of routing: everything is planned onto the one that answers
    assert plan(chapter, [fast, slow], {}).queued == {"fast": 12, "slow": 0}


@pytest.mark.parametrize(("toml", "words"), [
    ('[[backends]]\nname = "desk"\nkind = "comfyui"\n', "needs url (attached) or dir + python"),
    ('[[backends]]\nname = "local"\nkind = "embedded"\n', "reserved"),
    ('[[backends]]\nname = "a"\nkind = "comfyui"\nurl = "http://h:1"\n[[backends]]\nname = "a"\nkind = "comfyui"\n'
     'url = "http://h:2"\n', "used twice"),
    ('[[backends]]\nname = "a"\nkind = "comfyui"\nurl = "http://h:1"\nprofile = "pdp-11"\n', "unknown profile"),
    ('[[backends]]\nname = "a"\nkind = "comfyui"\nurl = "http://h:1"\nssh = "not a target"\n', "not an SSH target"),
    ('default_where = "pool"\n', "names no backend or tag"),
])
def test_a_bad_backends_table_stops_start_up_naming_it(tmp_path: Path, toml: str, words: str) -> None:
    from sidecar.config import load_settings
    from sidecar.errors import ConfigError

    config = tmp_path / "config.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings({}, config, environ={})
    assert words in exc.value.message and exc.value.key.split(".")[0] in ("backends", "default_where")

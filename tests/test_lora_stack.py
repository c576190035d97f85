"""Several LoRAs in one job: `loras: [{"id", "strength"}]` up to the profile's max_loras, chained
LoraLoader nodes that a ComfyUI runs and the embedded engine applies, each in the job's params."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.graph import Graph
from tests.conftest_engine import TINY_CHECKPOINT, TINY_CONTROLNET, TINY_LORA
from tests.scripted_backend import ScriptedBackend

THREE = [{"id": "spyke_plasma_v1", "strength": 0.9}, {"id": "ink_style", "strength": 0.4}, {"id": "screentone"}]


async def _post(client, **body):
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", **body})
    return resp.status, await resp.json()


async def _wait(client, job_id: str, timeout: float = 120) -> dict:
    job: dict = {}
    for _ in range(int(timeout / 0.05)):
        job = await (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stayed {job.get('status')}")


def _chain(workflow: dict) -> list[tuple[str, float]]:
    """The LoRAs the sampler's model passes through, in the order applied."""
    graph = Graph(workflow)
    sampler = graph[graph.ids_of_type("KSampler")[0]]
    node, seen = graph.source(sampler, "model"), []
    while node is not None and node.class_type != "CheckpointLoaderSimple":
        if node.class_type == "LoraLoader":
            seen.append((node.inputs["lora_name"], node.inputs["strength_model"]))
        node = graph.source(node, "model")
    return list(reversed(seen))


@pytest.fixture
async def scripted(aiohttp_client, tmp_path):
    backend = ScriptedBackend({"checkpoints": ["anything-v5.safetensors"],
                               "loras": ["spyke_plasma_v1.safetensors", "ink_style.safetensors",
                                         "screentone.safetensors", "halftone.safetensors"]})
    return await aiohttp_client(create_app(Settings(data_dir=tmp_path / "data", lora_strength=0.7), backend))


async def test_three_loras_chain_loaders_in_order_and_every_one_is_in_the_params(scripted) -> None:
    status, job = await _post(scripted, loras=THREE)
    assert status == 202, job
    assert job["workflowTemplate"] == "txt2img-lora"
    # The setting's strength when absent; no SHA-256 where the files are not on this machine.
    assert job["params"]["loras"] == [
        {"id": "spyke_plasma_v1", "strength": 0.9, "file": "spyke_plasma_v1.safetensors", "sha256": None},
        {"id": "ink_style", "strength": 0.4, "file": "ink_style.safetensors", "sha256": None},
        {"id": "screentone", "strength": 0.7, "file": "screentone.safetensors", "sha256": None}]
    assert (job["params"]["loraId"], job["params"]["loraStrength"]) == ("spyke_plasma_v1", 0.9)
    full = await (await scripted.get(f"/jobs/{job['id']}")).json()
    wf = full["workflow"]
    assert _chain(wf) == [("spyke_plasma_v1.safetensors", 0.9), ("ink_style.safetensors", 0.4),
                          ("screentone.safetensors", 0.7)]
    # The prompts read their CLIP from the last loader too: every LoRA's text-encoder part applies.
    graph = Graph(wf)
    last = [n for n in graph.of_type("LoraLoader") if n.inputs["lora_name"] == "screentone.safetensors"][0]
    assert {graph.source(n, "clip").id for n in graph.of_type("CLIPTextEncode")} == {last.id}
    # Resubmitted whole (reproduce), the same stack is read back.
    resp = await scripted.post("/jobs", json={"workflow": wf})
    assert resp.status == 202 and (await resp.json())["params"]["loras"] == job["params"]["loras"]


@pytest.mark.parametrize(("body", "field"), [
    ({"loras": THREE + [{"id": "halftone"}]}, "loras"),  # over the profile's 3
    ({"loras": THREE[:1], "loraId": "ink_style"}, "loras"),  # both forms at once
    ({"loras": [{"id": "ink_style"}, {"id": "ink_style", "strength": 1.0}]}, "loras[1].id"),
    ({"loras": [{"id": "../ink_style"}]}, "loras[0].id"),
])
async def test_a_stack_the_profile_or_the_form_does_not_allow_is_refused(scripted, body, field) -> None:
    status, answer = await _post(scripted, **body)
    assert status == 400 and answer["error"]["code"] == "invalid_field"
    assert answer["error"]["details"]["field"] == field
    if "limit" in answer["error"]["details"]:
        assert answer["error"]["details"]["limit"] == 3 and "m1pro-16gb" in answer["error"]["message"]


async def test_a_missing_lora_anywhere_in_the_stack_is_named(scripted) -> None:
    status, answer = await _post(scripted, loras=[{"id": "ink_style"}, {"id": "nope"}])
    assert status == 400 and answer["error"]["code"] == "lora_not_found"
    assert answer["error"]["details"]["loraId"] == "nope"


async def test_three_loras_run_on_a_comfyui(aiohttp_client, comfy_settings, comfy_home, fake_comfy) -> None:
    for name in ("ink_style.safetensors", "screentone.safetensors"):
        (comfy_home / "models" / "loras" / name).write_bytes(b"not a real model")
    client = await aiohttp_client(create_app(comfy_settings))
    status, job = await _post(client, loras=THREE, steps=2)
    assert status == 202, job
    done = await _wait(client, job["id"], 30)
    assert done["status"] == "succeeded", done["error"]
    # What ComfyUI was sent (and validated against its recorded object_info) is the chain.
    assert _chain(done["workflow"]) == [("spyke_plasma_v1.safetensors", 0.9), ("ink_style.safetensors", 0.4),
                                        ("screentone.safetensors", 0.8)]


def _lora_variant(source: Path, target: Path, seed: int) -> None:
    """Another LoRA for the same tiny base: the tiny LoRA's tensors with other random up-projections."""
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(seed)
    tensors = load_file(str(source))
    for key, value in tensors.items():
        if key.endswith("lora_up.weight"):
            tensors[key] = (rng.standard_normal(value.shape) * float(np.abs(value).mean() + 1e-3)).astype(value.dtype)
    save_file(tensors, str(target))


@pytest.mark.engine
async def test_three_loras_apply_on_the_embedded_engine(aiohttp_client, tmp_path, engine_models) -> None:
    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    _lora_variant(models / "loras" / TINY_LORA, models / "loras" / "tiny-ink.safetensors", 1)
    _lora_variant(models / "loras" / TINY_LORA, models / "loras" / "tiny-tone.safetensors", 2)
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=models,
                        checkpoint=TINY_CHECKPOINT, controlnet_model=TINY_CONTROLNET, steps=3)
    client = await aiohttp_client(create_app(settings))
    size = {"width": 64, "height": 96}
    stack = [{"id": "tiny-lora", "strength": 1.0}, {"id": "tiny-ink", "strength": 1.0},
             {"id": "tiny-tone", "strength": 0.5}]

    async def render(**body) -> np.ndarray:
        status, job = await _post(client, seed=7, resolution=size, **body)
        assert status == 202, job
        done = await _wait(client, job["id"])
        assert done["status"] == "succeeded", done["error"]
        with Image.open(io.BytesIO(await (await client.get(f"/jobs/{job['id']}/image")).read())) as img:
            return np.asarray(img.convert("RGB"))

    three = await render(loras=stack)
    loaded = (await (await client.get("/health")).json())["backend"]["loaded"]
    assert sorted(loaded["loras"]) == ["tiny-ink.safetensors", "tiny-lora.safetensors", "tiny-tone.safetensors"]
    one = await render(loraId="tiny-lora", loraStrength=1.0)
    two = await render(loras=stack[:2])
    assert not np.array_equal(three, one) and not np.array_equal(three, two) and not np.array_equal(two, one)
    assert np.array_equal(three, await render(loras=stack))  # the same stack, the same pixels


async def test_a_grid_compares_two_lora_combinations_side_by_side(scripted, tmp_path) -> None:
    from sidecar.grids.axes import parse_axis
    from sidecar.grids.plan import plan_grid

    base = {"prompt": "spyke_plasma_v1, standing", "loraId": "spyke_plasma_v1", "loraStrength": 0.9}
    plan = plan_grid(base, [parse_axis("x", "lora:ink_style=0.3,0.6"), parse_axis("y", "lora:screentone=none,0.5")],
                     tmp_path / "grid")
    stacks = []
    for cell in plan.cells:
        resp = await scripted.post("/jobs", json=cell.request)
        assert resp.status == 202, await resp.text()
        stacks.append([(u["id"], u["strength"]) for u in (await resp.json())["params"]["loras"]])
    assert stacks == [
        [("spyke_plasma_v1", 0.9), ("ink_style", 0.3)], [("spyke_plasma_v1", 0.9), ("ink_style", 0.6)],
        [("spyke_plasma_v1", 0.9), ("ink_style", 0.3), ("screentone", 0.5)],
        [("spyke_plasma_v1", 0.9), ("ink_style", 0.6), ("screentone", 0.5)],
    ]


@pytest.mark.parametrize(("raw", "says"), [("lora:=0.5", "must name a LoRA id"), ("lora:../x=0.5", "must name"),
                                           ("lora:ink=3", "not a valid LoRA strength")])
def test_a_bad_lora_axis_is_refused_naming_it(raw, says) -> None:
    from sidecar.errors import InvalidField
    from sidecar.grids.axes import parse_axis

    with pytest.raises(InvalidField) as refused:
        parse_axis("x", raw)
    assert says in refused.value.message


async def test_a_job_with_a_lora_stack_is_retried_with_the_whole_stack(scripted) -> None:
    status, job = await _post(scripted, loras=THREE)
    assert status == 202
    await _wait(scripted, job["id"])
    resp = await scripted.post(f"/jobs/{job['id']}/retry")
    assert resp.status == 202, await resp.text()
    again = await resp.json()
    assert [(u["id"], u["strength"]) for u in again["params"]["loras"]] == [
        (u["id"], u["strength"]) for u in job["params"]["loras"]]

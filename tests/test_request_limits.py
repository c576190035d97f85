"""Every request is held to the profile and the parameter limits, whichever way it comes (issue 11):
a whole workflow is checked like a template job, and every malformed value anywhere in a body is a
400 naming it, never a 500. Driven through the real app over HTTP."""

from __future__ import annotations

import copy
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.engine.interpreter import NODES
from sidecar.nodes import FLUX_NODES, SUPPORTED_NODES


@pytest.fixture
def pose(tmp_path: Path) -> Path:
    path = tmp_path / "pose.png"
    Image.new("RGB", (64, 96), (255, 255, 255)).save(path)
    return path


async def template_workflow(client, **body: Any) -> dict[str, Any]:
    """A real job's filled workflow (txt2img-lora unless a pose is given), to edit and resubmit."""
    resp = await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing", "loraId": "spyke_plasma_v1", **body})
    assert resp.status == 202, await resp.text()
    return await full_workflow(client, await resp.json())


async def full_workflow(client, job: dict[str, Any]) -> dict[str, Any]:
    """The submit answer is the job's summary: its workflow is on GET /jobs/{id}."""
    return (await (await client.get(f"/jobs/{job['id']}")).json())["workflow"]


def node_of(wf: dict[str, Any], class_type: str) -> str:
    return next(nid for nid, node in wf.items() if node["class_type"] == class_type)


def with_input(class_type: str, **inputs: Any):
    def edit(wf: dict[str, Any]) -> dict[str, Any]:
        wf = copy.deepcopy(wf)
        wf[node_of(wf, class_type)]["inputs"].update(inputs)
        return wf
    return edit


def add_node(node_id: str, node: Any):
    def edit(wf: dict[str, Any]) -> dict[str, Any]:
        return {**copy.deepcopy(wf), node_id: node}
    return edit


# (what, edit of a template job's workflow, code, the input named: (class type, input))
WHOLE_REFUSALS = [
    ("a 1024x1024 latent", with_input("EmptyLatentImage", width=1024, height=1024),
     "resolution_exceeds_profile", ("EmptyLatentImage", "width")),
    ("a batch of 4", with_input("EmptyLatentImage", batch_size=4), "batch_size_not_supported",
     ("EmptyLatentImage", "batch_size")),
    ("a linked width", with_input("EmptyLatentImage", width=["1", 0]), "invalid_field", ("EmptyLatentImage", "width")),
    ("steps 10000", with_input("KSampler", steps=10000), "invalid_field", ("KSampler", "steps")),
    ("cfg 100", with_input("KSampler", cfg=100), "invalid_field", ("KSampler", "cfg")),
    ("denoise 0", with_input("KSampler", denoise=0), "invalid_field", ("KSampler", "denoise")),
    ("LoRA strength 5", with_input("LoraLoader", strength_model=5.0), "invalid_field", ("LoraLoader", "strength_model")),
    ("a checkpoint outside the models folder", with_input("CheckpointLoaderSimple", ckpt_name="../../etc/passwd"),
     "invalid_field", ("CheckpointLoaderSimple", "ckpt_name")),
    ("an absolute LoRA path", with_input("LoraLoader", lora_name="/etc/passwd"), "invalid_field",
     ("LoraLoader", "lora_name")),
    ("an unknown dtype", with_input("ModelComputeDtype", dtype="fp8"), "invalid_field", ("ModelComputeDtype", "dtype")),
    ("an input the node does not take", with_input("KSampler", extra=1), "invalid_field", ("KSampler", "extra")),
    ("a missing input", lambda wf: {k: (dict(v, inputs={i: x for i, x in v["inputs"].items() if i != "steps"})
                                        if v["class_type"] == "KSampler" else v) for k, v in wf.items()},
     "invalid_field", ("KSampler", "steps")),
    ("a link to the wrong output type", with_input("KSampler", model=["5", 0]), "workflow_invalid", ("KSampler", "model")),
    ("a link to a missing node", with_input("KSampler", model=["99", 0]), "workflow_invalid", ("KSampler", "model")),
    ("a cycle", with_input("LoraLoader", model=["9", 0]), "workflow_invalid", None),
]


@pytest.mark.parametrize(("edit", "code", "named"), [case[1:] for case in WHOLE_REFUSALS],
                         ids=[case[0] for case in WHOLE_REFUSALS])
async def test_a_whole_workflow_is_held_to_the_profile_and_limits(client, backend, edit, code, named) -> None:
    wf = await template_workflow(client)
    runs = backend.runs
    resp = await client.post("/jobs", json={"workflow": edit(wf)})
    body = await resp.json()
    assert resp.status == 400, body
    err = body["error"]
    assert err["code"] == code, err
    if named is not None:
        node_id = node_of(wf, named[0])
        assert err["details"]["field"] == f"workflow.{node_id}.inputs.{named[1]}"
        assert f"Node {node_id}" in err["message"] or f"workflow.{node_id}" in err["message"]
    assert backend.runs == runs
    assert len((await (await client.get("/jobs")).json())["jobs"]) == 1  # only the template job


async def test_an_unknown_node_type_is_refused_naming_the_node(client) -> None:
    wf = await template_workflow(client)
    wf["20"] = {"class_type": "ImageScale", "inputs": {"image": ["7", 0], "upscale_method": "nearest-exact",
                                                        "width": 2048, "height": 2048, "crop": "disabled"}}
    resp = await client.post("/jobs", json={"workflow": wf})
    err = (await resp.json())["error"]
    assert resp.status == 400 and err["code"] == "node_not_supported"
    assert err["details"]["node"] == "20" and err["details"]["classType"] == "ImageScale"
    assert "Node 20" in err["message"] and "KSampler" in err["details"]["supported"]


def test_the_node_types_are_listed_once_and_the_engine_runs_exactly_those() -> None:
    # Flux's nodes (LoraLoaderModelOnly aside: SD LoRAs load by it too) are checked like the others but not run
    # here: the embedded engine refuses a Flux job
    # (family_not_supported) before its graph would reach the interpreter.
    assert set(NODES) == SUPPORTED_NODES - FLUX_NODES


async def test_a_whole_workflows_params_are_read_off_the_checked_graph(client, settings) -> None:
    wf = await template_workflow(client, seed=7)
    resp = await client.post("/jobs", json={"workflow": with_input("KSampler", seed=99, steps=12)(wf)})
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["params"] == {
        "prompt": "spyke_plasma_v1, standing", "negativePrompt": settings.negative_prompt, "seed": 99,
        "steps": 12, "cfg": 7.0, "sampler": "euler_ancestral", "scheduler": "normal", "width": 512, "height": 768,
        "checkpoint": "anything-v5.safetensors", "loraId": "spyke_plasma_v1", "loraStrength": 0.8,
        "family": None, "loras": [{"id": "spyke_plasma_v1", "strength": 0.8, "file": "spyke_plasma_v1.safetensors",
                                   "sha256": None}],
        "controlnetStrength": None, "denoise": 1.0, "poseImagePath": None,
        "initImagePath": None, "initJobId": None, "refinedFrom": None, "upscaleModel": None}
    assert await full_workflow(client, job) == with_input("KSampler", seed=99, steps=12)(wf)  # our prefix is kept


async def test_the_save_prefix_is_the_daemons(client) -> None:
    wf = with_input("SaveImage", filename_prefix="../../../Library/LaunchAgents/evil")(await template_workflow(client))
    resp = await client.post("/jobs", json={"workflow": wf})
    assert resp.status == 202, await resp.text()
    saved = (await full_workflow(client, await resp.json()))[node_of(wf, "SaveImage")]["inputs"]["filename_prefix"]
    assert saved == "plasma-sidecar/workflow"


async def test_a_1500_node_chain_is_walked_without_recursion(client) -> None:
    wf = await template_workflow(client)
    lora = node_of(wf, "LoraLoader")
    previous = lora
    for n in range(1500):
        node_id = f"c{n}"
        wf[node_id] = {"class_type": "ModelComputeDtype", "inputs": {"model": [previous, 0], "dtype": "fp16"}}
        previous = node_id
    wf[node_of(wf, "KSampler")]["inputs"]["model"] = [previous, 0]
    resp = await client.post("/jobs", json={"workflow": wf})
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["params"]["checkpoint"] == "anything-v5.safetensors"


async def test_a_workflow_past_the_node_limit_is_413(client) -> None:
    wf = {str(n): {"class_type": "EmptyLatentImage", "inputs": {"width": 8, "height": 8}} for n in range(2001)}
    resp = await client.post("/jobs", json={"workflow": wf})
    err = (await resp.json())["error"]
    assert resp.status == 413 and err["code"] == "payload_too_large" and err["details"]["limit"] == 2000


async def test_a_reproduced_pose_workflow_still_runs(client, pose) -> None:
    wf = await template_workflow(client, poseImagePath=str(pose))
    resp = await client.post("/jobs", json={"workflow": wf, "poseImagePath": str(pose)})
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert job["params"]["poseImagePath"] == str(pose) and job["params"]["controlnetStrength"] == 0.65


async def test_resolution_has_one_default(client) -> None:
    for body in ({}, {"resolution": {}}, {"resolution": None}, {"resolution": {"width": 512}}):
        job = (await (await client.post("/jobs", json={"prompt": "x", **body})).json())
        assert (job["params"]["width"], job["params"]["height"]) == (512, 768), body


# -- every malformed value anywhere in a body: 400 naming it

def _nested(depth: int) -> str:
    return '{"prompt": "x", "workflow": {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": ' \
        + "[" * depth + "]" * depth + "}}}}"


def _wf_value(class_type: str, name: str, raw: str):
    """A raw JSON body: the template's workflow with one input set to a literal JSON text (NaN...)."""
    def body(wf: dict[str, Any]) -> str:
        marker = "__MARKER__"
        edited = with_input(class_type, **{name: marker})(wf)
        return json.dumps({"workflow": edited}).replace(f'"{marker}"', raw)
    return body


# (what, body: JSON text or a function of a template workflow, the field named)
MALFORMED = [
    ("JSON nested 1000 deep", lambda wf: _nested(1000), "body"),
    ("JSON nested 100 deep", lambda wf: _nested(100), "body"),
    ("width abc", lambda wf: '{"prompt": "x", "resolution": {"width": "abc", "height": 768}}', "resolution.width"),
    ("width NaN", lambda wf: '{"prompt": "x", "resolution": {"width": NaN, "height": 768}}', "resolution.width"),
    ("batchSize abc", lambda wf: '{"prompt": "x", "batchSize": "abc"}', "batchSize"),
    ("cfg NaN", lambda wf: '{"prompt": "x", "cfg": NaN}', "cfg"),
    ("cfg Infinity", lambda wf: '{"prompt": "x", "cfg": Infinity}', "cfg"),
    ("seed true", lambda wf: '{"prompt": "x", "seed": true}', "seed"),
    ("steps as a string", lambda wf: '{"prompt": "x", "steps": "2"}', "steps"),
    ("prompt a list", lambda wf: '{"prompt": ["x"]}', "prompt"),
    ("prompt null with a LoRA", lambda wf: '{"prompt": null, "loraId": "spyke_plasma_v1"}', "prompt"),
    ("workflow a list", lambda wf: '{"workflow": [1, 2]}', "workflow"),
    ("pose under an unknown user", lambda wf: '{"prompt": "x", "poseImagePath": "~nosuchuser/pose.png"}',
     "poseImagePath"),
    ("workflow width abc", _wf_value("EmptyLatentImage", "width", '"abc"'), "EmptyLatentImage.width"),
    ("workflow width NaN", _wf_value("EmptyLatentImage", "width", "NaN"), "EmptyLatentImage.width"),
    ("workflow width null", _wf_value("EmptyLatentImage", "width", "null"), "EmptyLatentImage.width"),
    ("workflow width a list", _wf_value("EmptyLatentImage", "width", "[1, 2, 3]"), "EmptyLatentImage.width"),
    ("workflow width {}", _wf_value("EmptyLatentImage", "width", "{}"), "EmptyLatentImage.width"),
    ("workflow batch_size abc", _wf_value("EmptyLatentImage", "batch_size", '"abc"'), "EmptyLatentImage.batch_size"),
    ("workflow positive []", _wf_value("KSampler", "positive", "[]"), "KSampler.positive"),
    ("workflow seed true", _wf_value("KSampler", "seed", "true"), "KSampler.seed"),
    ("workflow cfg NaN", _wf_value("KSampler", "cfg", "NaN"), "KSampler.cfg"),
    ("workflow text null", _wf_value("CLIPTextEncode", "text", "null"), "CLIPTextEncode.text"),
    ("workflow node a list", lambda wf: json.dumps({"workflow": {**wf, "5": [1]}}), "workflow.5.class_type"),
    ("workflow inputs a string", lambda wf: json.dumps({"workflow": {**wf, "5": {"class_type": "EmptyLatentImage",
                                                                                  "inputs": "x"}}}),
     "workflow.5.inputs"),
]


@pytest.mark.parametrize(("body", "field"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
async def test_a_malformed_value_is_a_400_naming_it(client, backend, body, field) -> None:
    wf = await template_workflow(client)
    if "." in field and field.split(".")[0] in {n["class_type"] for n in wf.values()}:
        class_type, name = field.split(".")
        field = f"workflow.{node_of(wf, class_type)}.inputs.{name}"
    runs = backend.runs
    resp = await client.post("/jobs", data=body(wf), headers={"Content-Type": "application/json"})
    err = (await resp.json())["error"]
    assert resp.status == 400, err
    assert err["details"].get("field") == field or field in err["message"], err
    assert backend.runs == runs


# -- files the daemon reads for a user: bounded before they are read

def png_header(width: int, height: int, tail: bytes = b"") -> bytes:
    """A PNG that declares `width`x`height` (one tiny IDAT): what a decompression bomb looks like on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b"") + tail)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: p.write_bytes(png_header(13_400, 13_400)), "pixels"),  # 179 megapixels
    (lambda p: p.write_bytes(png_header(10_000, 10_000)), "pixels"),
    (lambda p: p.write_bytes(b"GIF89a" + b"\x00" * 100), "PNG, JPEG or WebP"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\nnot really"), "decodable"),
    (lambda p: p.mkdir(), "not a file"),
])
async def test_a_pose_image_is_bounded_before_it_is_read(client, tmp_path, make, expected) -> None:
    path = tmp_path / "pose.png"
    make(path)
    resp = await client.post("/jobs", json={"prompt": "x", "poseImagePath": str(path)})
    err = (await resp.json())["error"]
    assert resp.status == 400 and err["code"] == "pose_image_invalid", err
    assert expected in err["message"] and err["details"]["field"] == "poseImagePath"


async def test_a_1gb_sparse_fake_png_is_refused_by_its_size(client, tmp_path) -> None:
    path = tmp_path / "huge.png"
    with open(path, "wb") as fh:
        fh.write(png_header(64, 64))
        fh.truncate(1 << 30)  # sparse: no disk used, nothing read
    resp = await client.post("/jobs", json={"prompt": "x", "poseImagePath": str(path)})
    err = (await resp.json())["error"]
    assert resp.status == 400 and err["code"] == "pose_image_invalid"
    assert err["details"]["sizeBytes"] == 1 << 30 and "at most" in err["message"]


async def test_jobs_stored_before_the_typed_params_still_read(aiohttp_client, settings, backend) -> None:
    """Rows written by earlier versions (camelCase params, the unused request column, a whole workflow's
    unchecked values) are listed, with the values that no longer pass left out: never a 500."""
    import sqlite3

    from sidecar.jobs.store import SCHEMA
    from sidecar.sqlite_store import now_iso

    settings.data_dir.mkdir(parents=True)
    with sqlite3.connect(settings.db_path) as db:
        db.executescript(SCHEMA)
        db.execute("INSERT INTO jobs (id, status, request, params, workflow, engine, created_at, finished_at) "
                   "VALUES ('old', 'succeeded', ?, ?, '{}', 'comfyui', ?, ?)",  # recent: not for gc
                   (json.dumps({"workflow": {}}),
                    json.dumps({"seed": 5, "loraId": "spyke_plasma_v1", "steps": 10000, "cfg": "abc"}),
                    now_iso(), now_iso()))
    client = await aiohttp_client(create_app(settings, backend))
    resp = await client.get("/jobs/old")
    assert resp.status == 200, await resp.text()
    params = (await resp.json())["params"]
    assert params["seed"] == 5 and params["loraId"] == "spyke_plasma_v1"
    assert params["steps"] is None and params["cfg"] is None
    assert (await client.get("/jobs")).status == 200

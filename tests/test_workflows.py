"""Templates: validation at load, slot filling touching exactly the slots, hot reload keeping the last good set."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from sidecar.assets import asset_path
from sidecar.errors import WorkflowInvalid
from sidecar.workflows import TemplateStore, load_templates

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
WORKFLOWS = asset_path("workflows")


def diff(a: dict, b: dict) -> set[tuple[str, str]]:
    return {
        (node, key)
        for node in a
        for key in a[node]["inputs"]
        if a[node]["inputs"][key] != b[node]["inputs"][key]
    }


SHARED_FULL = Path("/work/shared/fixtures/comfyui/object_info-full.json")


def recorded_object_info() -> dict:
    """The real ComfyUI's /object_info: the small recording, the upscale nodes', and the SDXL/Flux nodes'
    (copied from the full recording, `object_info-families.json`)."""
    info = json.loads((FIXTURES / "object_info.json").read_text())
    for extra in (FIXTURES.parent / "upscale" / "object_info-upscale.json", FIXTURES / "object_info-families.json"):
        info.update({k: v for k, v in json.loads(extra.read_text()).items() if not k.startswith("_")})
    return info


def check_against_object_info(name: str, graph: dict, info: dict) -> None:
    """Node by node as ComfyUI validates a prompt: a known class, every required input given, no unknown
    input, literals within the declared enum or range (model enums are the server's files: not checked),
    each link to an existing node's output of the type the input takes."""
    for nid, node in graph.items():
        spec = info.get(node["class_type"])
        assert spec is not None, f"{name} node {nid}: {node['class_type']} is not a ComfyUI node"
        required, optional = spec["input"].get("required", {}), spec["input"].get("optional", {})
        inputs = node["inputs"]
        assert set(required) <= set(inputs), f"{name} node {nid}: missing {set(required) - set(inputs)}"
        for key, value in inputs.items():
            declared = required.get(key) or optional.get(key)
            assert declared is not None, f"{name} node {nid}: {node['class_type']} has no input {key!r}"
            kind, options = declared[0], (declared[1] if len(declared) > 1 else {})
            if isinstance(value, list):  # a link
                source = graph[value[0]]
                out = info[source["class_type"]]["output"]
                assert out[value[1]] == kind, f"{name} node {nid}.{key}: {out[value[1]]} linked to a {kind} input"
            elif isinstance(kind, list):
                if kind and not key.endswith("_name") and key not in ("ckpt_name", "image"):
                    assert value in kind, f"{name} node {nid}.{key}: {value!r} not in {kind}"
            elif kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), f"{name} node {nid}.{key}"
            else:
                assert kind in ("STRING",) and isinstance(value, str), f"{name} node {nid}.{key}: {kind}"


def test_every_template_is_valid_against_the_real_comfyui_s_object_info() -> None:
    info = recorded_object_info()
    infos = [info]
    if SHARED_FULL.exists():  # the full recording itself, where this checkout has it
        infos.append(json.loads(SHARED_FULL.read_text()))
    templates = load_templates(WORKFLOWS, set(info))
    assert {f"{prefix}{kind}" for prefix in ("sdxl-", "flux-") for kind in
            ("txt2img", "txt2img-lora", "img2img", "img2img-lora")} <= set(templates)
    for t in templates.values():
        for recorded in infos:
            check_against_object_info(t.name, t.graph, recorded)


def test_flux_templates_load_the_diffusion_model_two_text_encoders_and_vae_at_cfg_1() -> None:
    templates = load_templates(WORKFLOWS)
    for name in ("flux-txt2img", "flux-txt2img-lora", "flux-img2img", "flux-img2img-lora"):
        g = templates[name].graph
        kinds = {n["class_type"]: n["inputs"] for n in g.values()}
        assert kinds["DualCLIPLoader"]["type"] == "flux" and "UNETLoader" in kinds and "VAELoader" in kinds
        sampler = kinds["KSampler"]
        assert sampler["cfg"] == 1.0 and g[sampler["positive"][0]]["class_type"] == "FluxGuidance"
        assert "CheckpointLoaderSimple" not in kinds
        # The sampling shift follows the image size: the size slots set ModelSamplingFlux too.
        shift = next(nid for nid, n in g.items() if n["class_type"] == "ModelSamplingFlux")
        assert {(t.node, t.input) for t in templates[name].spec.slots["width"]} >= {(shift, "width")}
        assert templates[name].spec.precision == {"unet": "bf16", "vae": "fp32"}


def test_templates_load_and_use_only_node_types_the_server_knows() -> None:
    known = set(recorded_object_info())
    templates = load_templates(WORKFLOWS, known)
    assert {"txt2img-lora", "txt2img", "txt2img-pose-lora", "txt2img-pose", "img2img", "img2img-lora",
            "img2img-pose", "img2img-pose-lora"} <= set(templates)
    for t in templates.values():
        if t.name.startswith("flux-"):
            continue  # bf16 (above)
        assert t.spec.precision == {"unet": "fp16", "vae": "fp32"}
        dtype_nodes = [n for n in t.graph.values() if n["class_type"] == "ModelComputeDtype"]
        assert [n["inputs"]["dtype"] for n in dtype_nodes] == ["fp16"]
        if "img2img" in t.name:
            # LoadImage -> VAEEncode -> KSampler: the init image's latent, partly redrawn (denoise).
            sampler = t.graph["6"]["inputs"]
            encode = t.graph[sampler["latent_image"][0]]
            assert encode["class_type"] == "VAEEncode"
            assert t.graph[encode["inputs"]["pixels"][0]]["class_type"] == "LoadImage"
            assert t.has_slot("init_image") and t.has_slot("denoise")
            continue
        latent = next(n for n in t.graph.values() if n["class_type"] == "EmptyLatentImage")
        size = (832, 1216) if t.name.startswith("sdxl-") else (512, 768)
        assert (latent["inputs"]["width"], latent["inputs"]["height"], latent["inputs"]["batch_size"]) == (*size, 1)


async def test_old_template_names_resolve_to_the_renamed_templates() -> None:
    """`img2img-*-controlnet` were txt2img with a pose ControlNet: renamed, the old names still answer (logs
    and saved workflows name them)."""
    store = TemplateStore(WORKFLOWS)
    await store.load()
    assert store.get("img2img-lora-controlnet").name == "txt2img-pose-lora"
    assert store.get("img2img-controlnet").name == "txt2img-pose"
    assert "img2img-lora-controlnet" not in store.templates


def test_fill_touches_exactly_the_declared_slots() -> None:
    t = load_templates(WORKFLOWS)["txt2img-lora"]
    filled = t.fill({"prompt_text": "spyke_plasma_v1, running", "seed": 7, "lora_name": "x.safetensors",
                     "lora_strength": 0.5})
    assert diff(t.graph, filled) == {("3", "text"), ("6", "seed"), ("2", "lora_name"), ("2", "strength_model"),
                                     ("2", "strength_clip")}
    assert t.graph["6"]["inputs"]["seed"] == 0  # the template itself is never mutated
    with pytest.raises(KeyError):
        t.fill({"not_a_slot": 1})


def test_a_slot_pointing_at_a_missing_input_is_refused(tmp_path: Path) -> None:
    shutil.copytree(WORKFLOWS, tmp_path / "wf")
    manifest = json.loads((tmp_path / "wf" / "manifest.json").read_text())
    manifest["templates"]["txt2img"]["slots"]["seed"] = [{"node": "6", "input": "sede"}]
    (tmp_path / "wf" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WorkflowInvalid, match="sede"):
        load_templates(tmp_path / "wf")


def test_unknown_class_type_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(WorkflowInvalid, match="unknown to the backend"):
        load_templates(WORKFLOWS, {"KSampler"})


async def test_hot_reload_good_then_broken_keeps_last_good(tmp_path: Path) -> None:
    wf = tmp_path / "wf"
    shutil.copytree(WORKFLOWS, wf)
    store = TemplateStore(wf)
    await store.load()
    stop = asyncio.Event()
    watcher = asyncio.create_task(store.watch(stop))
    await asyncio.sleep(0.3)
    try:
        graph = json.loads((wf / "txt2img.json").read_text())
        graph["6"]["inputs"]["cfg"] = 4.5
        (wf / "txt2img.json").write_text(json.dumps(graph))
        for _ in range(100):
            if store.templates["txt2img"].graph["6"]["inputs"]["cfg"] == 4.5:
                break
            await asyncio.sleep(0.05)
        assert store.templates["txt2img"].graph["6"]["inputs"]["cfg"] == 4.5

        (wf / "txt2img.json").write_text("{ not json")
        for _ in range(100):
            if store.last_error:
                break
            await asyncio.sleep(0.05)
        assert store.last_error and "txt2img.json" in store.last_error
        assert store.templates["txt2img"].graph["6"]["inputs"]["cfg"] == 4.5  # last good still used
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 5)

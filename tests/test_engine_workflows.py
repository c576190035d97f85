"""What the embedded engine accepts at submit time, and how it reads a workflow: the sampler table,
node support, graph checks, ComfyUI's prompt emphasis. No torch models are run here."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from sidecar.engine import samplers
from sidecar.engine.conditioning import parse_weights
from sidecar.engine.interpreter import interpret
from sidecar.nodes import SUPPORTED_NODES
from sidecar.errors import NodeNotSupported, SamplerNotSupported, WorkflowInvalid
from tests.conftest_engine import TINY_CONTROLNET, TINY_LORA, fill

pytestmark = pytest.mark.engine

SD15 = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}


@pytest.mark.parametrize(("sampler", "scheduler", "cls", "config"), [
    ("euler", "normal", "EulerDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("euler_ancestral", "normal", "EulerAncestralDiscreteScheduler", {"timestep_spacing": "linspace"}),
    ("dpmpp_2m", "normal", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("dpmpp_2m", "karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    ("euler", "karras", "EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    ("ddim", "normal", "DDIMScheduler", {"timestep_spacing": "linspace"}),
    ("ddim", "ddim_uniform", "DDIMScheduler", {"timestep_spacing": "leading"}),
    ("lms", "normal", "LMSScheduler", {"timestep_spacing": "linspace"}),
    ("lms", "karras", "LMSScheduler", {"use_karras_sigmas": True}),
    ("euler", "simple", "EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
])
def test_sampler_table_maps_comfyui_names_to_diffusers(sampler: str, scheduler: str, cls: str, config: dict) -> None:
    made = samplers.make_scheduler(sampler, scheduler, SD15)
    assert type(made).__name__ == cls
    for key, value in config.items():
        assert made.config[key] == value, key
    assert made.config["beta_schedule"] == "scaled_linear"


@pytest.mark.parametrize(("sampler", "scheduler"), [("dpmpp_sde", "normal"), ("ddim", "karras"),
                                                    ("euler_ancestral", "karras"), ("euler", "beta"), (None, "normal")])
def test_unsupported_pairs_are_refused_listing_what_is_supported(sampler, scheduler) -> None:
    with pytest.raises(SamplerNotSupported) as err:
        samplers.check(sampler, scheduler)
    assert err.value.code == "sampler_not_supported" and err.value.http_status == 400
    assert err.value.details["supported"]["dpmpp_2m"] == list(samplers.ALL_SCHEDULES)
    assert "euler_ancestral (normal/simple/sgm_uniform/ddim_uniform)" in err.value.message


def test_lms_equals_euler_when_the_derivative_is_constant() -> None:
    """Linear multistep integrates the interpolated derivative; with a constant one that is Euler's step."""
    import torch

    lms = samplers.make_scheduler("lms", "normal", SD15)
    euler = samplers.make_scheduler("euler", "normal", SD15)
    lms.set_timesteps(8)
    euler.set_timesteps(8)
    x_lms = x_euler = torch.ones(1, 4, 2, 2) * lms.init_noise_sigma
    eps = torch.full((1, 4, 2, 2), 0.3)
    for t in lms.timesteps:
        x_lms = lms.step(eps, t, x_lms).prev_sample
        x_euler = euler.step(eps, t, x_euler).prev_sample
    assert torch.allclose(x_lms, x_euler, rtol=1e-4, atol=1e-4)


def test_templates_read_into_one_render_job() -> None:
    job = interpret(fill("txt2img-pose-lora", seed=11, lora_strength=0.7, controlnet_strength=0.5))
    assert job.checkpoint == "tiny-sd15.safetensors" and job.unet_dtype == "fp16"
    assert job.loras == [(TINY_LORA, 0.7, 0.7)]
    assert job.positive == "spyke_plasma_v1, standing" and job.negative == "lowres, blurry"
    assert [(c.controlnet, c.image, c.strength) for c in job.controls_positive] == [(TINY_CONTROLNET, "pose.png", 0.5)]
    assert job.controls_negative == job.controls_positive
    assert (job.width, job.height, job.seed, job.steps, job.sampler) == (64, 96, 11, 4, "euler")
    for name in ("txt2img", "txt2img-lora", "txt2img-pose"):
        assert interpret(fill(name)).save_node == "8"


def test_unknown_node_types_are_refused_anywhere_in_the_graph() -> None:
    wf = fill("txt2img")
    wf["42"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["1", 1], "stop_at_clip_layer": -2}}
    with pytest.raises(NodeNotSupported) as err:
        interpret(wf)
    assert err.value.details == {"node": "42", "classType": "CLIPSetLastLayer", "field": "workflow.42.class_type",
                                 "supported": sorted(SUPPORTED_NODES)}


@pytest.mark.parametrize("breakage", ["missing_link", "wrong_type", "two_outputs", "no_output", "cycle", "bad_size",
                                      "mixed_checkpoints"])
def test_broken_graphs_are_refused_before_they_run(breakage: str) -> None:
    wf = fill("txt2img")
    if breakage == "missing_link":
        wf["6"]["inputs"]["model"] = ["77", 0]
    elif breakage == "wrong_type":
        wf["6"]["inputs"]["model"] = ["1", 1]  # the CLIP output into the model input
    elif breakage == "two_outputs":
        wf["10"] = copy.deepcopy(wf["8"])
    elif breakage == "no_output":
        del wf["8"]
    elif breakage == "cycle":
        wf["3"]["inputs"]["clip"] = ["6", 0]
        wf["6"]["inputs"]["positive"] = ["3", 0]
    elif breakage == "bad_size":
        wf["5"]["inputs"]["width"] = 500
    elif breakage == "mixed_checkpoints":
        wf["11"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "other.safetensors"}}
        wf["7"]["inputs"]["vae"] = ["11", 2]
    with pytest.raises(WorkflowInvalid):
        interpret(wf)


def test_zero_strength_controlnet_is_no_controlnet() -> None:
    job = interpret(fill("txt2img-pose", controlnet_strength=0.0))
    assert job.controls_positive == () and job.controls_negative == ()


@pytest.mark.parametrize(("text", "parsed"), [
    ("a cat", [("a cat", 1.0)]),
    ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
    ("((big))", [("big", 1.1 * 1.1)]),
    ("(a (b) c:0.5)", [("a ", 0.5), ("b", 0.55), (" c", 0.5)]),
    (r"\(not weighted\) x", [("(not weighted) x", 1.0)]),
    ("time 10:30 (x", [("time 10:30 ", 1.0), ("x", 1.0)]),
])
def test_prompt_emphasis_follows_comfyui_syntax(text: str, parsed: list) -> None:
    got = parse_weights(text)
    assert [s for s, _ in got] == [s for s, _ in parsed]
    assert np.allclose([w for _, w in got], [w for _, w in parsed])

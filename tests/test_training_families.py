"""Trainers x families here: kohya's SDXL and Flux commands against the real argparse's option lists, ai-toolkit's
job config against the keys its config classes read, where each family may train (400 naming where), and runs
of kohya SDXL and ai-toolkit Flux through the API against the stand-ins (progress, checkpoints, samples,
tracking, cancel, resume, crash)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.training.ai_toolkit import AiToolkitAdapter, job_config
from sidecar.training.dataset import load_dataset
from sidecar.training.kohya_args import KohyaAdapter
from sidecar.training.spec import ResumePoint, TrainJob, TrainSpec
from sidecar.training.store import RunRecord, TrainingStore
from tests.fake_ai_toolkit import check_config
from tests.fake_ssh_host import FAKE_AI_TOOLKIT
from tests.fake_trainer import all_options, build_parser
from tests.processes import alive
from tests.training_fixtures import (  # noqa: F401  (fixtures)
    TRIGGER,
    backend,
    dataset_dir,
    fake_env,
    kohya_dir,
    settings,
    wait_for,
    wait_run,
)


def spec(**kw) -> TrainSpec:
    base = dict(output_name="spyke", dataset_dir="/d", steps=1000, resolution=1024, network_dim=16,
                network_alpha=16.0, learning_rate=1e-4, save_every=200, seed=7, engine="remote",
                trigger_word=TRIGGER, checkpoint="flux1-dev.safetensors")
    return TrainSpec(**{**base, **kw})


def job_for(tmp_path: Path, dataset_dir: Path, **kw) -> TrainJob:
    work = tmp_path / "run"
    return TrainJob(run_id="r1", spec=spec(**kw), dataset=load_dataset(dataset_dir, TRIGGER), work_dir=work,
                    output_dir=work / "output", base_model=Path("/models/flux1-dev.safetensors"))


def check_kohya_args(script: str, args: list[str]) -> dict[str, str | None]:
    """Every argument an option of the real script (name, flag or value, choices), as its argparse reads it."""
    options = all_options(script)
    given: dict[str, str | None] = {}
    for arg in args:
        name, _, value = arg.partition("=")
        assert name in options, f"{name} is not an option of the real {script}"
        assert options[name]["value"] == bool(value), f"{name}: flag/value mismatch with the real argparse"
        if options[name]["choices"]:
            assert value in options[name]["choices"], f"{name}={value} not in {options[name]['choices']}"
        given[name] = value or None
    build_parser(script).parse_args(args)
    return given


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_kohya_commands_are_real_options_of_each_script(tmp_path, dataset_dir, family) -> None:
    job = job_for(tmp_path, dataset_dir, family=family, trainer="kohya", sample_prompts=[f"{TRIGGER}, smiling"],
                  tracking="tensorboard")
    launch = KohyaAdapter().launch(job, "cuda", tmp_path / "tok", gpu_memory_gb=16)
    script = {"sd15": "train_network.py", "sdxl": "sdxl_train_network.py", "flux": "flux_train_network.py"}[family]
    assert launch.script == script
    given = check_kohya_args(script, launch.args)
    # Samples by kohya's own sampling, at every save unless sampleEvery says otherwise; tracking by --log_with.
    assert given["--sample_every_n_steps"] == "200" and given["--sample_prompts"].endswith("sample_prompts.txt")
    assert launch.files["sample_prompts.txt"] == f"{TRIGGER}, smiling --w 1024 --h 1024 --d 7 --s 20\n"
    assert given["--log_with"] == "tensorboard" and given["--logging_dir"] == str(job.work_dir / "logs")
    if family == "flux":
        assert given["--network_module"] == "networks.lora_flux" and "--fp8_base" in given
        assert given["--clip_l"] == "/models/clip_l.safetensors" and given["--ae"] == "/models/ae.safetensors"
        assert given["--t5xxl"] == "/models/t5xxl_fp8_e4m3fn.safetensors"
        assert given["--timestep_sampling"] == "shift" and given["--model_prediction_type"] == "raw"
        assert given["--blocks_to_swap"] == "18"  # a 16 GB card
        assert given["--mixed_precision"] == "bf16"
    elif family == "sdxl":
        assert given["--network_module"] == "networks.lora" and "--no_half_vae" in given
        assert "--cache_text_encoder_outputs" in given and "--network_train_unet_only" in given
    else:
        assert "--fp8_base" not in given and "--no_half_vae" not in given


def test_flux_on_a_24_gb_card_needs_no_block_swap(tmp_path, dataset_dir) -> None:
    job = job_for(tmp_path, dataset_dir, family="flux", trainer="kohya", base_model_ref="/w/flux1-dev.safetensors",
                  sample_every=50, tracking="wandb")
    given = check_kohya_args("flux_train_network.py", KohyaAdapter().launch(job, "cuda", None, 24).args)
    assert "--blocks_to_swap" not in given and given["--pretrained_model_name_or_path"] == "/w/flux1-dev.safetensors"
    assert "--sample_prompts" not in given and given["--log_with"] == "wandb"


@pytest.mark.parametrize("family", ["sd15", "sdxl", "flux"])
def test_ai_toolkit_config_uses_only_keys_it_reads(tmp_path, dataset_dir, family) -> None:
    job = job_for(tmp_path, dataset_dir, family=family, trainer="ai-toolkit", base_model_ref="org/model",
                  sample_prompts=[f"{TRIGGER}, a", f"{TRIGGER}, b"], sample_every=100, tracking="wandb")
    launch = AiToolkitAdapter().launch(job, "cuda", None)
    assert launch.script == "run.py" and launch.args == [str(job.work_dir / "ai-toolkit.json")]
    config = json.loads(launch.files["ai-toolkit.json"])
    assert check_config(config) is None
    p = config["config"]["process"][0]
    assert config["config"]["name"] == "spyke" and p["training_folder"] == str(job.output_dir.parent)
    assert p["network"] == {"type": "lora", "linear": 16, "linear_alpha": 16.0}
    assert p["save"]["save_every"] == 200 and p["train"]["steps"] == 1000 and p["train"]["lr"] == 1e-4
    assert p["model"]["name_or_path"] == "org/model"
    assert p["model"].get("is_flux", False) == (family == "flux") and p["model"].get("is_xl", False) == (family == "sdxl")
    assert p["sample"]["prompts"] == [f"{TRIGGER}, a", f"{TRIGGER}, b"] and p["sample"]["sample_every"] == 100
    assert p["logging"]["use_wandb"] is True and "log_dir" not in p
    assert [d["folder_path"] for d in p["datasets"]] == [str(job.work_dir / "img" / s.name) for s in job.dataset.subsets]


def test_ai_toolkit_resumes_from_its_newest_checkpoint(tmp_path) -> None:
    from tests.fake_ai_toolkit import write_lora

    out = tmp_path / "output" / "spyke"
    out.mkdir(parents=True)
    for step in (2, 4):
        write_lora(out / f"spyke_{step:09d}.safetensors", step, "spyke")
    (out / "spyke_000000006.safetensors").write_bytes(b"torn")  # a save cut short is not resumed from
    assert AiToolkitAdapter().resume_point(out, "spyke") == ResumePoint(4, out / "spyke_000000004.safetensors")


# -- through the API -------------------------------------------------------------------------------------
@pytest.fixture
def gpu_settings(tmp_path: Path, kohya_dir: Path) -> Settings:
    """This machine as a 24 GB CUDA box with kohya and ai-toolkit (the stand-ins) installed."""
    aitk = tmp_path / "ai-toolkit"
    (aitk / "venv" / "bin").mkdir(parents=True)
    (aitk / "run.py").symlink_to(FAKE_AI_TOOLKIT)
    (aitk / "venv" / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (aitk / "venv" / "bin" / "python").chmod(0o755)
    s = Settings(data_dir=tmp_path / "data", engine="embedded", kohya_dir=kohya_dir, ai_toolkit_dir=aitk,
                 profile="cuda-24gb", device="cuda")
    base = s.models_path / "checkpoints"
    base.mkdir(parents=True)
    (base / s.checkpoint).write_bytes(b"not a real model: the fake trainer only checks it exists")
    return s


@pytest.fixture
async def gpu_client(aiohttp_client, gpu_settings, backend, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.01")
    monkeypatch.setenv("FAKE_AITK_ARGV_FILE", str(fake_env["argv"].with_name("aitk.json")))
    return await aiohttp_client(create_app(gpu_settings, backend))


async def submit(client, dataset_dir: Path, **body) -> dict:
    # Tiny 64 px sets exercise the trainers, not the quality gate: past it with force.
    payload = {"datasetDir": str(dataset_dir), "outputName": "spyke", "steps": 6, "saveEveryNSteps": 2, "force": True,
               **body}
    resp = await client.post("/loras/train", json=payload)
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def test_an_sdxl_kohya_run_trains_and_lists_its_samples_per_checkpoint(gpu_client, dataset_dir, fake_env):
    run = await submit(gpu_client, dataset_dir, trainer="kohya", family="sdxl", samplePrompts=[f"{TRIGGER}, smiling"])
    assert run["params"]["family"] == "sdxl" and run["params"]["resolution"] == 1024  # SDXL's own size
    done = await wait_run(gpu_client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    argv = json.loads(fake_env["argv"].read_text())
    assert "--no_half_vae" in argv and "--resolution=1024,1024" in argv
    steps = {c["step"]: c for c in done["checkpoints"]}
    assert sorted(steps) == [2, 4, 6]
    for step in (2, 4, 6):
        assert [n.split("_")[1] for n in steps[step]["samples"]] == [f"{step:06d}"], steps[step]
    name = steps[4]["samples"][0]
    got = await gpu_client.get(f"/loras/{run['id']}/samples/{name}")
    assert got.status == 200 and got.headers["Content-Type"] == "image/png" and (await got.read())[:4] == b"\x89PNG"
    missing = await gpu_client.get(f"/loras/{run['id']}/samples/..%2F..%2Ftrain.log")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"


async def test_an_ai_toolkit_flux_run_reports_progress_checkpoints_and_samples(gpu_client, dataset_dir, fake_env):
    run = await submit(gpu_client, dataset_dir, trainer="ai-toolkit", family="flux",
                       baseModel="black-forest-labs/FLUX.1-dev", samplePrompts=[f"{TRIGGER}, a", f"{TRIGGER}, b"],
                       tracking="tensorboard")
    done = await wait_run(gpu_client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    assert done["engine"] == "ai-toolkit" and done["step"] == 6 and done["loss"]["last"] is not None
    assert done["finalFile"].endswith("/output/spyke/spyke.safetensors")
    tail = (await (await gpu_client.get(f"/loras/{run['id']}/status")).json())["logTail"]
    assert " - 1 completed job" in tail and not any("%|" in line for line in tail), tail  # no bar redraws
    ckpts = {c["step"]: c for c in done["checkpoints"]}
    assert sorted(ckpts) == [2, 4, 6] and ckpts[2]["fileName"] == "spyke_000000002.safetensors"
    assert all(len(ckpts[s]["samples"]) == 2 for s in (2, 4, 6)), ckpts  # ai-toolkit samples after each save
    config = json.loads(fake_env["argv"].with_name("aitk.json").read_text())["config"]
    p = config["config"]["process"][0]
    assert p["model"] == {"name_or_path": "black-forest-labs/FLUX.1-dev", "is_flux": True, "quantize": True}
    assert p["log_dir"].endswith("/logs")
    got = await gpu_client.get(f"/loras/{run['id']}/samples/{ckpts[4]['samples'][0]}")
    assert got.status == 200 and got.headers["Content-Type"] == "image/jpeg"


async def test_an_ai_toolkit_crash_ends_failed_with_its_error(gpu_client, dataset_dir, monkeypatch):
    monkeypatch.setenv("FAKE_AITK_CRASH_AT", "4")
    run = await submit(gpu_client, dataset_dir, trainer="ai-toolkit", family="flux", baseModel="org/flux")
    done = await wait_run(gpu_client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "failed" and done["error"]["code"] == "training_failed"
    assert done["error"]["details"]["reason"] == "crash" and "CUDA out of memory" in done["error"]["message"]
    assert done["error"]["message"].startswith("ai-toolkit's run.py failed at step 3")
    assert [c["step"] for c in done["checkpoints"]] == [2]


async def test_a_cancelled_ai_toolkit_run_resumes_from_its_newest_checkpoint(gpu_client, dataset_dir, monkeypatch,
                                                                                fake_env):
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.15")
    run = await submit(gpu_client, dataset_dir, trainer="ai-toolkit", family="sdxl", baseModel="org/sdxl")
    for _ in range(400):
        body = await (await gpu_client.get(f"/loras/{run['id']}/status")).json()
        if body["checkpoints"] or body["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.05)
    await gpu_client.post(f"/loras/{run['id']}/cancel")
    cancelled = await wait_run(gpu_client, run["id"], {"cancelled", "failed", "succeeded"})
    assert cancelled["status"] == "cancelled" and cancelled["checkpoints"], cancelled
    kept = max(c["step"] for c in cancelled["checkpoints"])
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.01")
    resumed = await (await gpu_client.post(f"/loras/{run['id']}/resume")).json()
    assert resumed["status"] == "queued", resumed
    done = await wait_run(gpu_client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    log = (Path(done["outputDir"]).parents[1] / "train.log").read_text()
    assert f"#### IMPORTANT RESUMING FROM {done['outputDir']}/spyke_{kept:09d}.safetensors ####" in log
    assert f"Found step {kept} in metadata, starting from there" in log


# -- where each family trains ----------------------------------------------------------------------------
@pytest.fixture
async def laptop(aiohttp_client, settings, backend, fake_env):
    return await aiohttp_client(create_app(settings, backend))  # the default profile: m1pro-16gb


@pytest.mark.parametrize("body", [{"trainer": "kohya", "family": "sdxl"},
                                  {"engine": "kohya", "family": "flux", "baseModel": "/w/flux1-dev.safetensors"}])
async def test_sdxl_and_flux_are_refused_on_the_laptop_naming_where_they_train(laptop, dataset_dir, body):
    resp = await laptop.post("/loras/train", json={"datasetDir": str(dataset_dir), "outputName": "spyke", **body})
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["code"] == "family_not_supported" and err["details"]["family"] == body["family"]
    assert "remote vast" in err["details"]["where"] and "remote ssh" in err["details"]["where"]
    assert "m1pro-16gb" in err["message"] or "m1pro-16gb" in json.dumps(err["details"])
    assert (await (await laptop.get("/loras/runs")).json())["runs"] == []


async def test_the_embedded_trainer_trains_sd15_only(laptop, dataset_dir):
    resp = await laptop.post("/loras/train", json={"datasetDir": str(dataset_dir), "outputName": "spyke",
                                                   "trainer": "embedded", "family": "flux", "baseModel": "x/y"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "family_not_supported"


async def test_trainer_and_its_alias_engine_must_agree(laptop, dataset_dir):
    resp = await laptop.post("/loras/train", json={"datasetDir": str(dataset_dir), "outputName": "spyke",
                                                   "trainer": "kohya", "engine": "embedded"})
    assert resp.status == 400 and (await resp.json())["error"]["details"]["field"] == "trainer"


# -- no stuck runs: the daemon stopped or killed while ai-toolkit trains ---------------------------------
async def test_a_daemon_stop_interrupts_an_ai_toolkit_run_and_a_new_daemon_resumes_it(
        aiohttp_client, gpu_settings, backend, dataset_dir, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.2")
    pidfile = fake_env["pids"].with_name("aitk.pid")
    monkeypatch.setenv("FAKE_AITK_PIDFILE", str(pidfile))
    first = await aiohttp_client(create_app(gpu_settings, backend))
    run = await submit(first, dataset_dir, trainer="ai-toolkit", family="flux", steps=8)
    for _ in range(400):
        body = await (await first.get(f"/loras/{run['id']}/status")).json()
        if body["checkpoints"]:
            break
        await asyncio.sleep(0.05)
    trainer = int(pidfile.read_text())
    await first.close()  # a clean stop: the trainer's group is stopped, the run is interrupted
    await wait_for(lambda: not alive(trainer), 10, "the trainer to be stopped")
    monkeypatch.setenv("FAKE_AITK_STEP_SECONDS", "0.01")
    second = await aiohttp_client(create_app(gpu_settings, backend))
    body = await (await second.get(f"/loras/{run['id']}/status")).json()
    assert body["status"] == "interrupted" and body["error"]["code"] == "interrupted" and body["checkpoints"]
    assert (await second.post(f"/loras/{run['id']}/resume")).status == 202
    done = await wait_run(second, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and done["step"] == 8


async def test_after_a_daemon_crash_the_orphaned_ai_toolkit_is_stopped_and_its_checkpoints_adopted(
        aiohttp_client, gpu_settings, backend, dataset_dir, tmp_path):
    """The daemon died (SIGKILL) while ai-toolkit trained in its own session; the next daemon stops it, adopts
    the checkpoints it wrote meanwhile, and marks the run interrupted with a reason."""
    run_id = "orphanaitk1"
    work = gpu_settings.data_dir / "training" / run_id
    dataset = load_dataset(dataset_dir, TRIGGER)
    from sidecar.training.dataset import stage_for_kohya

    stage_for_kohya(dataset, work)
    sp = spec(engine="ai-toolkit", trainer="ai-toolkit", family="flux", steps=400, save_every=2,
              base_model_ref="org/flux", dataset_dir=str(dataset_dir))
    job = TrainJob(run_id=run_id, spec=sp, dataset=dataset, work_dir=work, output_dir=work / "output" / "spyke",
                   base_model=Path("org/flux"))
    launch = AiToolkitAdapter().launch(job, "cuda", None)
    (work / "ai-toolkit.json").write_text(launch.files["ai-toolkit.json"])
    orphan = subprocess.Popen([sys.executable, "-u", str(gpu_settings.ai_toolkit_dir / "run.py"), *launch.args],
                              env={**os.environ, "FAKE_AITK_STEP_SECONDS": "0.05"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    reaper = threading.Thread(target=orphan.wait, daemon=True)  # reaped as init would reap a real orphan
    reaper.start()
    try:
        store = TrainingStore(gpu_settings.db_path)
        await store.open()
        await store.insert(RunRecord(id=run_id, status="running", engine="ai-toolkit", spec=sp.to_dict(),
                                     work_dir=str(work), output_dir=str(job.output_dir), base_model="org/flux",
                                     total=400, pid=orphan.pid))
        await store.close()
        await wait_for(lambda: any(job.output_dir.glob("spyke_*.safetensors")), 20, "a checkpoint of the orphan")
        client = await aiohttp_client(create_app(gpu_settings, backend))
        body = await (await client.get(f"/loras/{run_id}/status")).json()
        assert body["status"] == "interrupted" and body["error"]["code"] == "interrupted"
        assert body["checkpoints"] and body["checkpoints"][0]["fileName"].startswith("spyke_00000000")
        reaper.join(10)
        assert orphan.poll() is not None  # stopped: it no longer trains (nor writes) unobserved
    finally:
        if orphan.poll() is None:
            orphan.kill()


def test_memory_guidance_per_trainer_family_and_card() -> None:
    from sidecar.training.memory_plan import advice, min_memory_gb

    assert advice("kohya", "flux", 24).fits and "--fp8_base" in advice("kohya", "flux", 24).how
    assert advice("kohya", "flux", 16).fits and "--blocks_to_swap=18" in advice("kohya", "flux", 16).how
    assert not advice("kohya", "flux", 12).fits and "bitsandbytes" in advice("kohya", "flux", 12).how
    assert advice("ai-toolkit", "flux", 24).fits and not advice("ai-toolkit", "flux", 16).fits
    assert (min_memory_gb("ai-toolkit", "flux"), min_memory_gb("kohya", "flux"), min_memory_gb("kohya", "sdxl")) == (
        24, 16, 16)


async def test_the_estimate_refuses_a_family_the_laptop_cannot_train(laptop, dataset_dir):
    resp = await laptop.post("/loras/estimate", json={"datasetDir": str(dataset_dir), "outputName": "spyke",
                                                      "trainer": "kohya", "family": "sdxl"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "family_not_supported"
    plan = await (await laptop.post("/loras/estimate", json={"datasetDir": str(dataset_dir), "outputName": "s"})).json()
    assert plan["family"] == "sd15" and plan["trainer"] == "kohya" and all(a["fits"] for a in plan["memory"])

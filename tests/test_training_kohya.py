"""The kohya adapter driven through the daemon's API against the fake trainer (which replays the
recorded output and writes files as the real one does): arguments, progress, ETA, checkpoints,
cancel, crash, no data, NaN loss, resume, restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.api.keys import EVENTS
from sidecar.errors import JobFailed
from sidecar.training.lora_metadata import read_lora_metadata
from sidecar.training import kohya
from sidecar.training.dataset import Dataset, Subset, load_dataset
from sidecar.training.progress import ETA_MIN_STEPS
from sidecar.training.spec import TrainerHooks, TrainJob, TrainSpec
from sidecar.training.store import RunRecord, TrainingStore
from tests.fake_trainer import FIXTURES, build_parser, help_options
from tests.processes import alive
from tests.training_fixtures import (  # noqa: F401  (fixtures)
    backend,
    client,
    dataset_dir,
    fake_env,
    kohya_dir,
    settings,
    start_training,
    wait_for,
    wait_run,
)

CANONICAL = {
    "--network_module": "networks.lora", "--network_dim": "32", "--network_alpha": "16",
    "--resolution": "512,512", "--train_batch_size": "1", "--optimizer_type": "AdamW",
    "--caption_extension": ".txt", "--save_every_n_steps": "200", "--save_model_as": "safetensors",
    "--max_train_steps": "1000", "--metadata_trigger_phrase": "spyke_plasma_v1",
}


def spec(**kw) -> TrainSpec:
    base = dict(output_name="spyke", dataset_dir="/d", steps=1000, resolution=512, network_dim=32,
                network_alpha=16.0, learning_rate=1e-4, save_every=200, seed=7, engine="kohya",
                trigger_word="spyke_plasma_v1", checkpoint="anything-v5.safetensors")
    return TrainSpec(**{**base, **kw})


def job_for(tmp_path: Path, dataset, base_model: Path, **kw) -> TrainJob:
    work = tmp_path / "run"
    return TrainJob(run_id="r1", spec=spec(**kw), dataset=dataset, work_dir=work, output_dir=work / "output",
                    base_model=base_model)


def hooks() -> tuple[TrainerHooks, dict]:
    seen: dict = {"progress": [], "checkpoints": [], "log": [], "warnings": []}
    return TrainerHooks(
        progress=lambda s, t, loss: seen["progress"].append((s, t, loss)),
        checkpoint=lambda s, p, st: seen["checkpoints"].append((s, p, st)),
        log=seen["log"].append, warning=seen["warnings"].append,
    ), seen


# -- the argument list --------------------------------------------------------------------------
def test_canonical_arguments_are_real_train_network_options(tmp_path, settings, dataset_dir) -> None:
    job = job_for(tmp_path, load_dataset(dataset_dir, "spyke_plasma_v1"), tmp_path / "m.safetensors")
    argv, _ = kohya.KohyaTrainer(settings).command(job)
    kohya_ss = settings.kohya_dir
    assert argv[:3] == [str(kohya_ss / "venv/bin/python"), "-u", str(kohya_ss / "sd-scripts/train_network.py")]
    args = argv[3:]
    options = help_options()
    given: dict[str, str | None] = {}
    for arg in args:
        name, _, value = arg.partition("=")
        assert name in options, f"{name} is not an option of the real train_network.py"
        spec_ = options[name]
        assert spec_["value"] == bool(value), f"{name}: flag/value mismatch with --help"
        if spec_["choices"]:
            assert value in spec_["choices"], f"{name}={value} is not one of {spec_['choices']}"
        given[name] = value or None
    build_parser().parse_args(args)  # and argparse built from --help accepts the whole list
    for name, value in CANONICAL.items():
        assert given[name] == value, name
    assert "--save_state" in given and "--cache_latents" in given
    assert "--sdpa" in given  # without it kohya's U-Net attention is naive: 2x slower, +4 GiB at 512 px on CPU
    assert "--xformers" not in given and "AdamW8bit" not in " ".join(args)


@pytest.mark.parametrize(("device", "mixed", "warned"), [("mps", "no", True), ("cpu", "no", True),
                                                         ("cuda", "fp16", False)])
def test_precision_rule(device: str, mixed: str, warned: bool) -> None:
    mixed_p, save_p, warnings = kohya.precision(device)
    assert (mixed_p, save_p, bool(warnings)) == (mixed, "fp16", warned)
    if warned:
        assert "--mixed_precision=no" in warnings[0] and device in warnings[0]


def test_resume_adds_resume_and_skip(tmp_path, settings, dataset_dir) -> None:
    from sidecar.training.spec import ResumePoint

    job = job_for(tmp_path, load_dataset(dataset_dir, "spyke_plasma_v1"), tmp_path / "m.safetensors")
    job.resume = ResumePoint(400, tmp_path / "spyke-step00000400-state")
    argv, _ = kohya.KohyaTrainer(settings).command(job)
    assert f"--resume={job.resume.state_path}" in argv and "--skip_until_initial_step" in argv


# -- adapter-level outcomes -----------------------------------------------------------------------
async def test_no_data_found_with_exit_zero_is_a_no_data_failure(tmp_path, settings, fake_env) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # A set that validated but whose folder is empty by the time kohya reads it: "No data found", exit 0.
    ds = Dataset(root=empty, layout="flat", trigger_word="t", subsets=[Subset("10_t character", empty, 10, "t")])
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x")
    h, seen = hooks()
    with pytest.raises(JobFailed) as err:
        await kohya.KohyaTrainer(settings).run(job_for(tmp_path, ds, model), h)
    assert err.value.code == "training_failed" and err.value.details["reason"] == "no_data"
    assert err.value.details["exitCode"] == 0
    assert any("No data found" in line for line in err.value.details["logTail"])
    assert (tmp_path / "run" / "train.log").stat().st_size > 0


async def test_missing_base_model_fails_with_the_trainers_error(tmp_path, settings, dataset_dir, fake_env) -> None:
    h, _ = hooks()
    with pytest.raises(JobFailed) as err:
        await kohya.KohyaTrainer(settings).run(
            job_for(tmp_path, load_dataset(dataset_dir, "spyke_plasma_v1"), tmp_path / "nope.safetensors"), h)
    d = err.value.details
    assert d["reason"] == "crash" and d["exitCode"] == 1 and d["exception"] == "ValueError"
    assert "neither a valid local path" in err.value.message


# -- through the API ------------------------------------------------------------------------------
async def test_training_run_reports_progress_checkpoints_and_final_lora(client, dataset_dir, fake_env) -> None:
    queue = client.app[EVENTS].subscribe()
    run = await start_training(client, dataset_dir)
    assert run["status"] == "queued" and run["engine"] == "kohya" and run["total"] == 6
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    assert (done["step"], done["total"]) == (6, 6)
    assert done["loss"]["last"] == pytest.approx(1.03) and done["loss"]["smoothed"] is not None
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6]
    for c in done["checkpoints"]:
        assert Path(c["path"]).is_file() and c["fileName"] == f"spyke-step{c['step']:08d}.safetensors"
    final = Path(done["finalFile"])
    assert final.name == "spyke.safetensors" and final.is_file()
    assert read_lora_metadata(final)["ss_steps"] == "6"
    assert any("model saved." in line for line in done["logTail"])
    argv = json.loads(fake_env["argv"].read_text())
    assert "--caption_extension=.txt" in argv and "--max_train_steps=6" in argv
    # Unset in the test's own environment (fake_env): the daemon gave them to kohya. Without the MPS
    # fallback an op torch lacks on MPS raises; unbuffered, progress arrives as it happens.
    assert json.loads(fake_env["env"].read_text()) == {"PYTORCH_ENABLE_MPS_FALLBACK": "1", "PYTHONUNBUFFERED": "1"}
    assert any(a.startswith("--train_data_dir=") and a.endswith("/img") for a in argv)
    # The precision rule: this machine has no CUDA, so the run says it trains in fp32 and saves fp16.
    assert any("--mixed_precision=no" in w for w in done["warnings"])
    # LORA-04: the run says which device the trainer really got, and warns when it is not a GPU.
    assert done["device"] == "cpu" and any("runs on the CPU" in w for w in done["warnings"])
    types = []
    while not queue.empty():
        types.append(queue.get_nowait()["type"])
    assert types[0] == "training.queued" and "training.started" in types and "training.progress" in types
    assert types.count("training.checkpoint") == 3 and types[-1] == "training.succeeded"


async def test_exit_zero_without_a_final_file_fails_and_keeps_the_checkpoints(client, dataset_dir, fake_env,
                                                                              monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_NO_FINAL", "1")  # trains and saves every checkpoint, exits 0, no spyke.safetensors
    run = await start_training(client, dataset_dir)
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "failed" and done["finalFile"] is None
    err = done["error"]
    assert err["code"] == "training_failed" and err["details"]["reason"] == "no_output"
    assert err["details"]["exitCode"] == 0 and err["details"]["step"] == 6
    assert "spyke.safetensors" in err["message"]
    assert not (Path(done["outputDir"]) / "spyke.safetensors").exists()
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6]
    assert all(Path(c["path"]).is_file() for c in done["checkpoints"])


async def test_eta_is_withheld_until_enough_steps_were_measured(client, dataset_dir, fake_env) -> None:
    queue = client.app[EVENTS].subscribe()
    run = await start_training(client, dataset_dir, steps=30, saveEveryNSteps=100)
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and done["etaSeconds"] is None
    progress = []
    while not queue.empty():
        event = queue.get_nowait()
        if event["type"] == "training.progress":
            progress.append(event["run"])
    assert progress and all(p["etaSeconds"] is None for p in progress if p["step"] < ETA_MIN_STEPS)
    later = [p for p in progress if ETA_MIN_STEPS <= p["step"] < 30]
    assert later and all(isinstance(p["etaSeconds"], int) and p["secondsPerStep"] > 0 for p in later)


async def test_cancel_stops_the_whole_process_group_and_keeps_checkpoints(client, dataset_dir, fake_env,
                                                                          monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.05")
    run = await start_training(client, dataset_dir, steps=400)
    async def has_checkpoint() -> bool:
        body = await (await client.get(f"/loras/{run['id']}/status")).json()
        return bool(body["checkpoints"])
    for _ in range(600):
        if await has_checkpoint():
            break
        await asyncio.sleep(0.05)
    leader, worker = (int(p) for p in fake_env["pids"].read_text().split())
    assert alive(leader) and alive(worker)
    resp = await client.post(f"/loras/{run['id']}/cancel")
    assert resp.status == 202
    done = await wait_run(client, run["id"], {"cancelled", "failed", "succeeded"})
    assert done["status"] == "cancelled" and done["step"] < 400
    await wait_for(lambda: not alive(leader) and not alive(worker), 10, "the trainer's process group to exit")
    kept = [Path(c["path"]) for c in done["checkpoints"]]
    assert kept and all(p.is_file() for p in kept)
    assert not (Path(done["outputDir"]) / "spyke.safetensors").exists()
    # The device is free again: generation is accepted.
    assert (await client.post("/jobs", json={"prompt": "spyke_plasma_v1, standing"})).status == 202


async def test_trainer_crash_fails_the_run_with_its_error_and_log_tail(client, dataset_dir, fake_env,
                                                                       monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_CRASH_AT", "3")
    run = await start_training(client, dataset_dir)
    done = await wait_run(client, run["id"], {"failed", "succeeded"})
    assert done["status"] == "failed"
    err = done["error"]
    assert err["code"] == "training_failed" and err["details"]["reason"] == "crash"
    assert "RuntimeError: MPS backend out of memory" in err["message"] and err["details"]["exitCode"] == 1
    assert any(line.startswith("Traceback") for line in err["details"]["logTail"])
    assert any("Traceback" in line for line in done["logTail"])
    assert [c["step"] for c in done["checkpoints"]] == [2]  # saved before the crash, kept


async def test_trainer_killed_from_outside_fails_naming_the_signal(client, dataset_dir, fake_env,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.05")
    run = await start_training(client, dataset_dir, steps=400)
    for _ in range(600):
        if (await (await client.get(f"/loras/{run['id']}/status")).json())["checkpoints"]:
            break
        await asyncio.sleep(0.05)
    leader, _ = (int(p) for p in fake_env["pids"].read_text().split())
    os.killpg(leader, signal.SIGINT)  # as the recorded Ctrl-C: KeyboardInterrupt, exit -2
    done = await wait_run(client, run["id"], {"failed", "succeeded", "cancelled"})
    assert done["status"] == "failed" and done["error"]["details"]["exitCode"] == -signal.SIGINT
    assert "stopped by SIGINT" in done["error"]["message"] and "KeyboardInterrupt" in done["error"]["message"]
    assert [c["step"] for c in done["checkpoints"]][:1] == [2]


async def test_nan_loss_stops_the_trainer_and_fails(client, dataset_dir, fake_env, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_NAN_AT", "3")
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.05")
    run = await start_training(client, dataset_dir, steps=400)
    done = await wait_run(client, run["id"], {"failed", "succeeded", "cancelled"})
    assert done["status"] == "failed" and done["error"]["details"]["reason"] == "nan_loss"
    assert "NaN" in done["error"]["message"] and done["step"] < 50
    assert done["loss"]["last"] is None  # NaN is not JSON: null, with the reason in the error
    leader, worker = (int(p) for p in fake_env["pids"].read_text().split())
    await wait_for(lambda: not alive(leader) and not alive(worker), 10, "the trainer to be stopped")
    assert [c["step"] for c in done["checkpoints"]] == [2]


async def test_cancelled_run_resumes_from_its_last_state(client, dataset_dir, fake_env, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.3")
    run = await start_training(client, dataset_dir, steps=8)
    for _ in range(400):
        body = await (await client.get(f"/loras/{run['id']}/status")).json()
        if body["checkpoints"]:
            break
        await asyncio.sleep(0.05)
    await client.post(f"/loras/{run['id']}/cancel")
    stopped = await wait_run(client, run["id"], {"cancelled"})
    saved = max(c["step"] for c in stopped["checkpoints"])
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.01")
    queue = client.app[EVENTS].subscribe()
    resp = await client.post(f"/loras/{run['id']}/resume")
    assert resp.status == 202 and (await resp.json())["status"] == "queued"
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    argv = json.loads(fake_env["argv"].read_text())
    assert f"--resume={Path(done['outputDir']) / f'spyke-step{saved:08d}-state'}" in argv
    assert "--skip_until_initial_step" in argv
    steps = []
    while not queue.empty():
        event = queue.get_nowait()
        if event["type"] == "training.progress":
            steps.append(event["run"]["step"])
    assert steps and min(steps) >= saved and steps[-1] == 8  # continues, not from 0
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6, 8] and done["attempts"] == 2
    assert Path(done["finalFile"]).is_file()


async def test_daemon_stop_interrupts_and_a_new_daemon_resumes(aiohttp_client, settings, backend, dataset_dir,
                                                               fake_env, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.2")
    first = await aiohttp_client(create_app(settings, backend))
    run = await start_training(first, dataset_dir, steps=8)
    for _ in range(400):
        body = await (await first.get(f"/loras/{run['id']}/status")).json()
        if body["checkpoints"]:
            break
        await asyncio.sleep(0.05)
    leader, worker = (int(p) for p in fake_env["pids"].read_text().split())
    await first.close()  # a clean daemon stop: the trainer is stopped, the run is interrupted
    await wait_for(lambda: not alive(leader) and not alive(worker), 10, "the trainer to be stopped")
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.01")
    second = await aiohttp_client(create_app(settings, backend))
    body = await (await second.get(f"/loras/{run['id']}/status")).json()
    assert body["status"] == "interrupted" and body["checkpoints"]
    assert (await second.post(f"/loras/{run['id']}/resume")).status == 202
    done = await wait_run(second, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and done["step"] == 8


async def test_restart_after_a_crash_stops_the_orphaned_trainer(aiohttp_client, settings, backend, dataset_dir,
                                                                fake_env, tmp_path, monkeypatch) -> None:
    """The daemon died (SIGKILL) while kohya trained: the trainer, in its own session, kept going.
    The next daemon stops it, adopts the checkpoints it wrote and marks the run interrupted."""
    from sidecar.training.dataset import stage_for_kohya

    run_id = "orphan0001"
    work = settings.data_dir / "training" / run_id
    out = work / "output"
    stage_for_kohya(load_dataset(dataset_dir, "spyke_plasma_v1"), work)
    model = settings.models_path / "checkpoints" / settings.checkpoint
    env = {**os.environ, "FAKE_KOHYA_STEP_SECONDS": "0.05"}
    orphan = subprocess.Popen(
        [sys.executable, "-u", str(settings.kohya_dir / "sd-scripts" / "train_network.py"),
         f"--pretrained_model_name_or_path={model}", f"--train_data_dir={work / 'img'}", f"--output_dir={out}",
         "--output_name=spyke", "--max_train_steps=400", "--save_every_n_steps=2", "--save_state"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # Reap it as init would for a real orphan (here the test process is its parent).
    reaper = threading.Thread(target=orphan.wait, daemon=True)
    reaper.start()
    try:
        store = TrainingStore(settings.db_path)
        await store.open()
        await store.insert(RunRecord(id=run_id, status="running", engine="kohya",
                                     spec=spec(steps=400, save_every=2, dataset_dir=str(dataset_dir)).to_dict(),
                                     work_dir=str(work), output_dir=str(out), base_model=str(model), total=400,
                                     pid=orphan.pid, attempts=1))
        await store.close()
        await wait_for(lambda: (out / "spyke-step00000004.safetensors").exists(), 30, "the orphan to save")
        c = await aiohttp_client(create_app(settings, backend))
        reaper.join(15)
        assert orphan.returncode is not None  # stopped by the new daemon
        body = await (await c.get(f"/loras/{run_id}/status")).json()
        assert body["status"] == "interrupted" and body["error"]["code"] == "interrupted"
        steps = [ck["step"] for ck in body["checkpoints"]]
        assert steps[:2] == [2, 4] and body["error"]["details"]["lastCheckpointStep"] == max(steps)
    finally:
        if orphan.poll() is None:
            os.killpg(orphan.pid, 9)
            orphan.wait()


def test_fixture_help_is_the_recorded_one() -> None:
    # The option list the tests check against comes from the recorded --help, not from the fake.
    assert (FIXTURES / "train_network-help.txt").read_text().startswith("usage: train_network.py")
    assert len(help_options()) > 150


# -- found against the real train_network.py (sd-scripts 48d368fa) --------------------------------
def fake_clip_vocab(folder: Path, size: int = 49408) -> Path:
    """vocab.json + merges.txt of CLIP's size and layout: byte tokens, then (here filler) merged tokens,
    then the two special tokens last (49406, 49407)."""
    from sidecar.engine.tokenizer import byte_unicode

    folder.mkdir(parents=True)
    chars = byte_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars)]
    tokens += [f"filler{i}</w>" for i in range(size - 2 - len(tokens))] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


async def test_offline_kohya_gets_the_clip_tokenizer_from_our_models_dir(tmp_path, settings, dataset_dir, fake_env,
                                                                         monkeypatch) -> None:
    """kohya's first act is fetching openai/clip-vit-large-patch14; offline that is a TypeError (exit 1).
    The CLIP vocabulary the engine uses is written into kohya's --tokenizer_cache_dir first."""
    monkeypatch.setenv("FAKE_KOHYA_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hf-cache"))  # no CLIP vocabulary but ours
    monkeypatch.setattr("sidecar.engine.tokenizer._packaged_bpe", lambda: None)
    model = settings.models_path / "checkpoints" / settings.checkpoint
    job = job_for(tmp_path, load_dataset(dataset_dir, "spyke_plasma_v1"), model, steps=2, save_every=2)
    h, _ = hooks()
    with pytest.raises(JobFailed) as err:  # no CLIP vocabulary anywhere: kohya must download, and cannot
        await kohya.KohyaTrainer(settings).run(job, h)
    assert err.value.details["exception"] == "TypeError"

    fake_clip_vocab(settings.models_path / "tokenizers" / "clip-vit-large-patch14")
    h, seen = hooks()
    result = await kohya.KohyaTrainer(settings).run(job_for(tmp_path / "again", job.dataset, model, steps=2,
                                                            save_every=2), h)
    assert result.final_file.is_file()
    cache = settings.data_dir / "kohya-tokenizer" / "openai_clip-vit-large-patch14"
    assert any(f"load tokenizer from cache: {cache}" in line for line in seen["log"])
    config = json.loads((cache / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and config["bos_token"] == "<|startoftext|>"


def test_a_vocabulary_that_is_not_clips_is_not_given_to_kohya(tmp_path, settings) -> None:
    from sidecar.training.kohya_tokenizer import seed_tokenizer_cache

    fake_clip_vocab(settings.models_path / "tokenizers" / "clip-vit-large-patch14", size=514)  # tiny models'
    assert seed_tokenizer_cache(settings, tmp_path / "cache") is None
    assert not (tmp_path / "cache").exists()


def test_seeded_tokenizer_loads_as_clips_in_transformers(tmp_path, settings) -> None:
    pytest.importorskip("transformers")
    from transformers import CLIPTokenizer

    from sidecar.training.kohya_tokenizer import seed_tokenizer_cache

    fake_clip_vocab(settings.models_path / "tokenizers" / "clip-vit-large-patch14")
    folder = seed_tokenizer_cache(settings, tmp_path / "cache")
    tok = CLIPTokenizer.from_pretrained(str(folder))  # what kohya calls on the folder
    ids = tok("spyke", padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert tok.model_max_length == 77 and len(ids) == 77
    assert (ids[0], tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)


async def test_base_model_of_another_architecture_names_the_model(tmp_path, settings, dataset_dir, fake_env) -> None:
    model = tmp_path / "tiny-sd15.safetensors"
    model.write_bytes(b"TINY random weights")
    h, _ = hooks()
    with pytest.raises(JobFailed) as err:
        await kohya.KohyaTrainer(settings).run(job_for(tmp_path, load_dataset(dataset_dir, "spyke_plasma_v1"), model), h)
    d = err.value.details
    assert d["reason"] == "crash" and d["exception"] == "RuntimeError" and d["exitCode"] == 1
    assert "tiny-sd15.safetensors does not fit the full-size SD 1.x network" in err.value.message
    assert "Missing key(s) in state_dict" in err.value.message
    assert [line[:13] for line in d["exceptionDetails"]] == ["Missing key(s", "size mismatch"]


async def test_only_the_last_two_step_states_are_kept(client, dataset_dir, fake_env) -> None:
    run = await start_training(client, dataset_dir, steps=8, saveEveryNSteps=2)
    done = await wait_run(client, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded", done["error"]
    out = Path(done["outputDir"])
    # Every LoRA checkpoint stays; the optimizer states (3x their size) of all but the last two go.
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6, 8]
    assert all(Path(c["path"]).is_file() for c in done["checkpoints"])
    assert sorted(p.name for p in out.glob("*-state")) == ["spyke-state", "spyke-step00000006-state",
                                                           "spyke-step00000008-state"]

"""`sidecar loras sweep` and `promote` against a daemon served in-process over real HTTP: a run with
two checkpoints becomes a labelled contact sheet + index; promote installs one without overwriting."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from sidecar.api.app import create_app
from sidecar.loras.cli import loras
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import (  # noqa: F401  (fixtures)
    dataset_dir,
    fake_env,
    kohya_dir,
    settings,
    start_training,
    wait_run,
)


class FolderBackend(ScriptedBackend):
    """Lists LoRAs from the real folder (as the embedded engine and ComfyUI do) and records which ran."""

    def __init__(self, loras: Path):
        super().__init__(folders={"loras": loras})
        self.lora_names: list[str | None] = []

    async def run(self, ctx):
        lora = next((n["inputs"]["lora_name"] for n in ctx.workflow.values() if n["class_type"] == "LoraLoader"), None)
        self.lora_names.append(lora)
        return await super().run(ctx)


@pytest.fixture
def env(settings, tmp_path) -> dict[str, str]:
    return {"SIDECAR_DATA_DIR": str(settings.data_dir), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "SIDECAR_ENGINE": "embedded"}


@pytest.fixture
async def daemon(aiohttp_client, settings, fake_env):
    backend = FolderBackend(settings.models_path / "loras")
    client = await aiohttp_client(create_app(settings, backend))
    client.backend = backend
    return client


async def trained_run(daemon, dataset_dir) -> dict:
    run = await start_training(daemon, dataset_dir, steps=4, saveEveryNSteps=2)
    done = await wait_run(daemon, run["id"], {"succeeded", "failed"})
    assert done["status"] == "succeeded" and [c["step"] for c in done["checkpoints"]] == [2, 4]
    return done


async def invoke(args: list[str], env: dict[str, str]):
    # The CLI runs its own event loop: give it a thread while this loop serves the daemon.
    return await asyncio.to_thread(CliRunner().invoke, loras, args, env=env, catch_exceptions=False)


async def test_sweep_of_two_checkpoints_writes_a_contact_sheet(daemon, dataset_dir, settings, env, tmp_path) -> None:
    # With a sample prompt: the (fake) kohya writes a sample at each save, as --sample_prompts does.
    run = await start_training(daemon, dataset_dir, steps=4, saveEveryNSteps=2, samplePrompts=["spyke_plasma_v1, portrait"])
    run = await wait_run(daemon, run["id"], {"succeeded", "failed"})
    assert run["status"] == "succeeded"
    written = {c["step"]: c["samples"] for c in run["checkpoints"] if not c["final"]}
    assert len(written[2]) == 1 and len(written[4]) == 1
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# sweep prompts\nspyke_plasma_v1, full body, standing\n\nspyke_plasma_v1, portrait\n")
    out = tmp_path / "sweep"
    result = await invoke(["sweep", run["id"], "--prompts", str(prompts), "--seeds", "1,2", "--out", str(out),
                           "--cell", "64", "--url", str(daemon.make_url("")).rstrip("/"),
                           "--poll-interval", "0.02"], env)
    assert result.exit_code == 0, result.output
    sheet = Image.open(out / "contact-sheet.png")
    # label column + 2 checkpoint columns, header + 2 prompts x 2 seeds rows
    assert sheet.size == (260 + 2 * 64, 28 + 4 * 64)
    index = json.loads((out / "index.json").read_text())
    assert [c["label"] for c in index["columns"]] == ["step 2", "step 4"]
    # The trainer's own samples ride with their checkpoint's column, beside the sweep's renders.
    assert [c["samples"] for c in index["columns"]] == [written[2], written[4]]
    assert len(index["cells"]) == 8 and all(c["status"] == "succeeded" for c in index["cells"])
    assert {(c["seed"], c["step"]) for c in index["cells"]} == {(1, 2), (1, 4), (2, 2), (2, 4)}
    assert all((out / c["image"]).is_file() for c in index["cells"])
    # Every render used its checkpoint, found by the daemon as a LoRA under the staged name...
    staged = {c["loraId"] + ".safetensors" for c in index["columns"]}
    assert set(daemon.backend.lora_names) == staged and len(daemon.backend.lora_names) == 8
    # ... which is gone from the LoRA folder afterwards.
    assert not list((settings.models_path / "loras").glob("sweep--*"))


async def test_sweep_of_an_unknown_run_is_an_input_error(daemon, env, tmp_path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    result = await invoke(["sweep", "nope", "--prompts", str(prompts), "--url", str(daemon.make_url("")).rstrip("/")],
                          env)
    assert result.exit_code == 2 and "nope" in result.output


async def test_sweep_without_a_daemon_exits_3(env, tmp_path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("x\n")
    result = await invoke(["sweep", "r", "--prompts", str(prompts), "--url", "http://127.0.0.1:9"], env)
    assert result.exit_code == 3 and "not running" in result.output and "sidecar serve" in result.output


def url_of(daemon) -> list[str]:
    return ["--url", str(daemon.make_url("")).rstrip("/")]


async def test_promote_installs_a_checkpoint_without_overwriting(daemon, dataset_dir, settings, env) -> None:
    run = await trained_run(daemon, dataset_dir)
    loras_dir = settings.models_path / "loras"
    url = url_of(daemon)
    result = await invoke(["promote", run["id"], "--step", "2", "--name", "spyke_plasma_v1", *url], env)
    assert result.exit_code == 0, result.output
    installed = loras_dir / "spyke_plasma_v1.safetensors"
    assert installed.read_bytes() == Path(run["checkpoints"][0]["path"]).read_bytes()
    # The same again: nothing to do. Another checkpoint under that name: refused, file untouched.
    again = await invoke(["promote", run["id"], "--step", "2", "--name", "spyke_plasma_v1", *url], env)
    assert again.exit_code == 0 and "already installed" in again.output
    clash = await invoke(["promote", run["id"], "--step", "4", "--name", "spyke_plasma_v1", *url], env)
    assert clash.exit_code == 1 and "not overwritten" in clash.output
    assert installed.read_bytes() == Path(run["checkpoints"][0]["path"]).read_bytes()
    # By output name, final LoRA by default; and generation finds it as a loraId.
    final = await invoke(["promote", "spyke", "--json", *url], env)
    assert final.exit_code == 0 and json.loads(final.output)["loraId"] == "spyke"
    resp = await daemon.post("/jobs", json={"prompt": "spyke_plasma_v1", "loraId": "spyke"})
    assert resp.status == 202
    missing = await invoke(["promote", run["id"], "--step", "3", *url], env)
    assert missing.exit_code == 2 and "saved steps: 2, 4" in missing.output


async def test_promote_goes_to_comfyui_loras_when_configured(aiohttp_client, fake_env, dataset_dir, settings,
                                                             env, tmp_path) -> None:
    # The daemon decides where a LoRA is installed: ComfyUI's models/loras when it has a comfyui_dir.
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "loras").mkdir(parents=True)
    configured = settings.model_copy(update={"comfyui_dir": comfy, "comfyui_python": Path("/usr/bin/python3")})
    daemon = await aiohttp_client(create_app(configured, FolderBackend(comfy / "models" / "loras")))
    run = await trained_run(daemon, dataset_dir)
    result = await invoke(["promote", run["id"], "--step", "4", *url_of(daemon)], env)
    assert result.exit_code == 0, result.output
    assert (comfy / "models" / "loras" / "spyke.safetensors").is_file()
    assert not (settings.models_path / "loras" / "spyke.safetensors").exists()


async def test_promote_over_http_names_the_file_and_never_overwrites(daemon, dataset_dir, settings) -> None:
    run = await trained_run(daemon, dataset_dir)
    first = await daemon.post(f"/loras/{run['id']}/promote", json={"step": 2, "name": "v1"})
    assert first.status == 201
    body = await first.json()
    assert body == {"path": str(settings.models_path / "loras" / "v1.safetensors"), "loraId": "v1", "step": 2,
                    "alreadyInstalled": False}
    same = await daemon.post(f"/loras/{run['id']}/promote", json={"step": 2, "name": "v1"})
    assert same.status == 200 and (await same.json())["alreadyInstalled"] is True
    other = await daemon.post(f"/loras/{run['id']}/promote", json={"step": 4, "name": "v1"})
    assert other.status == 409 and (await other.json())["error"]["code"] == "lora_exists"
    bad = await daemon.post(f"/loras/{run['id']}/promote", json={"name": "../escape"})
    assert bad.status == 400 and (await bad.json())["error"]["code"] == "invalid_field"
    unknown = await daemon.post("/loras/nope/promote", json={})
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "training_not_found"


async def test_stage_makes_a_checkpoint_a_lora_id_until_unstaged(daemon, dataset_dir, settings) -> None:
    # What the sweep asks of the daemon: a checkpoint a job can name, not listed as installed, removed after.
    run = await trained_run(daemon, dataset_dir)
    loras_dir = settings.models_path / "loras"
    first = await daemon.post(f"/loras/{run['id']}/stage", json={"step": 2})
    assert first.status == 201
    staged = await first.json()
    assert staged["loraId"] == f"sweep--spyke-{run['id'][:8]}-step00000002" and staged["step"] == 2
    assert (loras_dir / f"{staged['loraId']}.safetensors").read_bytes() == Path(run["checkpoints"][0]["path"]).read_bytes()
    again = await daemon.post(f"/loras/{run['id']}/stage", json={"step": 2})
    assert again.status == 200 and (await again.json())["alreadyStaged"] is True
    final = await (await daemon.post(f"/loras/{run['id']}/stage", json={})).json()
    assert final["step"] == 4
    job = await daemon.post("/jobs", json={"prompt": "spyke_plasma_v1", "loraId": staged["loraId"]})
    assert job.status == 202
    assert [lo["id"] for lo in (await (await daemon.get("/loras")).json())["loras"]] == []
    # One step's staging, then the rest; installed LoRAs are never touched.
    (loras_dir / "spyke.safetensors").write_bytes(b"installed")
    one = await daemon.post(f"/loras/{run['id']}/unstage", json={"step": 4})
    assert (await one.json())["removed"] == [final["loraId"]]
    rest = await daemon.post(f"/loras/{run['id']}/unstage", json={})
    assert (await rest.json())["removed"] == [staged["loraId"]]
    assert [p.name for p in loras_dir.iterdir()] == ["spyke.safetensors"]
    missing = await daemon.post(f"/loras/{run['id']}/stage", json={"step": 3})
    assert missing.status == 400 and (await missing.json())["error"]["details"]["available"] == [2, 4]
    Path(run["checkpoints"][0]["path"]).unlink()
    gone = await daemon.post(f"/loras/{run['id']}/stage", json={"step": 2})
    assert gone.status == 409 and (await gone.json())["error"]["code"] == "checkpoint_file_missing"
    unknown = await daemon.post("/loras/nope/unstage", json={})
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "training_not_found"


async def test_the_studio_finds_a_sweep_in_the_runs_default_folder(daemon, dataset_dir, env, tmp_path) -> None:
    run = await trained_run(daemon, dataset_dir)
    before = await daemon.get(f"/loras/{run['id']}/sweep")
    assert before.status == 200 and (await before.json()) == {"contactSheetUrl": None, "index": None, "task": None}
    missing = await daemon.get(f"/loras/{run['id']}/sweep/contact-sheet.png")
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "not_found"

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("spyke_plasma_v1, portrait\n")
    result = await invoke(["sweep", run["id"], "--prompts", str(prompts), "--seeds", "3", "--cell", "64",
                           *url_of(daemon), "--poll-interval", "0.02"], env)  # no --out: the run's folder
    assert result.exit_code == 0, result.output

    info = await (await daemon.get(f"/loras/{run['id']}/sweep")).json()
    assert info["contactSheetUrl"] == f"/loras/{run['id']}/sweep/contact-sheet.png"
    assert [c["label"] for c in info["index"]["columns"]] == ["step 2", "step 4"]
    sheet = await daemon.get(info["contactSheetUrl"])
    assert sheet.status == 200 and sheet.content_type == "image/png"
    assert Image.open(io.BytesIO(await sheet.read())).size == (260 + 2 * 64, 28 + 1 * 64)
    unknown = await daemon.get("/loras/nope/sweep")
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "training_not_found"


async def wait_task(daemon, task_id: str, timeout: float = 120) -> dict:
    for _ in range(int(timeout / 0.2)):
        task = await (await daemon.get(f"/tasks/{task_id}")).json()
        if task["status"] != "running":
            return task
        await asyncio.sleep(0.2)
    raise AssertionError(task)


async def test_a_sweep_started_through_the_daemon_runs_sidecar_loras_sweep_and_the_pick_is_promoted(
        daemon, dataset_dir, settings, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))  # the child's configuration: none of the user's
    run = await trained_run(daemon, dataset_dir)
    running = await daemon.post(f"/loras/{run['id']}/sweep", json={"prompts": ["spyke_plasma_v1, portrait"],
                                                                    "seeds": [1, 2], "width": 64, "height": 96})
    assert running.status == 202, await running.text()
    task = await running.json()
    assert task["commands"][0].startswith(f"sidecar loras sweep {run['id']} --prompts ")
    again = await daemon.post(f"/loras/{run['id']}/sweep", json={"prompts": ["x"]})
    assert again.status == 409 and (await again.json())["error"]["code"] == "invalid_state"
    done = await wait_task(daemon, task["id"])
    assert (done["status"], done["exitCode"]) == ("succeeded", 0), done["output"]
    info = await (await daemon.get(f"/loras/{run['id']}/sweep")).json()
    assert info["contactSheetUrl"] and [c["label"] for c in info["index"]["columns"]] == ["step 2", "step 4"]
    assert info["task"]["id"] == task["id"]
    swept = await (await daemon.get("/jobs?source=sweep")).json()
    assert len(swept["jobs"]) == 4  # 2 checkpoints x 1 prompt x 2 seeds, through this daemon
    promoted = await daemon.post(f"/loras/{run['id']}/promote", json={"step": 2, "name": "spyke_pick"})
    assert promoted.status == 201, await promoted.text()
    for bad, code in (({"prompts": []}, "invalid_field"), ({"prompts": ["x"], "seeds": [-1]}, "invalid_field"),
                      ({"prompts": ["x"], "colour": 1}, "unknown_field")):
        resp = await daemon.post(f"/loras/{run['id']}/sweep", json=bad)
        assert resp.status == 400 and (await resp.json())["error"]["code"] == code
    gone = await daemon.post("/loras/nope/sweep", json={"prompts": ["x"]})
    assert gone.status == 404 and (await gone.json())["error"]["code"] == "training_not_found"

"""`sidecar loras train|status|cancel|resume|runs|list` against a daemon training with the fake kohya
trainer: what the artist types instead of curl, with its exit codes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from sidecar.loras.cli import loras
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import (  # noqa: F401  (fixtures)
    client,
    dataset_dir,
    fake_env,
    kohya_dir,
    settings,
    wait_run,
)


@pytest.fixture
def backend(settings) -> ScriptedBackend:
    return ScriptedBackend(folders={"loras": settings.models_path / "loras"})


@pytest.fixture
def env(settings, tmp_path) -> dict[str, str]:
    return {"SIDECAR_DATA_DIR": str(settings.data_dir), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}


def url(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def invoke(args: list[str], env: dict[str, str]):
    # The CLI runs its own event loop: give it a thread while this loop serves the daemon.
    return await asyncio.to_thread(CliRunner().invoke, loras, args, env=env, catch_exceptions=False)


async def test_train_follows_the_run_to_its_final_lora(client, dataset_dir, settings, env) -> None:
    result = await invoke(["train", str(dataset_dir), "--force", "--name", "spyke", "--steps", "4", "--save-every", "2",
                           "--engine", "kohya", "--url", url(client), "--poll-interval", "0.02"], env)
    assert result.exit_code == 0, result.output
    assert "spyke" in result.output and "succeeded" in result.output and "checkpoints at 2, 4" in result.output
    final = result.output.split("final LoRA: ")[1].splitlines()[0]
    assert Path(final).is_file() and Path(final).name == "spyke.safetensors"


async def test_detached_train_then_status_follow_by_output_name(client, dataset_dir, env) -> None:
    submitted = await invoke(["train", str(dataset_dir), "--force", "--name", "spyke", "--steps", "4", "--save-every", "2",
                              "--engine", "kohya", "--detach", "--json", "--url", url(client)], env)
    assert submitted.exit_code == 0, submitted.output
    run = json.loads(submitted.output)
    assert run["status"] in ("queued", "running") and run["params"]["steps"] == 4

    followed = await invoke(["status", "spyke", "--follow", "--json", "--url", url(client),
                             "--poll-interval", "0.02"], env)
    assert followed.exit_code == 0, followed.output
    done = json.loads(followed.output)
    assert done["id"] == run["id"] and done["status"] == "succeeded" and done["step"] == 4


async def test_cancel_keeps_checkpoints_and_resume_finishes_the_run(client, dataset_dir, env, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.15")
    submitted = await invoke(["train", str(dataset_dir), "--force", "--name", "spyke", "--steps", "8", "--save-every", "2",
                              "--engine", "kohya", "--detach", "--json", "--url", url(client)], env)
    run = json.loads(submitted.output)
    for _ in range(400):  # until the first checkpoint is saved
        status = await (await client.get(f"/loras/{run['id']}/status")).json()
        if status["checkpoints"]:
            break
        await asyncio.sleep(0.025)

    cancelled = await invoke(["cancel", "spyke", "--url", url(client)], env)
    assert cancelled.exit_code == 0, cancelled.output
    stopped = await wait_run(client, run["id"], {"cancelled"})
    assert stopped["checkpoints"]

    shown = await invoke(["status", run["id"], "--url", url(client)], env)
    assert shown.exit_code == 1  # a cancelled run is not a success
    assert f"sidecar loras resume {run['id']}" in shown.output

    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.01")
    resumed = await invoke(["resume", "spyke", "--url", url(client), "--poll-interval", "0.02"], env)
    assert resumed.exit_code == 0, resumed.output
    assert (await wait_run(client, run["id"], {"succeeded"}))["step"] == 8


async def test_refusals_have_their_exit_codes(client, dataset_dir, env, tmp_path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = await invoke(["train", str(empty), "--name", "spyke", "--url", url(client)], env)
    assert bad.exit_code == 2 and "dataset_invalid" in bad.output

    down = await invoke(["runs", "--url", "http://127.0.0.1:9"], env)
    assert down.exit_code == 3 and "sidecar serve" in down.output

    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.2")
    first = await invoke(["train", str(dataset_dir), "--force", "--name", "a", "--steps", "50", "--engine", "kohya",
                          "--detach", "--url", url(client)], env)
    assert first.exit_code == 0, first.output
    second = await invoke(["train", str(dataset_dir), "--force", "--name", "b", "--engine", "kohya", "--url", url(client)], env)
    assert second.exit_code == 4 and "training_in_progress" in second.output
    listed = await invoke(["runs", "--url", url(client)], env)
    assert listed.exit_code == 0 and listed.output.startswith("a (")
    assert (await invoke(["cancel", "a", "--url", url(client)], env)).exit_code == 0


async def test_list_shows_installed_loras_with_their_metadata(client, settings, env) -> None:
    loras_dir = settings.models_path / "loras"
    loras_dir.mkdir(parents=True)
    save_file({"lora_unet_x.alpha": np.array(16.0, dtype=np.float32)}, str(loras_dir / "spyke_plasma_v1.safetensors"),
              metadata={"ss_trigger_word": "spyke_plasma_v1", "ss_steps": "800", "ss_network_dim": "32",
                        "ss_network_alpha": "16.0"})
    result = await invoke(["list", "--url", url(client)], env)
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["spyke_plasma_v1", "trigger", "spyke_plasma_v1,", "steps", "800,", "dim", "32,",
                                     "alpha", "16.0"]

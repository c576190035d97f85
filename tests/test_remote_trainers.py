"""ai-toolkit and kohya's SDXL on other machines, through the daemon's API: the in-process SSH host and the fake
vast.ai server run the stand-ins (tests/fake_ai_toolkit.py, tests/fake_trainer.py as sdxl_train_network.py).
Each run ends in a final state with a reason (success, crash, cancel, a trainer that vanished, a missing
install), its checkpoints and samples pulled byte for byte, nothing left running there."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.fake_ssh_host import install_ai_toolkit
from tests.fake_vast import FakeVast
from tests.remote_fixtures import (  # noqa: F401  (fixtures)
    app_client,
    client_key,
    dataset,
    hold_trainer,
    make_settings,
    remote_settings,
    ssh_host,
    submit,
    trainer_env,
    wait_run,
)

SSH = {"provider": "ssh"}
VAST = {"provider": "vast"}
ENDED = {"succeeded", "failed", "cancelled"}
FLUX = {"trainer": "ai-toolkit", "family": "flux", "baseModel": "black-forest-labs/FLUX.1-dev"}
KEY = "vast-test-key-0123456789"


@pytest.fixture
def aitk_env(trainer_env, tmp_path):
    trainer_env.update(FAKE_AITK_STEP_SECONDS="0.03", FAKE_AITK_ARGV_FILE=str(tmp_path / "aitk.json"))
    return trainer_env


@pytest.fixture
async def vast(tmp_path: Path, aitk_env):
    fake = await FakeVast(tmp_path / "vast", KEY, aitk_env).start()
    yield fake
    left = await fake.close()
    assert not left, f"instances left running on the fake vast.ai: {left}"


async def nothing_left(host, within: float = 3.0) -> None:
    """No process of the run is left on the host (a command the daemon ran as the run ended may take a moment)."""
    for _ in range(int(within / 0.05)):
        if not host.processes():
            return
        await asyncio.sleep(0.05)
    assert not host.processes(), [open(f"/proc/{p}/cmdline").read() for p in host.processes()]


async def ssh_client(aiohttp_client, tmp_path, client_key, host):
    return await app_client(aiohttp_client, make_settings(tmp_path, remote_settings(tmp_path, client_key, host)))


async def test_an_ai_toolkit_flux_run_on_an_ssh_host_pulls_checkpoints_and_samples(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, aitk_env) -> None:
    install_ai_toolkit(ssh_host.home)
    client = await ssh_client(aiohttp_client, tmp_path, client_key, ssh_host)
    run = await submit(client, dataset, SSH, samplePrompts=["spyke_plasma_v1, smiling"], **FLUX)
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == 6 and done["loss"]["last"] is not None
    there = ssh_host.home / "plasma-runs" / f"plasma-sidecar-run-{run['id']}" / "output" / "spyke"
    assert Path(done["finalFile"]).read_bytes() == (there / "spyke.safetensors").read_bytes()
    ckpts = {c["step"]: c for c in done["checkpoints"]}
    assert sorted(ckpts) == [2, 4, 6]
    for step in (2, 4):
        assert Path(ckpts[step]["path"]).read_bytes() == (there / f"spyke_{step:09d}.safetensors").read_bytes()
    for step in (2, 4, 6):  # ai-toolkit samples after a save: pulled with the next one or at the end
        assert len(ckpts[step]["samples"]) == 1, ckpts[step]
    got = await client.get(f"/loras/{run['id']}/samples/{ckpts[2]['samples'][0]}")
    assert got.status == 200 and (await got.read()) == (there / "samples" / ckpts[2]["samples"][0]).read_bytes()
    config = json.loads(Path(aitk_env["FAKE_AITK_ARGV_FILE"]).read_text())["config"]
    p = config["config"]["process"][0]
    assert p["training_folder"].startswith(str(ssh_host.home)) and p["model"]["name_or_path"] == FLUX["baseModel"]
    assert done["remote"]["state"] == "destroyed" and not ssh_host.processes()


async def test_an_ssh_host_without_ai_toolkit_fails_at_once_naming_what_is_missing(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, aitk_env) -> None:
    client = await ssh_client(aiohttp_client, tmp_path, client_key, ssh_host)
    run = await submit(client, dataset, SSH, **FLUX)
    done = await wait_run(client, run["id"], ENDED, timeout=15)
    assert done["status"] == "failed" and done["error"]["details"]["reason"] == "ai_toolkit_missing"
    assert "ai-toolkit/run.py" in done["error"]["message"] and "aiToolkitDir" in done["error"]["message"]


async def test_an_ai_toolkit_trainer_that_vanishes_on_the_host_fails_the_run(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, aitk_env) -> None:
    install_ai_toolkit(ssh_host.home)
    aitk_env["FAKE_AITK_STEP_SECONDS"] = "0.2"
    client = await ssh_client(aiohttp_client, tmp_path, client_key, ssh_host)
    run = await submit(client, dataset, SSH, **FLUX)
    await wait_run(client, run["id"], lambda b: b["step"] >= 1 or b["status"] in ENDED)
    ssh_host.kill_all()  # the OOM killer, a reboot: no exit status is ever written
    done = await wait_run(client, run["id"], ENDED, timeout=20)
    assert done["status"] == "failed" and done["error"]["details"]["reason"] == "trainer_vanished"
    assert "ai-toolkit's run.py stopped on the machine" in done["error"]["message"]
    assert done["remote"]["state"] == "destroyed"
    await nothing_left(ssh_host)


async def test_a_cancelled_ai_toolkit_run_on_an_ssh_host_stops_there_and_keeps_its_checkpoints(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, aitk_env) -> None:
    install_ai_toolkit(ssh_host.home)
    aitk_env["FAKE_AITK_STEP_SECONDS"] = "0.15"
    client = await ssh_client(aiohttp_client, tmp_path, client_key, ssh_host)
    run = await submit(client, dataset, SSH, **FLUX)
    await wait_run(client, run["id"], lambda b: b["checkpoints"] or b["status"] in ENDED)
    await client.post(f"/loras/{run['id']}/cancel")
    done = await wait_run(client, run["id"], ENDED, timeout=20)
    assert done["status"] == "cancelled" and [c["step"] for c in done["checkpoints"]][:1] == [2]
    await nothing_left(ssh_host)


async def test_ai_toolkit_on_vast_installs_it_by_onstart_trains_and_destroys_the_instance(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    run = await submit(client, dataset, VAST, samplePrompts=["spyke_plasma_v1, a"], **FLUX)
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "succeeded", done["error"]
    onstart = next(iter(vast.onstart.values()))
    assert "github.com/ostris/ai-toolkit" in onstart and "sd-scripts" not in onstart
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6] and all(c["samples"] for c in done["checkpoints"])
    assert done["remote"]["state"] == "destroyed"


async def test_an_ai_toolkit_crash_on_vast_fails_the_run_and_destroys_the_instance(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset, aitk_env) -> None:
    aitk_env["FAKE_AITK_CRASH_AT"] = "4"
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    run = await submit(client, dataset, VAST, **FLUX)
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "failed" and done["error"]["details"]["reason"] == "crash"
    assert "CUDA out of memory" in done["error"]["message"]
    assert done["remote"]["state"] == "destroyed"


async def test_a_kohya_sdxl_run_on_vast_uses_sdxl_train_network(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset, trainer_env) -> None:
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    run = await submit(client, dataset, VAST, trainer="kohya", family="sdxl")
    done = await wait_run(client, run["id"], ENDED)
    assert done["status"] == "succeeded", done["error"]
    argv = json.loads(Path(trainer_env["FAKE_KOHYA_ARGV_FILE"]).read_text())
    assert "--no_half_vae" in argv and "--resolution=1024,1024" in argv and "--mixed_precision=fp16" in argv
    script = next(p for p in (tmp_path / "vast").rglob("train.sh"))
    assert "sdxl_train_network.py" in script.read_text()


# -- the CLI -----------------------------------------------------------------------------------------------
async def invoke(args: list[str], env: dict[str, str]):
    from click.testing import CliRunner

    from sidecar.loras.cli import loras

    # The CLI runs its own event loop: give it a thread while this loop serves the daemon and the fakes.
    return await asyncio.to_thread(CliRunner().invoke, loras, args, env=env, catch_exceptions=False)


async def test_the_cli_plans_then_trains_an_ai_toolkit_flux_lora_on_vast(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    url = str(client.make_url("")).rstrip("/")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    args = ["train", str(dataset), "--force", "--name", "spyke", "--trainer", "ai-toolkit", "--family", "flux", "--remote",
            "vast", "--steps", "6", "--save-every", "2", "--sample-prompt", "spyke_plasma_v1, smiling", "--url", url]
    plan = await invoke([*args, "--estimate"], env)
    assert plan.exit_code == 0, plan.output
    out = plan.output
    assert "GPU memory (flux, ai-toolkit):" in out and "nothing was rented" in out
    assert " 24 GB: fits with the 8-bit quantized base" in out and " 16 GB: refused" in out
    assert "24 GB" in out.split("offer: ")[1].splitlines()[0]  # the offer holds the run: 24 GB at least
    assert vast.instances == {}
    result = await invoke([*args, "--poll-interval", "0.05"], env)
    assert result.exit_code == 0, result.output
    assert "final LoRA:" in result.output
    assert ["github.com/ostris/ai-toolkit" in o for o in vast.onstart.values()] == [True]
    runs = (await (await client.get("/loras/runs")).json())["runs"]
    assert runs[0]["status"] == "succeeded" and runs[0]["params"]["baseModel"] == "black-forest-labs/FLUX.1-dev"
    assert [c["step"] for c in runs[0]["checkpoints"]] == [2, 4, 6]


async def test_the_cli_trains_an_sdxl_lora_with_kohya_on_vast(
        aiohttp_client, tmp_path: Path, client_key, vast, dataset) -> None:
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    url = str(client.make_url("")).rstrip("/")
    result = await invoke(["train", str(dataset), "--force", "--name", "spyke", "--trainer", "kohya", "--family", "sdxl",
                           "--remote", "vast", "--steps", "6", "--save-every", "2", "--url", url,
                           "--poll-interval", "0.05"], {"XDG_CONFIG_HOME": str(tmp_path / "cfg")})
    assert result.exit_code == 0, result.output
    runs = (await (await client.get("/loras/runs")).json())["runs"]
    assert runs[0]["status"] == "succeeded" and runs[0]["params"]["family"] == "sdxl"
    assert runs[0]["params"]["resolution"] == 1024


async def test_a_daemon_stopped_while_ai_toolkit_trains_on_an_ssh_host_follows_it_again_at_the_next_start(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, aitk_env) -> None:
    install_ai_toolkit(ssh_host.home)
    aitk_env["FAKE_AITK_STEP_SECONDS"] = "0.1"
    gate = hold_trainer(aitk_env, 2, "AITK")  # past its first checkpoint, until the daemon is back
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, SSH, steps=12, **FLUX)
    await wait_run(client, run["id"], lambda b: b["checkpoints"] or b["status"] in ENDED)
    await client.close()  # the daemon stops mid-run: the trainer goes on there, detached
    client = await app_client(aiohttp_client, settings)
    gate.touch()
    done = await wait_run(client, run["id"], ENDED, timeout=60)
    assert done["status"] == "succeeded", done["error"]
    assert done["remote"]["reattached"] >= 1 and done["step"] == 12
    assert sum("setsid nohup" in c for c in ssh_host.commands) == 1, "started once, followed again"
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6, 8, 10, 12]
    await nothing_left(ssh_host)

"""Remote training on an SSH host, through the daemon's API: the machine is an in-process asyncssh server
whose commands run the fake kohya trainer. The run looks like a local one (status, steps, loss,
checkpoints, final LoRA), the LoRA installed here is byte-identical to the one on the machine, and
nothing is left running there on any ending."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from sidecar.training import manager, remote_files
from sidecar.training.lora_metadata import read_lora_metadata
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


async def test_a_run_on_an_ssh_host_trains_pulls_every_checkpoint_and_installs_the_same_lora(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env) -> None:
    client = await app_client(aiohttp_client, make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host)))
    run = await submit(client, dataset, SSH)
    assert run["engine"] == "remote" and run["remote"]["provider"] == "ssh"
    done = await wait_run(client, run["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done
    assert done["step"] == 6 and done["total"] == 6 and done["loss"]["last"] is not None
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6]
    # Installed here exactly as on the machine, with kohya's metadata.
    there = ssh_host.home / "plasma-runs" / f"plasma-sidecar-run-{run['id']}" / "output"
    final = Path(done["finalFile"])
    assert final.read_bytes() == (there / "spyke.safetensors").read_bytes()
    for c in done["checkpoints"]:
        assert Path(c["path"]).read_bytes() == (there / c["fileName"]).read_bytes()
    # The newest training state came along too (what a resume on another machine starts from).
    assert (final.parent / "spyke-step00000006-state" / "train_state.json").is_file()
    # ... and only the newest, as kohya keeps them there (--save_last_n_steps_state): each holds the optimizer.
    assert [p.name for p in final.parent.glob("spyke-step*-state")] == ["spyke-step00000006-state"]
    assert read_lora_metadata(final)["modelspec.trigger_phrase"] == "spyke_plasma_v1"
    # The canonical arguments of a local kohya run, on CUDA: fp16 and sdpa.
    argv = json.loads(Path(trainer_env["FAKE_KOHYA_ARGV_FILE"]).read_text())
    assert "--mixed_precision=fp16" in argv and "--sdpa" in argv and "--network_dim=32" in argv
    assert any(a.startswith("--train_data_dir=") and str(ssh_host.home) in a for a in argv)
    remote = done["remote"]
    assert remote["state"] == "destroyed" and remote["costSoFar"] == 0 and remote["instances"] == 1
    assert any("steps:" in line or "saving" in line for line in done["logTail"]) or done["logTail"]
    assert not ssh_host.processes()


async def test_a_dropped_ssh_connection_reattaches_without_restarting_training(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env) -> None:
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.15"
    client = await app_client(aiohttp_client, make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host)))
    run = await submit(client, dataset, SSH, steps=8)
    await wait_run(client, run["id"], lambda b: b["step"] >= 2)
    assert ssh_host.drop_connections() >= 1  # the network drops; the trainer there goes on
    done = await wait_run(client, run["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "succeeded", done["error"]
    assert done["remote"]["reattached"] >= 1
    assert sum("setsid nohup" in c for c in ssh_host.commands) == 1, "training was started again"
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6, 8]
    assert not ssh_host.processes()


async def test_a_daemon_stop_while_the_finished_run_s_lora_is_pulled_keeps_the_machine_and_pulls_it_next_start(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env, monkeypatch) -> None:
    # The trainer has ended well and the final LoRA is on its way over a slow link when the daemon stops:
    # the machine (on vast.ai, the only copy of that LoRA) is kept, and the next start pulls it.
    monkeypatch.setattr(manager, "STOP_TIMEOUT", 0.5)
    real_fetch, pulling = remote_files.fetch, asyncio.Event()

    async def slow_fetch(shell, remote: str, local: Path):
        if remote.endswith("/spyke.safetensors") and slow:
            pulling.set()
            await asyncio.sleep(3600)
        return await real_fetch(shell, remote, local)

    slow = True
    monkeypatch.setattr(remote_files, "fetch", slow_fetch)
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, SSH)
    await asyncio.wait_for(pulling.wait(), 60)
    await client.close()  # the daemon stops while the final LoRA is being pulled
    slow = False
    client = await app_client(aiohttp_client, settings)
    done = await wait_run(client, run["id"], {"succeeded", "failed", "cancelled", "interrupted"}, timeout=60)
    assert done["status"] == "succeeded", (done["status"], done["error"])
    assert done["remote"]["reattached"] >= 1
    assert sum("setsid nohup" in c for c in ssh_host.commands) == 1, "training was started again"
    assert [c["step"] for c in done["checkpoints"]][-1] == 6
    assert not ssh_host.processes()


async def test_cancel_stops_the_trainer_on_the_host_and_keeps_the_pulled_checkpoints(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env) -> None:
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.2"
    client = await app_client(aiohttp_client, make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host)))
    run = await submit(client, dataset, SSH, steps=40)
    await wait_run(client, run["id"], lambda b: any(c["step"] == 2 for c in b["checkpoints"]))
    resp = await client.post(f"/loras/{run['id']}/cancel")
    assert resp.status == 202
    done = await wait_run(client, run["id"], {"succeeded", "failed", "cancelled"})
    assert done["status"] == "cancelled" and done["step"] < 40
    assert 2 in [c["step"] for c in done["checkpoints"]] and Path(done["checkpoints"][0]["path"]).is_file()
    assert done["remote"]["state"] == "destroyed"
    assert not ssh_host.processes(), "the trainer still runs on the host"


async def test_a_resumed_run_followed_again_after_a_restart_counts_from_its_resume_point(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env) -> None:
    # The one case with an offset: a trainer started with --resume counts only the steps after its resume
    # point, and a daemon that re-attaches to it must add exactly that, not the state it was queued with.
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.15"
    hold_trainer(trainer_env, 4)  # cancelled there, never released
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, SSH, steps=20)
    await wait_run(client, run["id"], lambda b: any(c["step"] == 4 for c in b["checkpoints"]))
    await client.post(f"/loras/{run['id']}/cancel")
    cancelled = await wait_run(client, run["id"], {"cancelled"})
    resumed_from = max(c["step"] for c in cancelled["checkpoints"])
    # The resumed trainer stays at its second checkpoint (waited for below) until the daemon has stopped and
    # started again: it is still training then, however slow the machine.
    gate = hold_trainer(trainer_env, resumed_from + 4)
    assert (await client.post(f"/loras/{run['id']}/resume")).status == 202
    # Past a checkpoint pulled after the resume: the restart queues the run again from that newer state.
    await wait_run(client, run["id"], lambda b: any(c["step"] > resumed_from + 2 for c in b["checkpoints"]))
    await client.close()  # the daemon stops: the trainer goes on there, detached
    client = await app_client(aiohttp_client, settings)
    gate.touch()
    seen: list[dict] = []

    def ended(body: dict) -> bool:
        seen.append(body)
        return body["status"] in {"succeeded", "failed", "cancelled"}

    done = await wait_run(client, run["id"], ended, timeout=60)
    assert done["status"] == "succeeded", done["error"]
    assert done["remote"]["reattached"] >= 1
    assert sum("setsid nohup" in c for c in ssh_host.commands) == 2, "one start, one resume, nothing else"
    assert done["step"] == 20 and done["total"] == 20
    off = [(b["step"], b["total"]) for b in seen if b["total"] != 20 or b["step"] > 20]
    assert not off, off[:5]
    assert all(c["step"] <= 20 for c in done["checkpoints"])
    assert not ssh_host.processes()


async def test_a_daemon_stop_that_outwaits_a_long_pull_leaves_the_trainer_going_and_follows_it_again(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env, monkeypatch) -> None:
    # A big checkpoint on a slow link: the stop's wait (STOP_TIMEOUT) runs out mid-pull and the run's task is
    # cancelled. That is a stop like any other: the trainer keeps going there and the next start follows it.
    monkeypatch.setattr(manager, "STOP_TIMEOUT", 0.5)
    real_fetch, pulling = remote_files.fetch, asyncio.Event()

    async def slow_fetch(shell, remote: str, local: Path):
        if remote.endswith("step00000004.safetensors") and slow:
            pulling.set()
            await asyncio.sleep(3600)  # the link crawls: only the daemon's stop ends this
        return await real_fetch(shell, remote, local)

    slow = True
    monkeypatch.setattr(remote_files, "fetch", slow_fetch)
    gate = hold_trainer(trainer_env, 6)
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, SSH, steps=8)
    await asyncio.wait_for(pulling.wait(), 60)
    await client.close()  # the daemon stops while checkpoint 4 is being pulled
    assert ssh_host.processes(), "the stop killed the trainer"
    slow = False
    client = await app_client(aiohttp_client, settings)
    gate.touch()
    done = await wait_run(client, run["id"], {"succeeded", "failed", "cancelled", "interrupted"}, timeout=60)
    assert done["status"] == "succeeded", (done["status"], done["error"])
    assert done["remote"]["reattached"] >= 1
    assert sum("setsid nohup" in c for c in ssh_host.commands) == 1, "training was started again"
    assert [c["step"] for c in done["checkpoints"]] == [2, 4, 6, 8]
    assert not ssh_host.processes()

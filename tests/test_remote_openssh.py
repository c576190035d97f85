"""Remote training with the `ssh` provider against the system's OpenSSH server (tests/openssh_host.py), which
checks host keys and client keys as a real machine does and runs every command in the login's own shell:
a run end to end, the start-up reaper finding a trainer left running there, a host key that is not
trusted and a key the host does not take (the run fails with the reason and nothing is started there),
and a run followed again after the daemon was killed, reporting the trainer's own step counts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from sidecar.doctor.remote import check_remote
from sidecar.remote.machine import launch_command
from sidecar.remote.provider import label_for
from sidecar.config.remote import RemoteSettings, SshSettings
from sidecar.remote.ssh import SshProvider
from sidecar.remote.shell import q
from tests.conftest_comfy import free_port
from tests.fake_ssh_host import make_keypair
from tests.openssh_host import OpenSshHost
from tests.processes import wait_up
from tests.remote_fixtures import (  # noqa: F401  (fixtures)
    POLL,
    app_client,
    dataset,
    make_settings,
    submit,
    trainer_env,
    wait_run,
)

SSH = {"provider": "ssh"}
ENDED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def openssh(tmp_path: Path, trainer_env):
    host = OpenSshHost(tmp_path / "openssh", trainer_env).start()
    yield host
    left = host.close()
    assert not left, f"processes left running on the OpenSSH host: {left}"


def ssh_settings(tmp_path: Path, host: OpenSshHost, **over) -> SshSettings:
    fields = {"host": f"{host.user}@127.0.0.1", "port": host.port, "identity_file": host.client_key,
              "known_hosts": host.known_hosts(tmp_path / "known_hosts"), "kohya_dir": host.kohya_dir,
              "python": host.python, "work_dir": host.work_dir, **over}
    return SshSettings(**fields)


def settings_for(tmp_path: Path, host: OpenSshHost, **over):
    remote = RemoteSettings(ssh=ssh_settings(tmp_path, host, **over), poll_interval=POLL, stale_after=1.0,
                            status_interval=0.3)
    return make_settings(tmp_path, remote)


async def test_a_run_on_the_openssh_host_trains_pulls_and_leaves_nothing_running(
        aiohttp_client, tmp_path: Path, openssh: OpenSshHost, dataset) -> None:
    client = await app_client(aiohttp_client, settings_for(tmp_path, openssh))
    run = await submit(client, dataset, SSH)
    done = await wait_run(client, run["id"], ENDED, timeout=60)
    assert done["status"] == "succeeded", done["error"]
    assert done["step"] == 6 and done["total"] == 6
    assert [c["step"] for c in done["checkpoints"] if not c.get("final")] == [2, 4, 6]
    there = Path(openssh.work_dir) / label_for(run["id"]) / "output"
    assert Path(done["finalFile"]).read_bytes() == (there / "spyke.safetensors").read_bytes()
    assert done["remote"]["state"] == "destroyed" and done["remote"]["instances"] == 1
    assert openssh.starts == 1
    assert not openssh.processes()


async def test_the_reaper_finds_a_trainer_left_running_on_the_openssh_host_and_stops_it(
        aiohttp_client, tmp_path: Path, openssh: OpenSshHost, dataset) -> None:
    settings = settings_for(tmp_path, openssh)
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, SSH, steps=2, saveEveryNSteps=2)
    done = await wait_run(client, run["id"], ENDED, timeout=60)
    assert done["status"] == "succeeded", done["error"]
    await client.close()
    # A trainer of that run still going in its folder (a daemon killed as it started it, say), started as
    # the daemon starts one: its own session, its process group in `pid`.
    folder = f"{openssh.work_dir}/{label_for(run['id'])}"
    provider = SshProvider(settings.remote.ssh)
    shell = await provider.shell(None, None)
    try:
        await shell.run(f"mkdir -p {q(folder)} && printf 'echo $$ > pid\\nexec sleep 300\\n' > {q(folder)}/train.sh")
        await shell.run(launch_command(folder))
    finally:
        await shell.close()
    assert openssh.processes()
    listed = await provider.list_instances()
    assert [(i.id, i.label) for i in listed] == [(folder, label_for(run["id"]))]
    client = await app_client(aiohttp_client, settings)  # the next start: the reaper
    after = await wait_run(client, run["id"], lambda b: any("reaper" in w for w in b["warnings"]), timeout=30)
    assert after["status"] == "succeeded"
    for _ in range(100):
        if not openssh.processes():
            break
        await asyncio.sleep(0.1)
    assert not openssh.processes(), "the leftover trainer still runs"
    assert await provider.list_instances() == []


@pytest.mark.parametrize("refusal", ["untrusted_host_key", "wrong_identity_file"])
async def test_a_host_that_refuses_the_login_fails_the_run_with_the_reason_and_nothing_is_started(
        aiohttp_client, tmp_path: Path, openssh: OpenSshHost, dataset, refusal: str) -> None:
    if refusal == "untrusted_host_key":
        over = {"known_hosts": tmp_path / "empty_known_hosts"}
        over["known_hosts"].write_text("")
        code, reason, words = "remote_unavailable", "host_key_untrusted", "host key not trusted"
    else:
        over = {"identity_file": make_keypair(tmp_path / "other-keys")}  # a key the host never saw
        code, reason, words = "remote_unavailable", "permission_denied", f"permission denied for user {openssh.user}"
    client = await app_client(aiohttp_client, settings_for(tmp_path, openssh, **over))
    run = await submit(client, dataset, SSH)
    done = await wait_run(client, run["id"], ENDED, timeout=60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == code, done["error"]
    assert words in done["error"]["message"]
    assert done["error"]["details"]["reason"] == reason
    if refusal == "untrusted_host_key":
        assert f"ssh-keyscan -p {openssh.port} 127.0.0.1 >> " in done["error"]["message"]
    else:
        assert "identity_file" in done["error"]["message"]
    assert done["remote"]["state"] == "failed" and done["remote"]["message"] == done["error"]["message"]
    assert openssh.starts == 0 and not openssh.processes()
    assert list(Path(openssh.work_dir).iterdir()) == [], "something was made on the host"


def start_daemon(tmp_path: Path, port: int, ssh: SshSettings) -> subprocess.Popen[bytes]:
    settings = make_settings(tmp_path, RemoteSettings(ssh=ssh))  # makes the base model
    config = tmp_path / "sidecar.toml"
    config.write_text(
        f'comfyui_url = "http://127.0.0.1:9"\nmodels_dir = "{settings.models_path}"\n\n[remote]\npoll_interval = 0.05\n'
        f'stale_after = 1.0\nstatus_interval = 0.5\n\n[remote.ssh]\nhost = "{ssh.host}"\nport = {ssh.port}\n'
        f'identity_file = "{ssh.identity_file}"\nknown_hosts = "{ssh.known_hosts}"\nkohya_dir = "{ssh.kohya_dir}"\n'
        f'python = "{ssh.python}"\nwork_dir = "{ssh.work_dir}"\n')
    with (tmp_path / "daemon.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--data-dir",
                                 str(tmp_path / "data"), "--config", str(config)], env=dict(os.environ),
                                stdout=log, stderr=subprocess.STDOUT)


async def test_a_run_followed_again_after_the_daemon_was_killed_reports_the_trainers_own_steps(
        tmp_path: Path, trainer_env, dataset) -> None:
    steps, every = 30, 4
    trainer_env["FAKE_KOHYA_STEP_SECONDS"] = "0.25"
    host = OpenSshHost(tmp_path / "openssh", trainer_env).start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    seen: list[dict] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            proc = start_daemon(tmp_path, port, ssh_settings(tmp_path, host))
            try:
                await wait_up(http, url, proc)
                async with http.post(f"{url}/loras/train", json={
                        "datasetDir": str(dataset), "outputName": "spyke", "steps": steps, "saveEveryNSteps": every, "force": True,
                        "remote": SSH}) as resp:
                    assert resp.status == 202, await resp.text()
                    run_id = (await resp.json())["id"]
                # Killed once a checkpoint (and its state) was pulled: the restart queues the run again with
                # that state as its resume point, though the trainer there never restarted from it.
                await poll(http, url, run_id, lambda b: any(c["step"] == every for c in b["checkpoints"]))
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
                assert host.processes(), "the trainer stopped with the daemon"
                proc = start_daemon(tmp_path, port, ssh_settings(tmp_path, host))
                await wait_up(http, url, proc)
                done = await poll(http, url, run_id, lambda b: b["status"] in ENDED, seen, timeout=120)
            finally:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        assert done["status"] == "succeeded", (done["error"], (tmp_path / "daemon.log").read_text()[-3000:])
        assert done["remote"]["reattached"] >= 1 and host.starts == 1, "training was started again"
        assert done["step"] == steps and done["total"] == steps
        off = [(b["status"], b["step"], b["total"]) for b in seen if b["total"] != steps or b["step"] > steps]
        assert not off, f"{len(off)} of {len(seen)} statuses after the restart are off: {off[:5]}"
        steps_listed = [c["step"] for c in done["checkpoints"]]
        assert steps_listed == list(range(every, steps + 1, every)) + [steps], done["checkpoints"]
        assert [c["step"] for c in done["checkpoints"] if c.get("final")] == [steps]
        assert not host.processes()
    finally:
        left = host.close()
    assert not left


async def poll(http: aiohttp.ClientSession, url: str, run_id: str, done, seen: list | None = None,
               timeout: float = 60) -> dict:
    body: dict = {}
    for _ in range(int(timeout / 0.1)):
        async with http.get(f"{url}/loras/{run_id}/status") as resp:
            body = await resp.json()
        if seen is not None and body.get("status") == "running":
            seen.append(body)
        if done(body):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} never got there: {json.dumps(body)[:2000]}")


async def test_doctor_names_the_fix_when_the_openssh_host_refuses_the_login(tmp_path: Path,
                                                                          openssh: OpenSshHost) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    checks = await check_remote(settings_for(tmp_path, openssh, known_hosts=empty))
    check = next(c for c in checks if c.name == "SSH training host")
    assert check.status == "warn" and "host key not trusted" in check.detail
    assert check.fix == f"ssh-keyscan -p {openssh.port} 127.0.0.1 >> {empty}"
    checks = await check_remote(settings_for(tmp_path, openssh))
    check = next(c for c in checks if c.name == "SSH training host")
    assert check.status == "ok", check

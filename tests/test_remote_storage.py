"""Remote training with `[storage]`: after `sidecar sync push datasets`, a run on the SSH host (the
in-process asyncssh machine with the fake kohya trainer) fetches its dataset from the bucket (moto's S3
server, through s3fs on the machine) and sends every checkpoint back through it; the daemon downloads them
from the bucket, byte-identical. The machine's own environment carries other, wrong AWS keys: only the
credentials handed to the run (an owner-only file in its folder, removed at the end) work there. Without
storage, the run is as before (tests/test_remote_ssh.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sidecar.config.storage import StorageSettings
from tests.remote_fixtures import (  # noqa: F401  (fixtures)
    app_client,
    client_key,
    dataset,
    make_settings,
    remote_settings,
    ssh_host,
    submit,
    trainer_env,
    wait_run,
)
from tests.storage_fixtures import make_store, s3_server  # noqa: F401
from tests.test_storage_sync import Machine, remote_files

pytestmark = pytest.mark.timeout(120)


async def test_a_remote_run_trains_from_the_bucket_and_its_checkpoints_come_back_through_it(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env, s3_server, request,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = make_store("s3", request, tmp_path)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    # What the machine would have of its own: keys the store does not know. The run must not rely on them.
    trainer_env.update({"AWS_ACCESS_KEY_ID": "AKIAMACHINEOWNKEY000", "AWS_SECRET_ACCESS_KEY": "machine-own-wrong",
                        "AWS_ENDPOINT_URL": s3_server.endpoint})
    caplog.set_level(logging.INFO)

    pushed = Machine(tmp_path / "laptop", store).sync("push", "datasets", str(dataset))
    assert pushed.exit_code == 0, pushed.output

    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))
    settings = settings.model_copy(update={"storage": StorageSettings(url=store.url)})
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, {"provider": "ssh"})
    done = await wait_run(client, run["id"], {"succeeded", "failed", "cancelled"}, timeout=90)
    assert done["status"] == "succeeded", done
    assert not [w for w in done["warnings"] if "SSH" in w or "storage" in w], done["warnings"]

    rdir = ssh_host.home / "plasma-runs" / f"plasma-sidecar-run-{run['id']}"
    plan = json.loads((rdir / "bucket-dataset.json").read_text())
    assert sorted(key for key, _, _ in plan["files"]) == sorted(f"datasets/dataset/{p.name}" for p in dataset.iterdir())
    for key, dest, _ in plan["files"]:  # the files kohya read there are the bucket's
        assert Path(dest).read_bytes() == (dataset / key.rsplit("/", 1)[-1]).read_bytes()

    through = remote_files(store, f"runs/{run['id']}")
    assert {c["fileName"] for c in done["checkpoints"]} | {"spyke.safetensors"} == set(through)
    for c in done["checkpoints"]:
        assert Path(c["path"]).read_bytes() == through[c["fileName"]] == (rdir / "output" / c["fileName"]).read_bytes()
    assert Path(done["finalFile"]).read_bytes() == through["spyke.safetensors"]
    assert "through the bucket failed" not in caplog.text

    # The credentials were the run's only: gone from the machine at its end, never on a command line,
    # in the log or in an answer.
    assert not (rdir / ".sidecar-storage").exists()
    secret = store.env["AWS_SECRET_ACCESS_KEY"]
    assert not any(secret in c for c in ssh_host.commands)
    assert secret not in caplog.text and secret not in json.dumps(done)
    assert not ssh_host.processes()

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
from tests.storage_fixtures import gcs_emulator, make_store, s3_server  # noqa: F401
from tests.test_storage_sync import Machine, remote_files

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
async def test_a_remote_run_trains_from_the_bucket_and_its_checkpoints_come_back_through_it(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env, request,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, scheme: str) -> None:
    """s3: moto's server; gs: gcp-storage-emulator, reached by the machine through the STORAGE_EMULATOR_HOST
    handed over with the run (gcsfs there, anonymous against the emulator as here)."""
    store = make_store(scheme, request, tmp_path)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    # What the machine would have of its own: credentials the store does not know. The run must not rely on them.
    if scheme == "s3":
        trainer_env.update({"AWS_ACCESS_KEY_ID": "AKIAMACHINEOWNKEY000", "AWS_SECRET_ACCESS_KEY": "machine-own-wrong",
                            "AWS_ENDPOINT_URL": request.getfixturevalue("s3_server").endpoint})
    else:  # a key file that is not there: gcsfs would fail loudly if the handed-over env did not clear it
        trainer_env.update({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "machine-own-missing.json")})
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
    # gcp-storage-emulator drops a CR that ends an uploaded file (tests/storage_fixtures.py `blob`; real GCS
    # keeps it): such a file fails its sha256 check here and comes over SSH instead, as it should.
    quirk = [n for n in through if scheme == "gs" and (rdir / "output" / n).read_bytes().endswith(b"\r")]
    for c in done["checkpoints"]:
        there = (rdir / "output" / c["fileName"]).read_bytes()
        assert Path(c["path"]).read_bytes() == there
        assert c["fileName"] in quirk or through[c["fileName"]] == there
    assert Path(done["finalFile"]).read_bytes() == (rdir / "output" / "spyke.safetensors").read_bytes()
    assert "spyke.safetensors" in quirk or through["spyke.safetensors"] == Path(done["finalFile"]).read_bytes()
    assert quirk or "through the bucket failed" not in caplog.text

    # The credentials were the run's only: gone from the machine at its end, never on a command line,
    # in the log or in an answer.
    assert not (rdir / ".sidecar-storage").exists()
    for secret in store.secrets:
        assert not any(secret in c for c in ssh_host.commands)
        assert secret not in caplog.text and secret not in json.dumps(done)
    assert not ssh_host.processes()


async def test_a_dataset_not_pushed_goes_over_ssh_and_the_run_says_which_push_would_have_saved_it(
        aiohttp_client, tmp_path: Path, client_key, ssh_host, dataset, trainer_env, s3_server, request,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store("s3", request, tmp_path)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value) if value else monkeypatch.delenv(name, raising=False)
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))
    settings = settings.model_copy(update={"storage": StorageSettings(url=store.url)})
    client = await app_client(aiohttp_client, settings)
    run = await submit(client, dataset, {"provider": "ssh"}, steps=2)
    done = await wait_run(client, run["id"], {"succeeded", "failed", "cancelled"}, timeout=90)
    assert done["status"] == "succeeded", done
    warning = next(w for w in done["warnings"] if "sent over SSH" in w)
    assert f"{len(list(dataset.iterdir()))} dataset file(s)" in warning
    assert f"sidecar sync push datasets {dataset}" in warning
    rdir = ssh_host.home / "plasma-runs" / f"plasma-sidecar-run-{run['id']}"
    assert not (rdir / "bucket-dataset.json").exists()
    # The checkpoints still came through the bucket.
    assert "spyke.safetensors" in remote_files(store, f"runs/{run['id']}")


async def test_the_handed_over_credentials_are_owner_only_and_never_on_a_command_line(
        tmp_path: Path, client_key, ssh_host, monkeypatch: pytest.MonkeyPatch) -> None:
    from sidecar.remote.shell import Endpoint, Shell
    from sidecar.training.remote.bucket import prepare
    from tests.remote_fixtures import known_hosts_for

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # A service-account key file as Google issues them (a fresh RSA key): gcsfs loads it without a request.
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    key = tmp_path / "sa.json"
    key.write_text(json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "k1",
                               "private_key": pem, "client_email": "sync@p.iam.gserviceaccount.com",
                               "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    settings = make_settings(tmp_path, remote_settings(tmp_path, client_key, ssh_host))
    settings = settings.model_copy(update={"storage": StorageSettings(url="gs://plasma/team")})
    shell = await Shell.connect(Endpoint("127.0.0.1", ssh_host.port, "artist", client_key,
                                         known_hosts_for(ssh_host, tmp_path / "kh")))
    warnings: list[str] = []
    try:
        rdir = str(ssh_host.home / "plasma-runs" / "run-1")
        bucket = await prepare(settings, shell, rdir, "python3", warnings.append)
    finally:
        await shell.close()
    assert bucket is not None, warnings
    folder = Path(rdir) / ".sidecar-storage"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "env").stat().st_mode & 0o777 == 0o600
    assert (folder / "gcs-key.json").stat().st_mode & 0o777 == 0o600
    assert (folder / "gcs-key.json").read_bytes() == key.read_bytes()
    assert f"GOOGLE_APPLICATION_CREDENTIALS={folder / 'gcs-key.json'}" in (folder / "env").read_text()
    secret_line = pem.splitlines()[5]
    assert not any(secret_line in c for c in ssh_host.commands)

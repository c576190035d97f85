"""The stores `sidecar sync` is tested against, each a real emulator started on a free port and driven
through the real client library: Google Cloud Storage by `gcp-storage-emulator` (in memory; gcsfs finds it
through STORAGE_EMULATOR_HOST, as Google's own clients do), S3 by moto's server (with IAM authentication on,
so a wrong key is refused as AWS refuses it), and a plain folder for file://.

Each test gets its own prefix in the one bucket, so the module-scoped servers are shared safely.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest_comfy import free_port

BUCKET = "plasma"


@dataclass
class StoreUnderTest:
    scheme: str
    url: str  # the [storage] url of this test's prefix
    env: dict[str, str] = field(default_factory=dict)  # the store's standard environment (credentials, endpoint)
    secrets: tuple[str, ...] = ()  # values that must never be printed or logged

    def fs(self):
        """A filesystem of the test's own to look at the store (not the one under test)."""
        from sidecar.config.storage import StorageSettings
        from sidecar.storage.store import open_store

        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            return open_store(StorageSettings(url=self.url), self.env).fs
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @property
    def root(self) -> str:
        return self.url.split("://", 1)[1] if self.scheme != "file" else self.url.removeprefix("file://")

    def keys(self) -> dict[str, bytes]:
        """Every object under the prefix (hidden ones included) and its bytes."""
        fs = self.fs()
        try:
            found = fs.find(self.root)
        except FileNotFoundError:
            return {}
        return {k[len(self.root) + 1:]: fs.cat_file(k) for k in found}


# AWS's own variables that would point the test at a real account or another endpoint.
CLEARED = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN",
           "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST")


def blob(size: int) -> bytes:
    """Random file contents for the stores. The last byte is fixed: gcp-storage-emulator reads gcsfs's
    multipart/related upload with Python's email parser, which drops a CR that ends the file (real GCS keeps
    every byte), so one random file in 256 would otherwise come back a byte short from the emulator."""
    return os.urandom(size - 1) + b"\x00"


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[str]:
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    import boto3
    from moto import settings as moto_settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # Set up before authentication is switched on: a user allowed S3, its key, the bucket.
    admin = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
             "aws_secret_access_key": "setup"}
    # moto keeps its accounts in the process, across servers: a user of this server's own, and the
    # bucket an earlier test module may have made already.
    iam = boto3.client("iam", **admin)
    user = f"sync-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    s3 = boto3.client("s3", **admin)
    if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=BUCKET)
    old_count, old_requests = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = 0, 0
    try:
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT, ActionAuthenticatorMixin.request_count = old_count, old_requests
        server.stop()


def make_store(scheme: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    base = {name: "" for name in CLEARED}
    base["AWS_CONFIG_FILE"] = base["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-files")
    if scheme == "gs":
        emulator = request.getfixturevalue("gcs_emulator")
        return StoreUnderTest("gs", f"gs://{BUCKET}/{prefix}", {**base, "STORAGE_EMULATOR_HOST": emulator})
    if scheme == "s3":
        s3 = request.getfixturevalue("s3_server")
        return StoreUnderTest("s3", f"s3://{BUCKET}/{prefix}", {
            **base, "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ACCESS_KEY_ID": s3.key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret, "AWS_DEFAULT_REGION": "us-east-1"}, (s3.secret,))
    folder = tmp_path / "nas" / prefix  # a file:// store's folder must exist (a NAS not mounted is refused)
    folder.mkdir(parents=True)
    return StoreUnderTest("file", f"file://{folder}", base)


@pytest.fixture(params=["gs", "s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StoreUnderTest:
    made = make_store(request.param, request, tmp_path)
    for name, value in made.env.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    return made

"""What a remote run's machine gets so that it can reach the bucket, and nothing more: the credentials the
daemon itself uses for this store, as the few environment variables the store's library reads, written
into one owner-only file in the run's folder (never on a command line, never logged) and removed when the
run ends.

- s3://: the access key, secret and session token botocore resolves here (environment, profile, SSO),
  the region and the endpoint. A long-lived key is copied as it is: prefer a session token
  (`aws sts get-session-token`, or SSO) or a key limited to the bucket, so that what sits on a rented
  machine for the run's hours expires or reaches nothing else.
- gs://: the service-account key file GOOGLE_APPLICATION_CREDENTIALS names, copied owner-only. Your own
  `gcloud` login is never copied (it is your whole account): without a key file a gs:// store is used only
  here, and the run's files go over SSH as before. STORAGE_EMULATOR_HOST is passed on.
- file://: nothing; only a machine that sees the same path (an SSH host with the NAS mounted there) can use it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from sidecar.config.storage import StorageSettings

REGION_VARIABLES = ("AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass
class Handover:
    env: dict[str, str] = field(default_factory=dict)
    key_file: Path | None = None  # a GCS service-account file to copy; its path there goes in the env


class NoHandover(Exception):
    """This store's credentials are not ones to give a remote machine (the message says why)."""


def handover_for(storage: StorageSettings, environ: Mapping[str, str]) -> Handover:
    scheme = urlsplit(storage.url or "").scheme
    if scheme == "file":
        return Handover()
    if scheme == "gs":
        out = Handover()
        if environ.get("STORAGE_EMULATOR_HOST"):
            out.env["STORAGE_EMULATOR_HOST"] = environ["STORAGE_EMULATOR_HOST"]
        key = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if key:
            out.key_file = Path(key).expanduser()
        elif not out.env:
            raise NoHandover("a gs:// store is used by a remote machine only with a service-account key file in "
                             "GOOGLE_APPLICATION_CREDENTIALS (your own gcloud login is never copied to it)")
        return out
    import botocore.session

    session = botocore.session.Session()
    creds = session.get_credentials()
    if creds is None:
        raise NoHandover("no AWS credentials are set here (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile "
                         "or SSO)")
    frozen = creds.get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    region = next((environ[v] for v in REGION_VARIABLES if environ.get(v)), None) or session.get_config_variable(
        "region")
    if region:
        env["AWS_DEFAULT_REGION"] = region
    endpoint = storage.endpoint_url or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        env["AWS_ENDPOINT_URL"] = env["SIDECAR_STORAGE_ENDPOINT_URL"] = endpoint
    return Handover(env)


def env_file(env: Mapping[str, str]) -> str:
    """The run's `.sidecar-storage/env`, sourced by each storage command there (`. env && python agent.py`).
    The variables a machine may already have for other stores are cleared first, so the run sees only these."""
    lines = ["# written by plasma-sidecar for one run; removed when it ends",
             "unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN GOOGLE_APPLICATION_CREDENTIALS"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]
    return "\n".join(lines) + "\n"

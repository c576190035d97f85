"""The storage side of a remote run, run ON the training machine by its python (kohya's venv, where the
instance set-up installed fsspec, gcsfs and s3fs): pull the dataset files the daemon listed from the bucket,
and push a checkpoint there. Standalone on purpose: the machine has no sidecar, only this file (uploaded
into the run's folder) and the libraries; its credentials come from the run's scoped environment file
(`.sidecar-storage/env`, sourced by the command that runs this).

    python agent.py pull PLAN.json        # {"url", "endpoint_url", "files": [[key, dest, sha256], ...]}
    python agent.py push URL LOCAL KEY    # prints {"size", "sha256"} of what was uploaded

Downloads go to a temporary name, are checked against their sha256, then renamed into place; a file
already there with its sha256 is not fetched again. Exit 0 ok, 2 refused or failed (one line on stderr).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def open_fs(url: str, endpoint_url: str | None):
    scheme = urlsplit(url).scheme
    if scheme == "file":
        import fsspec

        return fsspec.filesystem("file")
    if scheme == "gs":
        from gcsfs.core import GCSFileSystem  # the JSON API class (see sidecar/storage/store.py)

        token = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or (
            "anon" if os.environ.get("STORAGE_EMULATOR_HOST") else None)
        return GCSFileSystem(token=token, skip_instance_cache=True)
    from s3fs import S3FileSystem

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {}, skip_instance_cache=True)


def key_of(url: str, key: str) -> str:
    parts = urlsplit(url)
    root = unquote(parts.path) if parts.scheme == "file" else f"{parts.netloc}{unquote(parts.path)}"
    return f"{root.rstrip('/')}/{key.lstrip('/')}"


def pull(plan_path: str) -> dict:
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    fs = open_fs(plan["url"], plan.get("endpoint_url"))
    pulled = size = 0
    for key, dest, sha in plan["files"]:
        if os.path.isfile(dest) and sha256_of(dest) == sha:
            continue
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        tmp = f"{dest}.part"
        fs.get_file(key_of(plan["url"], key), tmp)
        if sha256_of(tmp) != sha:
            os.unlink(tmp)
            raise RuntimeError(f"{key} in the store is not the file the daemon listed (sha256 differs)")
        os.replace(tmp, dest)
        pulled += 1
        size += os.path.getsize(dest)
    return {"pulled": pulled, "bytes": size, "files": len(plan["files"])}


def push(url: str, endpoint_url: str | None, local: str, key: str) -> dict:
    fs = open_fs(url, endpoint_url)
    sha = sha256_of(local)
    fs.put_file(local, key_of(url, key))  # one object write: whole or absent in a bucket
    return {"size": os.path.getsize(local), "sha256": sha}


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["pull"] and len(argv) == 2:
            result = pull(argv[1])
        elif argv[:1] == ["push"] and len(argv) == 4:
            result = push(argv[1], os.environ.get("SIDECAR_STORAGE_ENDPOINT_URL"), argv[2], argv[3])
        else:
            print("usage: agent.py pull PLAN.json | push URL LOCAL KEY", file=sys.stderr)
            return 2
    except Exception as exc:  # one line for the daemon's message; never the environment
        print(f"storage agent: {type(exc).__name__}: {str(exc)[:400]}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A remote run with `[storage]` set: the machine pulls the dataset from the bucket and pushes each LoRA
file there, and the daemon fetches them from the bucket, instead of every byte passing through this
machine's uplink over SSH.

- Set-up (`prepare`): the run's folder there gets `.sidecar-storage/` (0700) holding `agent.py`
  (`sidecar/storage/agent.py`, run by the machine's python with fsspec), the scoped credentials
  (`env`, 0600; a GCS key file copied 0600: see `sidecar/storage/handover.py`); the SSH provider removes the
  folder when the run ends (a rented instance is destroyed with it).
- Dataset (`dataset_from_bucket`): each file the run uploads from the training folder that the bucket holds
  as it is here (`<prefix>/datasets/<folder name>/`, same sha256 in the manifest `sidecar sync push`
  wrote) is fetched by the machine, checked by its sha256; any other file goes over SSH as before, with a
  warning naming the push that would have avoided it. The plan (no secrets) stays as `bucket-dataset.json`.
- LoRA files (`fetch_lora`): the machine pushes the checkpoint to `<prefix>/runs/<run id>/<file>`, the
  daemon downloads it from there and checks it against the sha256 the machine computed. If anything in
  that path fails, the file comes over SSH as before (logged).

Without `[storage]`, or when it cannot be used (no credential to hand over, the store refuses), the run
is exactly as before, with a warning saying why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Settings
from sidecar.errors import SidecarError
from sidecar.remote.shell import CommandFailed, Shell, q
from sidecar.remote.state import RemoteState
from sidecar.remote.ssh import STORAGE_DIR  # the folder the SSH provider removes when the run ends
from sidecar.storage import agent
from sidecar.storage.handover import NoHandover, env_file, handover_for
from sidecar.storage.manifest import MANIFEST_NAME, hash_file
from sidecar.storage.store import Store, open_store, translated
from sidecar.storage.sync import read_manifest
from sidecar.training import checkpoints as files
from sidecar.training.spec import TrainJob

log = logging.getLogger("sidecar.training.remote")

PULL_TIMEOUT = 3600.0  # a dataset is tens of MB; a slow link to the bucket still finishes in this


@dataclass
class RunBucket:
    store: Store
    rdir: str
    python: str
    endpoint_url: str | None

    @property
    def folder(self) -> str:
        return f"{self.rdir}/{STORAGE_DIR}"

    def command(self, *args: str) -> str:
        return (f". {q(self.folder + '/env')} && {q(self.python)} {q(self.folder + '/agent.py')} "
                + " ".join(q(a) for a in args))


async def prepare(settings: Settings, shell: Shell, rdir: str, python: str,
                  warn: Callable[[str], None]) -> RunBucket | None:
    if settings.storage.url is None:
        return None
    try:
        store = await asyncio.to_thread(open_store, settings.storage)
        handover = handover_for(settings.storage, os.environ)
    except (SidecarError, NoHandover) as exc:
        warn(f"[storage] is set but this run cannot use it ({getattr(exc, 'message', str(exc))}): the dataset and "
             "checkpoints go over SSH")
        return None
    folder = f"{rdir}/{STORAGE_DIR}"
    await shell.run(f"mkdir -p {q(folder)} && chmod 700 {q(folder)}")
    env = dict(handover.env)
    if handover.key_file is not None:
        key_there = f"{folder}/gcs-key.json"
        await shell.put_private(await asyncio.to_thread(handover.key_file.read_bytes), key_there)
        env["GOOGLE_APPLICATION_CREDENTIALS"] = key_there
    await shell.put_private(env_file(env).encode("utf-8"), f"{folder}/env")
    await shell.put(Path(agent.__file__), f"{folder}/agent.py")
    return RunBucket(store, rdir, python, env.get("SIDECAR_STORAGE_ENDPOINT_URL"))


def link(st: RemoteState, bucket: RunBucket | None) -> None:
    """Keep the run's bucket link with its persisted state (`reopen` restores it after a daemon restart)."""
    st.bucket_url = bucket.store.url if bucket is not None else None
    st.bucket_python = bucket.python if bucket is not None else None
    st.bucket_endpoint = bucket.endpoint_url if bucket is not None else None


async def reopen(settings: Settings, st: RemoteState, warn: Callable[[str], None]) -> RunBucket | None:
    """The bucket link of a run re-attached after a daemon restart: the credentials handed over at its start
    are still in its folder there; this side opens the same store again. None (SSH, with a warning) when the
    run had no link, or `[storage]` now names another store or cannot be opened."""
    if st.bucket_url is None or st.bucket_python is None or st.work_dir is None:
        return None
    why = None
    try:
        store = await asyncio.to_thread(open_store, settings.storage) if settings.storage.url else None
    except SidecarError as exc:
        store, why = None, exc.message
    if store is not None and store.url != st.bucket_url:
        store, why = None, f"[storage] now names {store.url}"
    if store is None:
        warn(f"this run's checkpoints went through {st.bucket_url}, which this daemon cannot use now "
             f"({why or '[storage] is not set'}): the rest come over SSH")
        return None
    return RunBucket(store, st.work_dir, st.bucket_python, st.bucket_endpoint)


def _plan(bucket: RunBucket, job: TrainJob, shell: Shell, uploads: list[tuple[Path, str]]
          ) -> tuple[list[list[str]], list[tuple[Path, str]], list[str], str]:
    """(files the machine fetches, uploads left for SSH, dataset files not in the bucket as here, the folder)."""
    root = os.path.abspath(os.path.expanduser(job.spec.dataset_dir))
    name = os.path.basename(root)
    key = bucket.store.key("datasets", name, MANIFEST_NAME)
    manifest = read_manifest(bucket.store, key)
    fetch: list[list[str]] = []
    rest: list[tuple[Path, str]] = []
    missing: list[str] = []
    for local, remote in uploads:
        path = os.path.abspath(local)
        if not path.startswith(root + os.sep):
            rest.append((local, remote))
            continue
        rel = Path(os.path.relpath(path, root)).as_posix()
        entry = manifest.get(rel)
        if entry is not None and entry.size == local.stat().st_size and entry.sha256 == hash_file(local):
            fetch.append([f"datasets/{name}/{rel}", shell.path(remote), entry.sha256])
        else:
            rest.append((local, remote))
            missing.append(rel)
    return fetch, rest, missing, root


async def dataset_from_bucket(bucket: RunBucket, shell: Shell, job: TrainJob, uploads: list[tuple[Path, str]],
                              warn: Callable[[str], None]) -> list[tuple[Path, str]]:
    """Have the machine fetch the dataset files the bucket holds as they are here; the uploads left for SSH."""
    try:
        fetch, rest, missing, root = await asyncio.to_thread(_plan, bucket, job, shell, uploads)
    except SidecarError as exc:
        warn(f"the bucket could not be read ({exc.message}): the dataset goes over SSH")
        return uploads
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        warn(f"{len(missing)} dataset file(s) are not in {bucket.store.url}/datasets/{os.path.basename(root)}/ as "
             f"they are here ({shown}): sent over SSH. `sidecar sync push datasets {root}` first to send none.")
    if not fetch:
        return rest
    plan_path = f"{bucket.rdir}/bucket-dataset.json"
    body = {"url": bucket.store.url, "endpoint_url": bucket.endpoint_url, "files": fetch}
    await shell.put_private(json.dumps(body, indent=1).encode("utf-8"), plan_path)
    try:
        out = await shell.run(bucket.command("pull", shell.path(plan_path)), timeout=PULL_TIMEOUT)
    except CommandFailed as exc:
        warn(f"the machine could not fetch the dataset from the bucket ({exc.output.strip()[-300:]}): sent over SSH")
        return uploads
    done = json.loads(out.strip().splitlines()[-1])
    log.info("run %s: the machine fetched %d of %d dataset file(s) from %s (%d bytes)", job.run_id, done["pulled"],
             done["files"], bucket.store.url, done["bytes"])
    return rest


async def fetch_lora(bucket: RunBucket, shell: Shell, run_id: str, remote: str, local: Path) -> tuple[int, str] | None:
    """A LoRA file from the machine through the bucket: (size, sha256); None when the machine has no such
    file. Raises `BucketPathFailed` when the bucket path did not work (the caller fetches over SSH)."""
    there = await shell.sha256(remote)
    if there is None:
        return None
    key = f"runs/{run_id}/{posixpath.basename(remote)}"
    try:
        await shell.run(bucket.command("push", bucket.store.url, shell.path(remote), key), timeout=PULL_TIMEOUT)
    except CommandFailed as exc:
        raise BucketPathFailed(f"the machine could not push {posixpath.basename(remote)}: "
                               f"{exc.output.strip()[-300:]}") from None
    try:
        got = await asyncio.to_thread(_download, bucket.store, bucket.store.key(key), local)
    except SidecarError as exc:
        raise BucketPathFailed(exc.message) from None
    if got != there or not await asyncio.to_thread(files.safetensors_ok, local):
        local.unlink(missing_ok=True)
        raise BucketPathFailed(f"{key} arrived as {got}, the machine has {there}")
    return got


class BucketPathFailed(Exception):
    pass


def _download(store: Store, key: str, local: Path) -> tuple[int, str]:
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.bucket-part")
    try:
        with translated(store, f"download {store.display(key)}"):
            store.fs.get_file(key, str(tmp))
        size, sha = tmp.stat().st_size, hash_file(tmp)
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)
    return size, sha


"""LoRAs and checkpoints for a rented ComfyUI from the `[storage]` bucket instead of this machine's uplink.

When `[storage]` is set and the bucket holds the LoRA or checkpoint a job needs exactly as this machine has
it (same size and sha256 in the `loras/` or `checkpoints/` manifest that `sidecar sync push loras` or
`sidecar sync push checkpoints` writes), the instance fetches it itself: the daemon puts `agent.py`
(`sidecar/storage/agent.py`) and the store's scoped credentials (`sidecar/storage/handover.py`; an
owner-only file, never on a command line) in `~/.sidecar-storage/` there, has the image's python run
`agent.py pull` into `<comfyui_dir>/models/<folder>/` (a temporary name, checked by sha256, then renamed),
and removes that folder at once. Anything else (a file not pushed or changed since, another kind of model,
a store that cannot be handed over or does not answer) goes over SFTP as before (`transfer.py`), with the
reason logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
from pathlib import Path

from sidecar.config import Settings
from sidecar.config.backends import SshTarget
from sidecar.errors import SidecarError

log = logging.getLogger("sidecar.backends")

FOLDER = ".sidecar-storage"
PULL_TIMEOUT = 3600.0
FOLDERS = ("loras", "checkpoints")  # the model folders `sidecar sync` keeps in the bucket
PUSH = {"loras": "sidecar sync push loras", "checkpoints": "sidecar sync push checkpoints"}
# What the instance's python needs to reach each store (installed by the rental's on-start command).
LIBRARIES = {"s3": "fsspec s3fs", "gs": "fsspec gcsfs", "file": "fsspec"}


def _listed(settings: Settings, folder: str, name: str, src: Path) -> tuple[object, str]:
    """(store, sha256) when the bucket's `folder`/ manifest has `name` as `src` is; else (None, why)."""
    from sidecar.storage.manifest import MANIFEST_NAME, hash_file
    from sidecar.storage.store import open_store
    from sidecar.storage.sync import read_manifest

    store = open_store(settings.storage)
    files = read_manifest(store, store.key(folder, MANIFEST_NAME))
    entry = files.get(name)
    if entry is None:
        return None, f"{name} is not in {store.url}/{folder}/ (`{PUSH[folder]}` sends it)"
    sha = hash_file(src)
    if entry.size != src.stat().st_size or entry.sha256 != sha:
        return None, f"{store.url}/{folder}/{name} is not the file here (`{PUSH[folder]}` updates it)"
    return store, sha


async def fetch_model(settings: Settings, target: SshTarget, key: Path, known_hosts: Path, python: str,
                      folder: str, name: str, src: Path) -> bool:
    """True when the instance fetched `<folder>/<name>` (loras, checkpoints) from the bucket; False: copy it
    over SFTP."""
    if settings.storage.url is None:
        return False
    from sidecar.remote.shell import CommandFailed, ConnectionLost, Endpoint, Shell, q
    from sidecar.storage import agent
    from sidecar.storage.handover import NoHandover, env_file, handover_for

    try:
        store, found = await asyncio.to_thread(_listed, settings, folder, name, src)
        handover = handover_for(settings.storage, os.environ)
    except (SidecarError, NoHandover, OSError) as exc:
        log.warning("the bucket cannot be used for %s (%s): copied over SFTP", name, getattr(exc, "message", exc))
        return False
    if store is None:
        log.info("%s: copied over SFTP", found)  # why the bucket's copy is not used
        return False
    sha = found
    try:
        shell = await Shell.connect(Endpoint(target.host, target.port, target.user or "root", key, known_hosts))
    except (ConnectionLost, SidecarError) as exc:
        log.warning("cannot reach %s for a bucket fetch (%s): copied over SFTP", target.host, exc)
        return False
    models = folder
    folder = shell.path(f"~/{FOLDER}")
    base = shell.path(target.path if target.path.startswith(("/", "~")) else f"~/{target.path}")
    dest = posixpath.join(base, "models", models, name)
    try:
        await shell.run(f"mkdir -p {q(folder)} && chmod 700 {q(folder)}")
        env = dict(handover.env)
        if handover.key_file is not None:
            await shell.put_private(await asyncio.to_thread(handover.key_file.read_bytes), f"{folder}/gcs-key.json")
            env["GOOGLE_APPLICATION_CREDENTIALS"] = f"{folder}/gcs-key.json"
        await shell.put_private(env_file(env).encode("utf-8"), f"{folder}/env")
        await shell.put(Path(agent.__file__), f"{folder}/agent.py")
        plan = {"url": store.url, "endpoint_url": env.get("SIDECAR_STORAGE_ENDPOINT_URL"),
                "files": [[f"{models}/{name}", dest, sha]]}
        await shell.put_private(json.dumps(plan).encode("utf-8"), f"{folder}/plan.json")
        await shell.run(f". {q(folder + '/env')} && {q(python)} {q(folder + '/agent.py')} pull "
                        f"{q(folder + '/plan.json')}", timeout=PULL_TIMEOUT)
    except (CommandFailed, ConnectionLost) as exc:
        log.warning("the instance could not fetch %s from %s (%s): copied over SFTP", name, store.url,
                    str(exc)[-300:])
        return False
    finally:
        try:  # the credentials go at once, whatever happened
            await shell.run(f"rm -rf {q(folder)}", check=False)
        except ConnectionLost:
            log.warning("could not remove %s on %s (the instance is destroyed with it)", folder, target.host)
        await shell.close()
    log.info("%s fetched by the instance at %s from %s (sha256 checked there)", name, target.host, store.url)
    return True


def fetcher(settings: Settings, member, known_hosts: Path, python: str):
    """A rented member's `fetch` (None without [storage]): LoRAs and checkpoints from the bucket, fetched by
    the instance."""
    if settings.storage.url is None:
        return None

    async def fetch(folder: str, name: str, src: Path) -> bool:
        m = member()
        if folder not in FOLDERS or m is None or m.ssh is None:
            return False  # the other model folders are not kept in the bucket by `sidecar sync`
        return await fetch_model(settings, m.ssh, settings.remote.vast.identity_file.expanduser(), known_hosts,
                                 python, folder, name, src)

    return fetch


def onstart_with_libraries(settings: Settings, python: str, onstart: str) -> str:
    """The on-start command, first installing what the instance's python needs for the bucket (if any)."""
    if settings.storage.url is None:
        return onstart
    scheme = settings.storage.url.split(":", 1)[0]
    libs = LIBRARIES.get(scheme)
    if not libs:
        return onstart
    return f"{python} -m pip install --quiet {libs} || true; {onstart}"

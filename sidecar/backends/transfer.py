"""Copying a LoRA or checkpoint to a remote backend's ComfyUI over SSH/SFTP (asyncssh), checked.

The file goes to `<ssh path>/models/<folder>/<name>` under a temporary name, is checked there by size
(SFTP `stat`) and SHA-256 (`sha256sum` run on the server; where that is missing, the file is read back
over SFTP and hashed here), and only then renamed into place: ComfyUI never lists a half-copied or
corrupt file, and a failed copy leaves nothing behind. A file already there with the same size and
hash is not sent again. `~/` in the target path is the SSH user's home (SFTP paths are relative to it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
import secrets
import shlex
from pathlib import Path

from sidecar.config.backends import SshTarget

log = logging.getLogger("sidecar.backends")

CONNECT_TIMEOUT = 15.0
CHUNK = 1 << 20


class TransferError(Exception):
    """A copy that did not happen or did not check out; the message says which and why."""


def sha256_file(path: Path) -> tuple[int, str]:
    """Blocking: (size, hex digest)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def remote_dir(target: SshTarget, folder: str) -> str:
    base = target.path
    if base == "~":
        base = "."
    elif base.startswith("~/"):
        base = base[2:] or "."
    return posixpath.join(base, "models", folder)


async def copy_model(target: SshTarget, src: Path, folder: str, name: str, *, key: str | None = None,
                     known_hosts: str | None = None) -> bool:
    """Copy `src` to the backend as `models/<folder>/<name>`. True when sent, False when an identical
    file was already there. Raises TransferError."""
    import asyncssh  # a dependency of the daemon, imported when a copy is needed

    size, digest = await asyncio.to_thread(sha256_file, src)
    directory = remote_dir(target, folder)
    final = posixpath.join(directory, name)
    options: dict = {"username": target.user, "port": target.port, "connect_timeout": CONNECT_TIMEOUT}
    if key is not None:
        options["client_keys"] = [str(Path(key).expanduser())]
    if known_hosts is not None:
        options["known_hosts"] = str(Path(known_hosts).expanduser())
    try:
        async with asyncssh.connect(target.host, **options) as conn, conn.start_sftp_client() as sftp:
            if await _matches(conn, sftp, final, size, digest):
                log.info("%s already on %s with the same size and hash: not copied", final, target.host)
                return False
            await sftp.makedirs(directory, exist_ok=True)
            part = posixpath.join(directory, f".{name}.part-{secrets.token_hex(4)}")
            try:
                await sftp.put(str(src), part)
                if not await _matches(conn, sftp, part, size, digest):
                    raise TransferError(f"the copy at {target.host}:{part} does not match {src} (size {size}, "
                                        f"sha256 {digest[:16]}...)")
                await _rename(sftp, part, final)
            except BaseException:
                try:
                    await sftp.remove(part)
                except (asyncssh.Error, OSError):
                    pass
                raise
    except TransferError:
        raise
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as exc:
        raise TransferError(f"{type(exc).__name__}: {exc}") from None
    return True


async def _matches(conn, sftp, path: str, size: int, digest: str) -> bool:
    import asyncssh

    try:
        attrs = await sftp.stat(path)
    except asyncssh.SFTPNoSuchFile:
        return False
    if attrs.size != size:
        return False
    return await _remote_sha256(conn, sftp, path) == digest


async def _remote_sha256(conn, sftp, path: str) -> str:
    """The server hashes its own file (coreutils' `sha256sum` answers `<hex>  <path>`); without it, the
    file is read back and hashed here."""
    result = await conn.run(f"sha256sum -- {shlex.quote(path)}", check=False)
    out = result.stdout if isinstance(result.stdout, str) else ""
    word = out.split(maxsplit=1)[0] if out.strip() else ""
    if result.exit_status == 0 and len(word) == 64:
        return word.lower()
    digest = hashlib.sha256()
    async with sftp.open(path, "rb") as fh:
        while chunk := await fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _rename(sftp, src: str, dest: str) -> None:
    """Over an existing file too (posix-rename where the server offers it; plain SFTP rename refuses)."""
    import asyncssh

    try:
        await sftp.posix_rename(src, dest)
    except asyncssh.SFTPOpUnsupported:
        try:
            await sftp.remove(dest)
        except asyncssh.SFTPNoSuchFile:
            pass
        await sftp.rename(src, dest)

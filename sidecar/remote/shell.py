"""A shell on the training machine: commands and SFTP over one asyncssh connection.

What the run needs from a machine and nothing more: run a command, upload files and folders (each under
a temporary name, renamed when whole), read a log from an offset, download a file while hashing it.
Every network or SSH failure becomes `ConnectionLost`, which the trainer answers by reconnecting (the
trainer on the machine runs detached and does not notice); a machine that refuses the login (its host
key is not trusted, or it does not take our key) is `RemoteUnavailable` at once, with the fix. Paths may
start with `~/` (the login's home).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import posixpath
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from sidecar.errors import RemoteUnavailable

log = logging.getLogger("sidecar.remote")
# asyncssh logs every channel and SFTP call at INFO: far too much for the daemon log.

CONNECT_TIMEOUT = 20.0
COMMAND_TIMEOUT = 120.0
CHUNK = 1 << 20


class ConnectionLost(Exception):
    """The machine cannot be reached right now (refused, dropped, timed out)."""


# A machine that answers but refuses us: retrying cannot help, and nothing may be started there.
LOGIN_REFUSED = ("host_key_untrusted", "permission_denied")


def login_refused(ep: Endpoint, exc: asyncssh.Error) -> RemoteUnavailable:
    """The machine's refusal as the error a run ends with: the reason in words, and what fixes it."""
    where = f"{ep.user}@{ep.host}:{ep.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        known = str(ep.known_hosts) if ep.known_hosts is not None else "~/.ssh/known_hosts"
        fix = f"ssh-keyscan -p {ep.port} {ep.host} >> {known}"
        reason, why = "host_key_untrusted", (f"host key not trusted: add it to known_hosts with `{fix}` (after "
                                             "checking that it is your machine's key)")
    else:
        key = str(ep.identity_file) if ep.identity_file is not None else "ssh-agent and ~/.ssh keys"
        fix = f"put the public key of {key} in ~/.ssh/authorized_keys of {ep.user} on {ep.host}"
        reason, why = "permission_denied", (f"permission denied for user {ep.user}: check identity_file ({key}); "
                                            f"its public key must be in that user's authorized_keys")
    return RemoteUnavailable(f"Cannot log in to {where}: {why}. Nothing was started there.",
                             {"reason": reason, "host": ep.host, "port": ep.port, "user": ep.user, "fix": fix,
                              "sshError": str(exc)})


def is_login_refused(exc: BaseException) -> bool:
    return isinstance(exc, RemoteUnavailable) and exc.details.get("reason") in LOGIN_REFUSED


class CommandFailed(Exception):
    def __init__(self, command: str, status: int | None, output: str):
        super().__init__(f"`{command}` exited {status}: {output.strip()[-500:]}")
        self.status = status
        self.output = output


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    identity_file: Path | None = None
    known_hosts: Path | None = None  # None with `pin_host_key`: trust on first use, then pinned
    trust_on_first_use: bool = False


class Shell:
    def __init__(self, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient, home: str):
        self.conn = conn
        self.sftp = sftp
        self.home = home

    # -- connecting
    @classmethod
    async def connect(cls, ep: Endpoint, host_key: str | None = None) -> Shell:
        """Connect and open SFTP. `host_key` (OpenSSH public key text) pins the machine's key: a
        different one is refused, as a changed known_hosts entry would be."""
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        options: dict = {"username": ep.user, "connect_timeout": CONNECT_TIMEOUT, "keepalive_interval": 15,
                         "keepalive_count_max": 4}
        if ep.identity_file is not None:
            options["client_keys"] = [str(Path(ep.identity_file).expanduser())]
        if ep.trust_on_first_use:
            options["known_hosts"] = None
        elif ep.known_hosts is not None:
            options["known_hosts"] = str(Path(ep.known_hosts).expanduser())
        try:
            conn = await asyncssh.connect(ep.host, ep.port, **options)
        except (asyncssh.HostKeyNotVerifiable, asyncssh.PermissionDenied) as exc:
            raise login_refused(ep, exc) from None
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {ep.user}@{ep.host}:{ep.port}: {exc}") from exc
        try:
            seen = server_key(conn)
            if host_key is not None and seen != host_key:
                raise ConnectionLost(f"{ep.host}:{ep.port} answered with another host key than the one first "
                                     "seen for this run; refusing to connect (a different machine?)")
            sftp = await conn.start_sftp_client()
            home = await sftp.realpath(".")
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            conn.abort()
            raise ConnectionLost(f"{ep.host}:{ep.port}: {exc}") from exc
        except ConnectionLost:
            conn.abort()
            raise
        return cls(conn, sftp, home)

    def host_key(self) -> str:
        return server_key(self.conn)

    async def close(self) -> None:
        self.sftp.exit()
        self.conn.close()
        try:
            await asyncio.wait_for(self.conn.wait_closed(), 5)
        except (asyncio.TimeoutError, OSError, asyncssh.Error):
            pass

    def path(self, p: str) -> str:
        """`~/x` and `~` under the login's home (SFTP does not expand them)."""
        if p == "~":
            return self.home
        if p.startswith("~/"):
            return f"{self.home}/{p[2:]}"
        return p

    # -- commands
    async def run(self, command: str, *, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> str:
        try:
            result = await asyncio.wait_for(self.conn.run(command, check=False), timeout)
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            raise ConnectionLost(f"running a command: {exc}") from exc
        out = str(result.stdout or "") + str(result.stderr or "")
        if result.exit_status is None and result.exit_signal is None:
            raise ConnectionLost(f"the connection closed while running `{command[:80]}`")
        if check and result.exit_status != 0:
            raise CommandFailed(command, result.exit_status, out)
        return str(result.stdout or "")

    # -- files
    async def mkdir(self, path: str) -> None:
        await self.run(f"mkdir -p {q(self.path(path))}")

    async def size(self, path: str) -> int | None:
        try:
            return (await self.sftp.stat(self.path(path))).size
        except asyncssh.SFTPNoSuchFile:
            return None
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionLost(str(exc)) from exc

    async def put(self, local: Path, remote: str) -> None:
        """Upload one file under a temporary name, then rename it into place."""
        target = self.path(remote)
        tmp = f"{target}.part"
        try:
            await self.sftp.put(str(local), tmp)
            await self.sftp.posix_rename(tmp, target)
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionLost(f"uploading {local.name}: {exc}") from exc

    async def put_private(self, data: bytes, remote: str) -> None:
        """Write `data` (a credential) to a file only its owner may read: created 0600, never on a command line."""
        target = self.path(remote)
        try:
            async with self.sftp.open(target, "wb", asyncssh.SFTPAttrs(permissions=0o600)) as f:
                await f.write(data)
            await self.sftp.chmod(target, 0o600)  # created before by another run, or a umask that widened it
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionLost(f"writing {posixpath.basename(target)}: {exc}") from exc

    async def put_files(self, files: list[tuple[Path, str]]) -> int:
        """Upload (local, remote) pairs, creating their folders; returns the bytes sent."""
        folders = sorted({os.path.dirname(self.path(r)) for _, r in files})
        if folders:
            await self.run("mkdir -p " + " ".join(q(f) for f in folders))
        sent = 0
        for local, remote in files:
            await self.put(local, remote)
            sent += local.stat().st_size
        return sent

    async def read_from(self, path: str, offset: int, limit: int = 4 * CHUNK) -> bytes:
        """Up to `limit` bytes of a growing file from `offset` (b"" when nothing new or no file yet)."""
        try:
            async with self.sftp.open(self.path(path), "rb") as f:
                await f.seek(offset)
                return await f.read(limit)
        except asyncssh.SFTPNoSuchFile:
            return b""
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionLost(f"reading {path}: {exc}") from exc

    async def read_text(self, path: str) -> str | None:
        data = await self.read_from(path, 0)
        return data.decode("utf-8", "replace") if data else None

    async def get(self, remote: str, local: Path) -> tuple[int, str]:
        """Download a file to `local` (a temporary name renamed in when whole): (size, sha256)."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            async with self.sftp.open(self.path(remote), "rb") as src:
                with tmp.open("wb") as dst:
                    while True:
                        block = await src.read(CHUNK)
                        if not block:
                            break
                        digest.update(block)
                        size += len(block)
                        await asyncio.to_thread(dst.write, block)
            os.replace(tmp, local)
        except (OSError, asyncssh.Error) as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, asyncssh.SFTPNoSuchFile):
                raise FileNotFoundError(remote) from exc
            raise ConnectionLost(f"downloading {remote}: {exc}") from exc
        return size, digest.hexdigest()

    async def sha256(self, path: str) -> tuple[int, str] | None:
        """(size, sha256) of a file on the machine, computed there; None when it is not there."""
        out = await self.run(f"f={q(self.path(path))}; [ -f \"$f\" ] && wc -c < \"$f\" && sha256sum \"$f\" "
                             "|| true")
        lines = out.split()
        if len(lines) < 2:
            return None
        return int(lines[0]), lines[1]

    async def listdir(self, path: str) -> list[str]:
        try:
            return [n for n in await self.sftp.listdir(self.path(path)) if n not in (".", "..")]
        except asyncssh.SFTPNoSuchFile:
            return []
        except (OSError, asyncssh.Error) as exc:
            raise ConnectionLost(str(exc)) from exc


def server_key(conn: asyncssh.SSHClientConnection) -> str:
    key = conn.get_server_host_key()
    return key.export_public_key().decode().strip() if key is not None else ""


def q(text: str) -> str:
    """Shell-quote, keeping a leading `~/` expandable by the remote shell."""
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:])
    return shlex.quote(text)


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _, names in os.walk(root, followlinks=True):
        for name in sorted(names):
            yield Path(dirpath) / name

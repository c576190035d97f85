"""An SSH server in the test process (asyncssh's own server), standing in for a GPU box's sshd: public-key
login with a client key generated in tmp, SFTP confined to one folder (asyncssh's `SFTPServer` with
`chroot`), and the one command the daemon runs there, coreutils' `sha256sum -- FILE` (answering
`<hex>  FILE`, exit 1 with a message for a missing file, as coreutils does).

Knobs: `lie_about_hash` (the server reports a wrong digest: a copy corrupted on the way),
`no_sha256sum` (a server without coreutils: exit 127, "command not found"). Records: `commands`.
"""

from __future__ import annotations

import hashlib
import shlex
from pathlib import Path

import asyncssh


class FakeSshd:
    def __init__(self, root: Path, key_dir: Path, user: str = "artist"):
        self.root = root
        self.key_dir = key_dir
        self.user = user
        self.lie_about_hash = False
        self.no_sha256sum = False
        self.commands: list[str] = []
        self.port = 0
        self._server: asyncssh.SSHAcceptor | None = None

    async def start(self) -> None:
        self.key_dir.mkdir(parents=True, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key_path = self.key_dir / "id_ed25519"
        self.client_key_path.write_bytes(client_key.export_private_key())
        self.client_key_path.chmod(0o600)
        authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
        root = str(self.root)
        self._server = await asyncssh.create_server(
            asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key], authorized_client_keys=authorized,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root), process_factory=self._process,
            allow_scp=False)
        self.port = self._server.sockets[0].getsockname()[1]
        self.known_hosts_path = self.key_dir / "known_hosts"
        self.known_hosts_path.write_text(f"[127.0.0.1]:{self.port} {host_key.export_public_key().decode()}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def target(self, path: str) -> str:
        return f"{self.user}@127.0.0.1:{self.port}:{path}"

    def _process(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        self.commands.append(command)
        words = shlex.split(command)
        if self.no_sha256sum or not words or words[0] != "sha256sum":
            process.stderr.write(f"bash: {words[0] if words else ''}: command not found\n")
            process.exit(127)
            return
        name = words[-1]
        path = self.root / name.lstrip("/")
        if not path.is_file():
            process.stderr.write(f"sha256sum: {name}: No such file or directory\n")
            process.exit(1)
            return
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if self.lie_about_hash:
            digest = "0" * 64
        process.stdout.write(f"{digest}  {name}\n")
        process.exit(0)

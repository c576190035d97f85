"""A training machine for tests: an in-process asyncssh server on a local port, standing in for a vast.ai
instance or the artist's SSH host.

Commands run in a real shell on this machine with HOME set to the host's own folder (so `~/...` is the
machine's home), and SFTP sees the same folder as home; kohya there is `tests/fake_trainer.py` (it replays
the recorded kohya output and writes files as the real one does), run by this venv's python. Keys are
generated per test. A test can drop every connection (`drop_connections`) while the detached trainer goes
on, or stop the host (`close`: every process started on it is killed, as destroying an instance does).

Local port forwarding (`ssh -L`, asyncssh's `forward_local_port`): a client's direct-tcpip request for
the machine's own loopback port P reaches what `ports[P]` names here (the machine's services, e.g. a
stand-in ComfyUI on its internal port); any other destination is refused, as a closed port is. Every
request is recorded in `forwards`. `services`: coroutines run at `close`, stopping what ran "on" it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncssh

from tests.processes import marked_processes

FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"
FAKE_AI_TOOLKIT = Path(__file__).resolve().parent / "fake_ai_toolkit.py"
MARK = "FAKE_SSH_HOST_ID"  # in the environment of every process the host starts: how `close` finds them


def make_keypair(folder: Path, name: str = "id_ed25519") -> Path:
    """A client key pair in `folder` (private `name`, public `name.pub`)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = folder / name
    key.write_private_key(str(private))
    key.write_public_key(str(private) + ".pub")
    private.chmod(0o600)
    return private


def install_kohya(home: Path) -> tuple[Path, Path]:
    """sd-scripts (the fake trainer as train_network.py) and a python in `home`: (sd-scripts dir, python)."""
    scripts = home / "sd-scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    for script in ("train_network.py", "sdxl_train_network.py", "flux_train_network.py"):
        if not (scripts / script).exists():
            (scripts / script).symlink_to(FAKE_TRAINER)
    python = home / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return scripts, python


def install_ai_toolkit(home: Path) -> tuple[Path, Path]:
    """ai-toolkit (the fake `run.py`) and its venv's python in `home/ai-toolkit`: (its folder, python)."""
    root = home / "ai-toolkit"
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "run.py").exists():
        (root / "run.py").symlink_to(FAKE_AI_TOOLKIT)
    python = root / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return root, python


class _Sftp(asyncssh.SFTPServer):
    """SFTP whose relative paths (and `.`) are the host's home, like a login's."""

    def __init__(self, chan, home: bytes):
        super().__init__(chan)
        self._home = home

    def map_path(self, path: bytes) -> bytes:
        return path if path.startswith(b"/") else os.path.join(self._home, path)


class FakeHost:
    def __init__(self, home: Path, authorized_keys: list[str], host_id: str = "host", env: dict | None = None):
        self.home = home.resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        # Unique on the machine: the suite's workers (and other checkouts) run SSH hosts at once, and `close`
        # kills every process carrying this mark.
        self.id = f"{host_id}-{os.getpid()}-{id(self):x}"
        self.env = env or {}
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.authorized: list[str] = list(authorized_keys)
        self.connections: set[asyncssh.SSHServerConnection] = set()
        self.commands: list[str] = []
        self.server: asyncssh.SSHAcceptor | None = None
        self.port = 0
        self.refuse = False  # when set, new connections are turned away (a machine that does not answer)
        self.ports: dict[int, int] = {}  # the machine's loopback port -> where that service listens here
        self.forwards: list[tuple[str, int]] = []
        self.services: list = []  # async callables run at close (its services stop with the machine)

    def authorize(self, public_key: str) -> None:
        self.authorized.append(public_key.strip())

    async def start(self, port: int = 0) -> FakeHost:
        host = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn):
                self.conn = conn
                if host.refuse:
                    conn.abort()
                    return
                host.connections.add(conn)

            def connection_lost(self, exc):
                host.connections.discard(self.conn)

            def begin_auth(self, username):
                self.conn.set_authorized_keys(asyncssh.import_authorized_keys("\n".join(host.authorized) + "\n"))
                return True

            def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
                host.forwards.append((dest_host, dest_port))
                target = host.ports.get(dest_port) if dest_host in ("127.0.0.1", "localhost") else None
                if target is None:
                    return False  # "connection refused": nothing listens there on the machine
                return self.conn.forward_connection("127.0.0.1", target)

        self.server = await asyncssh.create_server(
            Server, "127.0.0.1", port, server_host_keys=[self.host_key], process_factory=self._process,
            sftp_factory=lambda chan: _Sftp(chan, str(self.home).encode()), encoding="utf-8")
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _process(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        self.commands.append(command)
        env = {**os.environ, **self.env, "HOME": str(self.home), MARK: self.id}
        proc = await asyncio.create_subprocess_exec("/bin/bash", "-c", command, cwd=self.home, env=env,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        try:
            process.stdout.write(out.decode("utf-8", "replace"))
            process.stderr.write(err.decode("utf-8", "replace"))
            process.exit(proc.returncode or 0)
        except (OSError, asyncssh.Error):
            pass  # the client went away meanwhile

    def drop_connections(self) -> int:
        """Cut every open SSH connection (a network drop); processes on the host go on."""
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        return len(conns)

    def processes(self) -> list[int]:
        """Pids of the processes started on this host that are still alive (Linux /proc)."""
        return marked_processes(MARK, self.id)

    def kill_all(self) -> None:
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def close(self) -> None:
        self.refuse = True
        services, self.services = self.services, []
        for stop in services:
            await stop()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        self.drop_connections()
        self.kill_all()

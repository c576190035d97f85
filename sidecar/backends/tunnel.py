"""An SSH local port forward to a rented machine's ComfyUI (asyncssh): a port on this machine's loopback
whose connections reach `127.0.0.1:<port>` inside the instance. ComfyUI there answers without any
authentication, so it is never published: this tunnel is the only way in.

The machine's host key is trusted on first use (vast.ai gives a fresh container a fresh key and no other
way to learn it) and pinned from then on: it is written as a known_hosts file that the SFTP copies of
models (`transfer.py`) and a reconnect check against.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a tunnel is opened: the daemon starts without it
    import asyncssh

log = logging.getLogger("sidecar.backends")

CONNECT_TIMEOUT = 15.0


class TunnelError(Exception):
    """The machine cannot be reached over SSH or refuses the forward; the message says which."""


@dataclass
class Tunnel:
    conn: asyncssh.SSHClientConnection  # type: ignore[name-defined]
    listener: asyncssh.SSHListener  # type: ignore[name-defined]
    local_port: int
    host_key: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    @property
    def closed(self) -> bool:
        return self.conn.is_closed()

    async def close(self) -> None:
        import asyncssh

        self.listener.close()
        self.conn.close()
        try:
            await asyncio.wait_for(self.conn.wait_closed(), 5)
        except (TimeoutError, asyncssh.Error, OSError):
            pass


async def open_tunnel(host: str, port: int, user: str, key: Path, remote_port: int, *,
                      known_hosts: Path | None = None, local_port: int = 0) -> Tunnel:
    """Connect (checking the key pinned in `known_hosts`, when given) and forward a free loopback port
    here to 127.0.0.1:`remote_port` there. Raises TunnelError."""
    import asyncssh

    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    options: dict = {"username": user, "client_keys": [str(key.expanduser())], "connect_timeout": CONNECT_TIMEOUT,
                     "keepalive_interval": 15, "keepalive_count_max": 4}
    # First contact with a fresh instance: its key is trusted, then pinned (`write_known_hosts`).
    options["known_hosts"] = str(known_hosts) if known_hosts is not None else None
    try:
        conn = await asyncssh.connect(host, port, **options)
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        raise TunnelError(f"cannot connect to {user}@{host}:{port}: {type(exc).__name__}: {exc}") from None
    try:
        listener = await conn.forward_local_port("127.0.0.1", local_port, "127.0.0.1", remote_port)
    except (OSError, asyncssh.Error) as exc:
        conn.close()
        raise TunnelError(f"{host}:{port} refused to forward to its port {remote_port}: {exc}") from None
    seen = conn.get_server_host_key()
    key_text = seen.export_public_key().decode().strip() if seen is not None else ""
    return Tunnel(conn, listener, listener.get_port(), key_text)


def write_known_hosts(path: Path, host: str, port: int, host_key: str) -> Path:
    """The pinned key as a known_hosts file (OpenSSH's `[host]:port key` form) for the SFTP copies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    where = host if port == 22 else f"[{host}]:{port}"
    path.write_text(f"{where} {host_key}\n", encoding="utf-8")
    return path

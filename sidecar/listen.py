"""The daemon's listening sockets, bound by `sidecar serve` before the app exists.

aiohttp binds only after the app's start-up has run, and start-up is where recovery happens (stale
kohya runs stopped, running jobs reconciled). A daemon that then found its port busy would have changed
the data dir for nothing, so `serve` binds first (after the data dir lock) and hands the sockets to
`web.run_app(sock=...)`.
"""

from __future__ import annotations

import errno
import socket

from sidecar.errors import PortInUse

BACKLOG = 128
# A query string carries absolute paths (up to PATH_MAX, 4096 characters, each up to 12 bytes once
# percent-encoded): at aiohttp's default 8 KiB request line such a request would be refused in plain
# text by the HTTP parser, before the edge could answer it with the JSON error body.
REQUEST_LIMITS = {"max_line_size": 64 * 1024}


def bind_listeners(host: str, port: int) -> list[socket.socket]:
    """One listening socket per address `host` resolves to (as asyncio's create_server binds), or
    `PortInUse` naming host and port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortInUse(f"Cannot listen on {host}:{port}: {host!r} does not resolve ({exc.strerror}).",
                        {"host": host, "port": port}) from None
    socks: list[socket.socket] = []
    seen: set[tuple] = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp: restart past TIME_WAIT
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and len(infos) > 1:
                    socks.remove(sock)  # `localhost` -> ::1 on a machine without IPv6: the other address serves
                    sock.close()
                    continue
                raise PortInUse(
                    f"Cannot listen on {host}:{port}: {exc.strerror or exc}"
                    + (" (another program, or another daemon, holds the port; stop it or pass --port)."
                       if exc.errno == errno.EADDRINUSE else "."),
                    {"host": host, "port": port, "errno": exc.errno},
                ) from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
        if not socks:
            raise PortInUse(f"Cannot listen on {host}:{port}: no address of {host!r} can be bound.",
                            {"host": host, "port": port})
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks

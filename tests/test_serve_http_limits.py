"""The HTTP server's own settings reach every connection of a served daemon: the real `sidecar serve`
(aiohttp's `run_app`, the version installed) answers a few hundred connections without aiohttp logging
a word about its request handler, and a 60 KB request line, past aiohttp's default 8 KiB, gets the
daemon's JSON error body instead of the HTTP parser's plain-text 400."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest_comfy import free_port
from tests.processes import wait_up

CONNECTIONS = 300


def start_daemon(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    config = tmp_path / "sidecar.toml"
    # Attached to a ComfyUI that is not there: no torch to import; /health answers all the same.
    config.write_text('comfyui_url = "http://127.0.0.1:9"\nlog_stderr = true\n')
    with (tmp_path / "daemon.out").open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "sidecar.cli", "serve", "--port", str(port), "--data-dir",
                                 str(tmp_path / "data"), "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT)


def raw_get(port: int, target: str) -> tuple[str, dict[str, str], bytes]:
    """One GET with the request line exactly as given: (status line, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def test_a_served_daemon_applies_its_request_limits_on_every_connection_without_warnings(
        tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_daemon(tmp_path, port)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            await wait_up(http, url, proc)
        # A new connection per request: aiohttp builds its request handler (with the settings) per connection.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as http:
            for _ in range(CONNECTIONS):
                async with http.get(f"{url}/health") as resp:
                    assert resp.status == 200
        target = "/jobs/" + "a" * 60_000  # no such job: the daemon's 404, once the line is read
        status, headers, body = await asyncio.to_thread(raw_get, port, target)
        assert len(target) > 60_000
        assert status.split()[1].startswith("4"), (status, body[:200])
        assert headers["content-type"].startswith("application/json"), (status, headers, body[:200])
        assert json.loads(body)["error"]["code"]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
    out = (tmp_path / "daemon.out").read_text(errors="replace")
    logged = out + (tmp_path / "data" / "logs" / "sidecar.log").read_text(errors="replace")
    assert "Failed to create request handler" not in logged, logged[-2000:]
    aiohttp_warnings = [line for line in logged.splitlines() if " WARNING aiohttp" in line or " ERROR aiohttp" in line]
    assert not aiohttp_warnings, aiohttp_warnings[:5]

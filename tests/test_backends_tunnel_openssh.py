"""The rented backend's tunnel against the system's OpenSSH server (stricter than asyncssh's own): a local
port forward reaches a ComfyUI that listens only on the machine's loopback, the host key seen first is
pinned (a reconnect on the same local port checks it), and a forward to a port where nothing listens
fails the request through it, not the connection."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from sidecar.backends.tunnel import TunnelError, open_tunnel, write_known_hosts
from tests.conftest_comfy import free_port
from tests.fake_comfyui import FakeComfyUI, make_comfy_home
from tests.openssh_host import OpenSshHost


async def test_a_local_forward_through_openssh_reaches_comfyui_and_pins_the_host_key(tmp_path: Path) -> None:
    host = OpenSshHost(tmp_path / "openssh").start()
    comfy = FakeComfyUI(make_comfy_home(tmp_path / "ComfyUI"), device_type="cuda")
    await comfy.start()
    port = int(comfy.url.rsplit(":", 1)[1])
    try:
        tunnel = await open_tunnel("127.0.0.1", host.port, host.user, host.client_key, port)
        async with aiohttp.ClientSession() as http:
            async with http.get(tunnel.url + "/system_stats") as resp:
                assert resp.status == 200 and (await resp.json())["devices"][0]["type"] == "cuda"
        seen = (host.etc / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        assert tunnel.host_key.split()[:2] == seen
        known = write_known_hosts(tmp_path / "gpu.known_hosts", "127.0.0.1", host.port, tunnel.host_key)
        local = tunnel.local_port
        await tunnel.close()
        again = await open_tunnel("127.0.0.1", host.port, host.user, host.client_key, port, known_hosts=known,
                                  local_port=local)
        assert again.local_port == local
        async with aiohttp.ClientSession() as http:
            async with http.get(again.url + "/system_stats") as resp:
                assert resp.status == 200
        await again.close()
        # Another key pinned: refused, never connected to a different machine.
        other = tmp_path / "other.known_hosts"
        other.write_text(f"[127.0.0.1]:{host.port} ssh-ed25519 "
                         "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        with pytest.raises(TunnelError, match="cannot connect"):
            await open_tunnel("127.0.0.1", host.port, host.user, host.client_key, port, known_hosts=other)
        # Nothing listening on the machine's port: the tunnel opens, a request through it fails.
        closed = await open_tunnel("127.0.0.1", host.port, host.user, host.client_key, free_port())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(closed.url + "/system_stats") as resp:
                    await resp.read()
        await closed.close()
    finally:
        await comfy.stop()
        host.close()

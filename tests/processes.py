"""Processes a test starts: whether one still runs, and waiting for a `sidecar serve` to answer."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import aiohttp


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an unreaped zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


async def wait_up(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until a `sidecar serve` subprocess answers /health 200; fails at once if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "sidecar serve exited"
        try:
            async with http.get(f"{url}/health") as resp:
                if resp.status == 200:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the daemon did not start in time")


def marked_processes(mark: str, value: str) -> list[int]:
    """Pids of the live (not zombie) processes whose environment has MARK=VALUE (Linux /proc)."""
    found = []
    needle = f"{mark}={value}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if needle in environ.split(b"\0") and stat.split(") ", 1)[1][0] != "Z":
            found.append(int(entry.name))
    return found

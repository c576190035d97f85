"""Whether a host name stays on this machine: the daemon's own `host` (refused elsewhere without
`allow_remote`) and a `[[backends]]` URL (a loopback backend shares the laptop's device and lock)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

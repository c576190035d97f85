"""What the settings model and the tools share without loading any settings: the environment prefix, the
daemon's default address, how a local server's URL and a browser origin are spelled, and where the
config file and the data dir are by default."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

ENV_PREFIX = "SIDECAR_"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 3000


def http_url(host: str, port: int) -> str:
    """The one way a local server's URL is spelled (the daemon's, ComfyUI's): a wildcard bind address
    is reached on loopback, an IPv6 address is bracketed."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


DEFAULT_DAEMON_URL = http_url(DEFAULT_HOST, DEFAULT_PORT)  # for tools that do not read this configuration


def default_config_path() -> Path:
    env = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "plasma-sidecar" / "config.toml"


def default_data_dir() -> Path:
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "plasma-sidecar"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "plasma-sidecar"


def normalize_origin(origin: str) -> str:
    """`scheme://host[:port]` lowercased, without a default port or a trailing slash (as browsers send it)."""
    parts = urlsplit(origin.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return origin.strip().lower()
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"

"""Shared test fixtures. Tests never touch the network: the model hub is forced offline.

Passing the daemon's HTTP edge (sidecar/api/edge.py) from a test client: aiohttp's `aiohttp_client` /
`aiohttp_server` and `tests.pipeline_daemon.DaemonThread` talk to `http://127.0.0.1:<port>`, so `Host` is
loopback and no `Origin` is sent: every request passes as long as a body goes as `json=` (Content-Type
application/json; `data=` needs `headers={"Content-Type": "application/json"}`, else 415). A generated
client (schemathesis, hypothesis) must keep a loopback base URL (`http://127.0.0.1:<port>` or
`http://localhost:<port>`, never a made-up host: 403 host_not_allowed), must not add an `Origin` (or
send the daemon's own, `http://127.0.0.1:<port>`), and must send `edge_headers(token)` when the
settings carry a `token`. The refusals themselves are tested in tests/test_edge.py.
"""

from __future__ import annotations

import os

pytest_plugins = ["tests.conftest_app", "tests.conftest_comfy", "tests.conftest_engine"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def edge_headers(token: str | None = None) -> dict[str, str]:
    """Headers a non-browser test client adds to pass the edge: the token when the daemon has one."""
    return {"Authorization": f"Bearer {token}"} if token else {}

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
import signal
from collections import Counter

import pytest

pytest_plugins = ["tests.conftest_app", "tests.conftest_comfy", "tests.conftest_engine"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# A shell starts a background job (`make test &`, a CI step run that way) with SIGINT ignored, and every
# process the tests start inherits that: the Ctrl-C tests' `generate` and trainers would never see theirs.
# A handler of our own is reset to the default in each child it starts, so children get Ctrl-C back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def edge_headers(token: str | None = None) -> dict[str, str]:
    """Headers a non-browser test client adds to pass the edge: the token when the daemon has one."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every collected test gets a node id of its own. schemathesis names each operation's test
    `test_every_operation_answers_as_documented[GET /health]` but gives them all the function's node id,
    and pytest-xdist's `--dist loadfile` (what `make test` runs) schedules by node id: it would run one
    operation and silently drop the other fifty. Such a test takes its name as its id; any duplicate
    left stops the run rather than lose tests."""
    counts = Counter(item.nodeid for item in items)
    for item in items:
        if counts[item.nodeid] > 1 and item.parent is not None:
            unique = f"{item.parent.nodeid}::{item.name}"
            if hasattr(item, "_id"):  # pytest 9 keeps a structured node id (its `parse` reads the string form)
                item._id = type(item._id).parse(unique)
            else:
                item._nodeid = unique
    left = sorted(nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1)
    if left:
        raise pytest.UsageError(f"tests share a node id (pytest-xdist would run only one of each): {left}")

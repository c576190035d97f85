"""An in-process daemon driving a pool of fake ComfyUI servers ("pool"-tagged, remote), for the tests
that render through `[[backends]]` from the command line or the studio."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sidecar.config.backends import BackendSpec
from sidecar.config import Settings
from tests.conftest_comfy import free_port
from tests.fake_comfyui import FakeComfyUI, make_comfy_home
from tests.pipeline_daemon import DaemonThread
from tests.scripted_backend import ScriptedBackend


@contextlib.contextmanager
def comfy_pool(tmp_path: Path, delays: dict[str, float], *, probe_interval: float = 0.5,
               **spec: Any) -> Iterator[tuple[DaemonThread, dict[str, FakeComfyUI]]]:
    """Fake ComfyUIs named by `delays` (seconds per step), each a backend (`spec`: more BackendSpec
    fields), and a daemon on them; stopped in order: the daemon (their client) first, then the servers."""
    fakes = {name: FakeComfyUI(make_comfy_home(tmp_path / name), port=free_port(), step_delay=delay,
                               device_type="cuda") for name, delay in delays.items()}
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2,
                        backend_probe_interval=probe_interval,
                        backends=[BackendSpec(name=n, kind="comfyui", url=f.url, tags=("pool",), local=False, **spec)
                                  for n, f in fakes.items()])
    d = DaemonThread(settings, ScriptedBackend())
    d._thread.start()
    for fake in fakes.values():
        d.call(fake.start())
    d.call(d._start())
    try:
        yield d, fakes
    finally:
        if d._runner is not None:
            d.call(d._runner.cleanup())
            d._runner = None
        for fake in fakes.values():
            d.call(fake.stop())
        d.stop()

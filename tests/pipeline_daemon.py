"""The real sidecar daemon for the pipeline stage's tests: `create_app` served on a free local port from
its own thread and event loop, so `generate` (sync, with its own `asyncio.run`) can talk to it over
real HTTP + WebSocket from the test's thread or from subprocesses.

`SeededBackend` stands in for an engine where the tests need deterministic, seed-dependent pixels
(same workflow -> same image, another seed -> another image) without torch.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from sidecar.api.app import create_app
from sidecar.assets import EXAMPLE_CHAPTER, asset_path
from sidecar.backend import RunContext, RunResult
from sidecar.config import Settings
from sidecar.inputs import input_dir
from tests.scripted_backend import ScriptedBackend

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PROJECT = asset_path(EXAMPLE_CHAPTER)


class SeededBackend(ScriptedBackend):
    """ScriptedBackend's timing and failure script, with pixels drawn from the KSampler seed and the
    positive prompt, so a reproduced workflow gives the identical image."""

    data_dir: Path | None = None  # the daemon's, where an img2img job's init image is (set by a test)

    async def run(self, ctx: RunContext) -> RunResult:
        result = await super().run(ctx)
        nodes = ctx.workflow.values()
        sampler = next(n for n in nodes if n["class_type"] == "KSampler")["inputs"]
        latent = next((n["inputs"] for n in nodes if n["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage")),
                      None)
        if latent is None:  # img2img: the size of the init image the daemon stored (fitted to the job's size)
            assert self.data_dir is not None, "an img2img job on SeededBackend needs its data_dir"
            stored = next(n["inputs"]["image"] for n in nodes if n["class_type"] == "LoadImage")
            with Image.open(input_dir(self.data_dir) / stored) as init:
                latent = {"width": init.width, "height": init.height}
        text = ctx.workflow[sampler["positive"][0]]["inputs"]["text"]
        rng = np.random.default_rng([int(sampler["seed"]) % 2**63, zlib.crc32(text.encode())])
        cells = rng.integers(0, 256, (latent["height"] // 8, latent["width"] // 8, 3), dtype=np.uint8)
        Image.fromarray(cells.repeat(8, 0).repeat(8, 1), "RGB").save(ctx.output_path)
        return result


class DaemonThread:
    """A running daemon. `call(coro)` runs a coroutine on its loop (to reach its app state)."""

    def __init__(self, settings: Settings, backend: Any):
        self.settings = settings
        self.backend = backend
        self.app = create_app(settings, backend)
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="sidecar-test-daemon", daemon=True)
        self.url = ""

    def start(self) -> DaemonThread:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app)  # the app carries its request limits
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def jobs(self) -> list[dict[str, Any]]:
        from sidecar.api.keys import RUNNER
        from sidecar.api.responses import Job

        async def listed() -> list[dict[str, Any]]:
            return [Job.from_record(j).model_dump(mode="json", by_alias=True)
                    for j in await self.app[RUNNER].list(None, 500)]

        return self.call(listed())

    def wait_running(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The job list once the newest job is running (or when `timeout` runs out: callers assert)."""
        deadline = time.monotonic() + timeout
        jobs = self.jobs()
        while not (jobs and jobs[0]["status"] == "running") and time.monotonic() < deadline:
            time.sleep(0.02)
            jobs = self.jobs()
        return jobs


def copy_example(dest: Path) -> Path:
    """A fresh copy of the example chapter (the tests write into it)."""
    shutil.copytree(EXAMPLE_PROJECT, dest)
    return dest


def run_generate_subprocess(args: list[str], *, env: dict[str, str] | None = None,
                            driver: str | None = None, timeout: float = 120) -> subprocess.Popen:
    """Start `python -m pipeline_stage ARGS` (or a driver script that wraps it) in its own process."""
    cmd = [sys.executable, "-c", driver, *args] if driver else [sys.executable, "-m", "pipeline_stage", *args]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# -- page 3 of the example chapter on a real embedded engine (tiny models): drafts and more-like --------

PAGE3 = "+++\nseed = 500\nsteps = 2\nwidth = 64\nheight = 64\nsampler = \"euler\"\n+++\nspyke_plasma_v1, standing\n"


@pytest.fixture(scope="module", name="daemon")
def embedded_daemon(tmp_path_factory: pytest.TempPathFactory, engine_models: Path):
    """One in-process daemon on the embedded engine for a test module (import it to use it)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), engine="embedded", device="cpu",
                        models_dir=engine_models, checkpoint="tiny-sd15.safetensors")
    d = DaemonThread(settings, None).start()
    yield d
    d.stop()


@pytest.fixture(name="project")
def page3_project(tmp_path: Path) -> Path:
    root = copy_example(tmp_path / "project")
    (root / "prompts/ch-01/ch01_p003.txt").write_text(PAGE3)
    return root


def generate(project: Path, url: str, *args: str):
    """`generate --comfyui --root PROJECT --daemon URL ARGS...` in process."""
    from click.testing import CliRunner

    from pipeline_stage.cli import main

    return CliRunner().invoke(main, ["--comfyui", "--root", str(project), "--daemon", url, *args])

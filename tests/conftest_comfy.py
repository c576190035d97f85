"""Fixtures for everything that talks to ComfyUI: the fake server, settings and a started backend.

Registered from `tests/conftest.py` with `pytest_plugins = ["tests.conftest_comfy"]`.

- `comfy_home`: a directory shaped like a ComfyUI install (models/checkpoints|loras|controlnet with the
  default job models, input/, output/).
- `fake_comfy`: a started `FakeComfyUI` serving `comfy_home` on a free local port (attach mode).
- `comfy_settings`: `Settings` attached to `fake_comfy`, with short poll/deadline values for tests.
- `comfy_backend`: a started `ComfyBackend(comfy_settings)` whose WebSocket is open; stopped after.
- `fake_comfy_install`: `comfy_home` plus a `main.py` that runs the fake server with ComfyUI's flags,
  for managed mode (`comfyui_dir` = it, `comfyui_python` = the `comfy_python` fixture).
- `comfy_python`: an executable running this interpreter (survives `Settings`' symlink resolution).

Helpers: `workflow(name, steps=, seed=, **slots)` fills a repo template; `make_job(tmp_path, workflow)`
builds a `RunContext` that records progress and prompt ids (`Job.progress`, `Job.prompt_ids`).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sidecar.assets import WORKFLOWS, asset_path
from sidecar.backend import RunContext
from sidecar.comfyui.backend import ComfyBackend
from sidecar.config import Settings
from sidecar.workflows import load_templates
from tests.fake_comfyui import FakeComfyUI, make_comfy_home

TESTS_DIR = Path(__file__).resolve().parent

FAKE_MAIN = """\
# A stand-in for ComfyUI's main.py: runs the fake server with the flags the daemon passes.
import runpy, sys
sys.path.insert(0, {tests!r})
runpy.run_path({fake!r}, run_name="__main__")
"""


@functools.cache
def templates() -> dict[str, Any]:
    return load_templates(asset_path(WORKFLOWS))


def workflow(name: str = "txt2img-lora", *, steps: int = 3, seed: int = 1, **slots: Any) -> dict[str, Any]:
    """A repo template filled the way the job builder fills it (exactly the given slots)."""
    return templates()[name].fill({"steps": steps, "seed": seed, **slots})


@dataclass
class Job:
    """A RunContext plus what the backend reported through its callbacks."""

    ctx: RunContext
    progress: list[tuple[int, int]] = field(default_factory=list)
    prompt_ids: list[str] = field(default_factory=list)
    workflows: list[dict[str, Any]] = field(default_factory=list)  # recorded through on_workflow
    queued: list[int | None] = field(default_factory=list)  # on_queued reports


def make_job(tmp_path: Path, wf: dict[str, Any], *, job_id: str = "job1", prompt_id: str | None = None,
             pose: Path | None = None) -> Job:
    progress: list[tuple[int, int]] = []
    prompt_ids: list[str] = []
    workflows: list[dict[str, Any]] = []
    queued: list[int | None] = []

    async def on_prompt_id(pid: str) -> None:
        prompt_ids.append(pid)

    async def on_workflow(graph: dict[str, Any]) -> None:
        workflows.append(graph)

    ctx = RunContext(job_id=job_id, workflow=wf, output_path=tmp_path / "outputs" / f"{job_id}.png",
                     on_progress=lambda step, total: progress.append((step, total)),
                     on_prompt_id=on_prompt_id, cancel_event=asyncio.Event(), prompt_id=prompt_id, pose_image=pose,
                     on_workflow=on_workflow, on_queued=queued.append)
    return Job(ctx, progress, prompt_ids, workflows, queued)


def write_fake_main(comfy_dir: Path, body: str | None = None) -> Path:
    """Write `main.py` into `comfy_dir`: the fake ComfyUI, or any other script `body` (a crash, a hang)."""
    main = comfy_dir / "main.py"
    main.write_text(body if body is not None else FAKE_MAIN.format(
        tests=str(TESTS_DIR), fake=str(TESTS_DIR / "fake_comfyui.py")))
    return main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def comfy_home(tmp_path: Path) -> Path:
    return make_comfy_home(tmp_path / "ComfyUI")


@pytest.fixture
async def fake_comfy(comfy_home: Path) -> AsyncIterator[FakeComfyUI]:
    fake = FakeComfyUI(comfy_home)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def comfy_settings(tmp_path: Path, fake_comfy: FakeComfyUI) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        engine="comfyui",
        comfyui_url=fake_comfy.url,
        history_poll_interval=0.2,
        job_inactivity_timeout=30.0,
        comfyui_unavailable_deadline=5.0,
    )


@pytest.fixture
async def comfy_backend(comfy_settings: Settings) -> AsyncIterator[ComfyBackend]:
    backend = ComfyBackend(comfy_settings)
    await backend.start()
    # Tests start from a daemon that already holds its WebSocket (as after any real start-up).
    assert await backend.client.wait_connected(10), "the backend's WebSocket did not open"
    yield backend
    await backend.stop()


@pytest.fixture
def fake_comfy_install(comfy_home: Path) -> Path:
    write_fake_main(comfy_home)
    return comfy_home


def python_wrapper(directory: Path) -> Path:
    """An executable that runs this interpreter. `Settings` resolves symlinks in `comfyui_python`, and a
    venv's python is a symlink whose target knows nothing of the venv: a wrapper script survives that."""
    directory.mkdir(parents=True, exist_ok=True)
    wrapper = directory / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture
def comfy_python(tmp_path: Path) -> Path:
    return python_wrapper(tmp_path / "venv-bin")

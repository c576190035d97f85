"""Fixtures for the embedded-engine tests: one tiny random model set per session, made by the real
`sidecar models make-tiny` command, and helpers that fill our workflow templates and run them through
`EmbeddedBackend` directly. Registered from tests/conftest.py via `pytest_plugins`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_CHECKPOINT = "tiny-sd15.safetensors"
TINY_LORA = "tiny-lora.safetensors"
TINY_CONTROLNET = "tiny-controlnet.safetensors"


@pytest.fixture(scope="session")
def engine_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir (checkpoints/, loras/, controlnet/) with the tiny set, shared by the session: made
    once, by whichever pytest-xdist worker asks first (the others wait on a file lock and reuse it).
    Tests must not write into it; copy it (see `models_copy`) to change a file."""
    from filelock import FileLock

    from sidecar.cli import main

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # a worker's temp dir is inside the session's, which every worker shares
    out, made = base / "engine-models", base / "engine-models.made"
    with FileLock(str(base / "engine-models.lock")):
        if not made.is_file():  # a worker that failed half-way leaves no mark: the next one starts over
            shutil.rmtree(out, ignore_errors=True)
            result = CliRunner().invoke(main, ["models", "make-tiny", "--out", str(out)])
            assert result.exit_code == 0, result.output
            made.touch()
    return out


TINY_SDXL = "tiny-sdxl.safetensors"
TINY_SDXL_LORA = "tiny-sdxl-lora.safetensors"
# A second LoRA for stacks: the first's up weights with their rows reversed.
TINY_SDXL_LORA_B = "tiny-sdxl-lora-b.safetensors"


@pytest.fixture(scope="session")
def sdxl_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the tiny SDXL checkpoint and LoRA (made by `sidecar models make-tiny --family
    sdxl`) and a second LoRA, shared by the session as `engine_models` is. Tests must not write into it."""
    from filelock import FileLock
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sidecar.cli import main

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    out, made = base / "sdxl-models", base / "sdxl-models.made"
    with FileLock(str(base / "sdxl-models.lock")):
        if not made.is_file():
            shutil.rmtree(out, ignore_errors=True)
            result = CliRunner().invoke(main, ["models", "make-tiny", "--family", "sdxl", "--out", str(out)])
            assert result.exit_code == 0, result.output
            with safe_open(str(out / "loras" / TINY_SDXL_LORA), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k).flip(0) if k.endswith(".lora_up.weight") else f.get_tensor(k)
                           for k in f.keys()}
            save_file(tensors, str(out / "loras" / TINY_SDXL_LORA_B), metadata=meta)
            made.touch()
    return out


@pytest.fixture(scope="session")
def pose_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stick-figure pose image (white lines on black, as OpenPose renders), not the output size."""
    path = tmp_path_factory.mktemp("pose") / "pose.png"
    img = np.zeros((300, 200, 3), dtype=np.uint8)
    img[40:260, 95:105] = (255, 255, 255)
    img[100:110, 30:170] = (255, 0, 0)
    img[250:290, 60:140] = (0, 255, 0)
    Image.fromarray(img).save(path)
    return path


def fill(template: str, **slots: Any) -> dict[str, Any]:
    """A shipped template (sidecar/assets/workflows/) with the manifest's slots filled, as the job builder fills them."""
    from sidecar.assets import WORKFLOWS, asset_path
    from sidecar.workflows import load_templates

    tpl = load_templates(asset_path(WORKFLOWS))[template]
    values: dict[str, Any] = {"checkpoint_name": TINY_CHECKPOINT, "prompt_text": "spyke_plasma_v1, standing",
                              "negative_prompt": "lowres, blurry", "seed": 1, "steps": 4, "width": 64,
                              "height": 96, "sampler_name": "euler", "scheduler": "normal", "cfg": 7.0,
                              "denoise": 1.0, "batch_size": 1}
    if tpl.has_slot("lora_name"):
        values.update(lora_name=TINY_LORA, lora_strength=1.0)
    if tpl.has_slot("controlnet_name"):
        values.update(controlnet_name=TINY_CONTROLNET, controlnet_strength=0.65, pose_image="pose.png")
    values.update(slots)
    return tpl.fill({k: v for k, v in values.items() if tpl.has_slot(k)})


@dataclass
class Ran:
    path: Path
    progress: list[tuple[int, int]] = field(default_factory=list)

    @property
    def pixels(self) -> np.ndarray:
        with Image.open(self.path) as img:
            return np.asarray(img.convert("RGB")).copy()


@pytest.fixture
async def engine(tmp_path: Path, engine_models: Path) -> AsyncIterator[Any]:
    """A started EmbeddedBackend on the CPU over the tiny models."""
    from sidecar.config import Settings
    from sidecar.engine.backend import EmbeddedBackend

    settings = Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=engine_models,
                        checkpoint=TINY_CHECKPOINT, controlnet_model=TINY_CONTROLNET)
    backend = EmbeddedBackend(settings)
    await backend.start()
    yield backend
    await backend.stop()


@pytest.fixture
def render(engine: Any, tmp_path: Path) -> Callable[..., Any]:
    """`await render(workflow, pose=None, cancel_at=None, progress=None)` -> Ran (output PNG + progress
    reports, also appended to `progress` when given). `cancel_at=N` cancels the job from its N-th
    progress report, as the runner would (on the loop)."""
    from sidecar.backend import RunContext

    counter = iter(range(10_000))

    async def run(workflow: dict[str, Any], pose: Path | None = None, cancel_at: int | None = None,
                  progress: list[tuple[int, int]] | None = None) -> Ran:
        ran = Ran(tmp_path / f"out-{next(counter)}.png", progress if progress is not None else [])
        loop = asyncio.get_running_loop()
        cancel = asyncio.Event()

        def on_progress(step: int, total: int) -> None:  # called from the engine's worker thread
            ran.progress.append((step, total))
            if cancel_at is not None and step == cancel_at:
                # Cancel on the event loop, as POST /jobs/{id}/cancel does, and wait until it is set:
                # the engine must then stop before its next step.
                asyncio.run_coroutine_threadsafe(_set(cancel), loop).result(timeout=10)

        async def on_prompt_id(_: str) -> None:
            return None

        ctx = RunContext(job_id="test", workflow=workflow, output_path=ran.path, on_progress=on_progress,
                         on_prompt_id=on_prompt_id, cancel_event=cancel, pose_image=pose)
        result = await engine.run(ctx)
        assert result.output_path == ran.path
        return ran

    return run


async def _set(event: asyncio.Event) -> None:
    event.set()

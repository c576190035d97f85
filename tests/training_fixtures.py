"""Fixtures shared by the training tests: a captioned dataset, a kohya install made of the fake
trainer (`tests/fake_trainer.py` as `train_network.py`, run by this venv's python), a base model
file, and the app built on them. Import the fixtures you use by name.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend

TRIGGER = "spyke_plasma_v1"
FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"
CAPTIONS = [
    f"{TRIGGER}, full body, standing, plain background",
    f"{TRIGGER}, upper body, smiling, plain background",
    f"{TRIGGER}, portrait, looking at viewer, white background",
]


def make_dataset(folder: Path, captions: list[str] = CAPTIONS, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, caption in enumerate(captions):
        Image.new("RGB", (size, size), (40 * i, 120, 200 - 40 * i)).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "dataset")


@pytest.fixture
def kohya_dir(tmp_path: Path) -> Path:
    """A kohya_ss checkout as the GUI installs it: `sd-scripts/train_network.py` and `venv/bin/python`."""
    root = tmp_path / "kohya_ss"
    (root / "sd-scripts").mkdir(parents=True)
    for script in ("train_network.py", "sdxl_train_network.py", "flux_train_network.py"):
        (root / "sd-scripts" / script).symlink_to(FAKE_TRAINER)
    python = root / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    # A wrapper, not a symlink: the venv's python must be run by its venv path to see the venv.
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return root


@pytest.fixture
def settings(tmp_path: Path, kohya_dir: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", engine="embedded", kohya_dir=kohya_dir)
    base = s.models_path / "checkpoints"
    base.mkdir(parents=True)
    (base / s.checkpoint).write_bytes(b"not a real model: the fake trainer only checks it exists")
    return s


@pytest.fixture
def fake_env(monkeypatch, tmp_path: Path) -> dict[str, Path]:
    """Knobs of the fake trainer; files it reports back through."""
    monkeypatch.setenv("FAKE_KOHYA_STEP_SECONDS", "0.01")
    paths = {"pids": tmp_path / "trainer.pids", "argv": tmp_path / "trainer.argv.json",
             "env": tmp_path / "trainer.env.json"}
    monkeypatch.setenv("FAKE_KOHYA_PIDFILE", str(paths["pids"]))
    monkeypatch.setenv("FAKE_KOHYA_ARGV_FILE", str(paths["argv"]))
    monkeypatch.setenv("FAKE_KOHYA_ENV_FILE", str(paths["env"]))
    # Unset here, so what the trainer sees of them is what the daemon gave it, not the test runner's.
    for name in ("PYTORCH_ENABLE_MPS_FALLBACK", "PYTHONUNBUFFERED"):
        monkeypatch.delenv(name, raising=False)
    return paths


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def client(aiohttp_client, settings, backend, fake_env):
    return await aiohttp_client(create_app(settings, backend))


async def wait_run(client, run_id: str, statuses: set[str], timeout: float = 30) -> dict:
    body: dict = {}
    for _ in range(int(timeout / 0.05)):
        body = await (await client.get(f"/loras/{run_id}/status")).json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} stayed {body.get('status')}: {body}")


async def wait_for(predicate, timeout: float = 30, what: str = "condition") -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def start_training(client, dataset_dir: Path, **body) -> dict:
    # Tiny sets of 64 px images exercise the trainers, not the quality gate: past it with force.
    payload = {"datasetDir": str(dataset_dir), "outputName": "spyke", "steps": 6, "saveEveryNSteps": 2, "force": True,
               "engine": "kohya", **body}
    resp = await client.post("/loras/train", json=payload)
    assert resp.status == 202, await resp.text()
    return await resp.json()

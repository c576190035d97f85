"""A cancel, or the daemon stopping (SIGTERM runs the same shutdown), is noticed at once in every phase
of the embedded trainer, including while it caches the latents of a big dataset (5,000 images took
31-38 s to stop before): the run ends cancelled (or interrupted) with no checkpoint and no state, and
caching never reaches its end. Real torch on the tiny models; no timing asserts."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from PIL import Image

from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.engine.tiny import CHECKPOINT
from sidecar.errors import JobCancelled
from sidecar.training.dataset import load_dataset
from sidecar.training.embedded import EmbeddedTrainer
from sidecar.training.spec import TrainerHooks, TrainJob, TrainSpec
from tests.scripted_backend import ScriptedBackend
from tests.training_fixtures import TRIGGER, dataset_dir, wait_run  # noqa: F401  (fixtures)

pytestmark = pytest.mark.engine
IMAGES = 1500  # at 64 px on the tiny VAE: seconds of caching, far more than a cancel needs
BODY = {"engine": "embedded", "steps": 4, "saveEveryNSteps": 2, "resolution": 64, "networkDim": 4,
        "networkAlpha": 2, "learningRate": 0.05, "seed": 5, "checkpoint": CHECKPOINT}


@pytest.fixture
def settings(tmp_path: Path, engine_models: Path) -> Settings:
    models = tmp_path / "models"
    shutil.copytree(engine_models, models)
    return Settings(data_dir=tmp_path / "data", engine="embedded", device="cpu", models_dir=models,
                    checkpoint=CHECKPOINT)


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("big") / "dataset"
    folder.mkdir()
    for i in range(IMAGES):
        Image.new("RGB", (8, 8), (i % 256, (i * 7) % 256, 120)).save(folder / f"img{i:05d}.png")
        (folder / f"img{i:05d}.txt").write_text(f"{TRIGGER}, pose {i}\n", encoding="utf-8")
    return folder


async def start_and_wait_for_caching(client, dataset: Path, name: str) -> tuple[dict, list[str]]:
    resp = await client.post("/loras/train", json={"datasetDir": str(dataset), "force": True, "outputName": name, **BODY})
    assert resp.status == 202, await resp.text()
    run = await resp.json()
    for _ in range(6000):
        status = await (await client.get(f"/loras/{run['id']}/status")).json()
        caching = [line for line in status["logTail"] if line.startswith("caching latents:")]
        if caching:
            return run, caching
        assert status["status"] in ("queued", "running"), status
        await asyncio.sleep(0.02)
    raise AssertionError("the trainer never reported caching progress")


def cached_counts(lines: list[str]) -> list[int]:
    return [int(line.split()[2].split("/")[0]) for line in lines if line.startswith("caching latents:")]


async def test_cancel_while_latents_are_cached_ends_the_run_at_once(aiohttp_client, settings, big_dataset):
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    run, _ = await start_and_wait_for_caching(client, big_dataset, "big")
    assert (await client.post(f"/loras/{run['id']}/cancel")).status == 202
    stopped = await wait_run(client, run["id"], {"cancelled", "succeeded", "failed"}, timeout=120)
    assert stopped["status"] == "cancelled" and stopped["step"] == 0 and stopped["checkpoints"] == []
    out = Path(stopped["outputDir"])
    assert not (out / "big-state").exists() and not (out / "big.safetensors").exists()
    assert not list(out.glob(".big-state*"))  # no half-written state folder either
    log = stopped["logTail"]
    assert cached_counts(log) and max(cached_counts(log)) < IMAGES  # caching stopped part-way
    assert not any(line.startswith("cached latents of") for line in log)


async def test_the_daemon_stopping_while_latents_are_cached_leaves_the_run_interrupted(
        aiohttp_client, settings, big_dataset):
    client = await aiohttp_client(create_app(settings, ScriptedBackend()))
    run, _ = await start_and_wait_for_caching(client, big_dataset, "big")
    await client.close()  # what SIGTERM does to `sidecar serve`: the app's shutdown
    with sqlite3.connect(settings.db_path) as conn:
        status, step, code = conn.execute("SELECT status, step, error_code FROM training_runs WHERE id = ?",
                                          (run["id"],)).fetchone()
        checkpoints = conn.execute("SELECT COUNT(*) FROM training_checkpoints WHERE run_id = ?",
                                   (run["id"],)).fetchone()[0]
    assert (status, step, code, checkpoints) == ("interrupted", 0, "interrupted", 0)


async def test_a_cancel_while_the_base_model_loads_is_noticed_without_waiting_for_it(tmp_path, settings,
                                                                                        dataset_dir):
    """The loader stands for a checkpoint that takes long to read: the trainer stops waiting at once."""
    release = threading.Event()
    loading = threading.Event()

    def slow_loader(path: Path):
        loading.set()
        release.wait(60)
        raise RuntimeError("the test released the loader")

    spec = TrainSpec(output_name="spyke", dataset_dir=str(dataset_dir), steps=2, resolution=64, network_dim=4,
                     network_alpha=2.0, learning_rate=0.05, save_every=2, seed=5, engine="embedded",
                     trigger_word=TRIGGER, checkpoint=CHECKPOINT)
    work = tmp_path / "run"
    work.mkdir()
    job = TrainJob("r1", spec, load_dataset(dataset_dir, TRIGGER), work, work / "out",
                   settings.models_path / "checkpoints" / CHECKPOINT)
    cancel = asyncio.Event()
    hooks = TrainerHooks(progress=lambda *a: None, checkpoint=lambda *a: None, log=lambda _: None,
                         warning=lambda _: None, cancel=cancel)
    task = asyncio.ensure_future(EmbeddedTrainer(settings, loader=slow_loader).run(job, hooks))
    await asyncio.to_thread(loading.wait, 60)
    cancel.set()
    try:
        with pytest.raises(JobCancelled):
            await asyncio.wait_for(task, 30)  # generous: without the fix it waits for the loader (60 s)
    finally:
        release.set()

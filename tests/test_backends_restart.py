"""Several backends across a daemon restart: a job recovered onto a backend that never comes back is
handed over after `backend_recovery_timeout` (re-queued once elsewhere, or failed `backend_gone`), and
the prompts to interrupt on a backend that went away outlive the restart, so a server cut off while it
rendered a job that re-ran elsewhere is stopped when it is reachable again, even by the next daemon."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from sidecar.api.app import create_app
from sidecar.config.backends import BackendSpec
from sidecar.config import Settings
from tests.fake_comfyui import FakeComfyUI
from tests.scripted_backend import ScriptedBackend
from tests.test_api_jobs import wait_status
from tests.test_backends_health import pair, wait_state  # noqa: F401  (fixture)
from tests.test_backends_routing import overlaps


def settings_for(tmp_path: Path, pair: dict[str, FakeComfyUI], **extra) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", engine="embedded", history_poll_interval=0.2, comfyui_unavailable_deadline=2,
        backend_probe_interval=0.2, default_where="pool",
        backends=[BackendSpec(name=name, kind="comfyui", url=fake.url, profile="cuda-24gb", tags=("pool",),
                              local=False) for name, fake in pair.items()], **extra)


@asynccontextmanager
async def daemon(settings: Settings):
    async with TestClient(TestServer(create_app(settings, ScriptedBackend()))) as client:
        yield client


async def submit(client, where: str, seed: int) -> dict:
    resp = await client.post("/jobs", json={"prompt": f"page {seed}", "steps": 4, "seed": seed, "where": where})
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def test_a_recovered_job_whose_backend_stays_away_reruns_once_elsewhere(tmp_path, pair) -> None:
    alpha, beta = pair["alpha"], pair["beta"]
    settings = settings_for(tmp_path, pair, backend_recovery_timeout=0.5)
    alpha.pause_at(2)
    beta.pause_at(2)
    async with daemon(settings) as client:
        held = await submit(client, "beta", 1)  # beta busy: the pool job goes to alpha
        await beta.wait_paused()
        page = await submit(client, "pool", 2)
        await alpha.wait_paused()
        assert (await (await client.get(f"/jobs/{page['id']}")).json())["backend"] == "alpha"
    [lost_prompt] = alpha.accepted
    await alpha.kill()  # gone while the daemon is down, and it stays away
    beta.resume()  # beta finishes its job meanwhile: collected after the restart

    async with daemon(settings) as client:
        done_held = await wait_status(client, held["id"], {"succeeded", "failed"}, timeout=20)
        done = await wait_status(client, page["id"], {"succeeded", "failed"}, timeout=20)
        assert (done_held["status"], done_held["backend"], done_held["attempts"]) == ("succeeded", "beta", 0)
        assert (done["status"], done["backend"], done["attempts"]) == ("succeeded", "beta", 1)
        assert beta.prompt_posts == 2 and len(beta.history) == 2 and overlaps(beta) == []

        await alpha.restart()  # it comes back at last: the prompt taken from it is stopped there first
        await wait_state(client, "alpha", "up")
        assert lost_prompt in alpha.interrupts
        assert alpha.prompt_posts == 1  # nothing posted to it again


async def test_a_recovered_job_only_its_absent_backend_admits_fails_backend_gone(tmp_path, pair) -> None:
    alpha, beta = pair["alpha"], pair["beta"]
    settings = settings_for(tmp_path, pair, backend_recovery_timeout=0.3)
    alpha.pause_at(2)
    async with daemon(settings) as client:
        job = await submit(client, "alpha", 3)
        await alpha.wait_paused()
    await alpha.kill()
    async with daemon(settings) as client:
        failed = await wait_status(client, job["id"], {"succeeded", "failed", "queued"}, timeout=20)
        assert failed["status"] == "failed" and failed["error"]["code"] == "backend_gone"
        assert failed["error"]["details"]["backend"] == "alpha"
        assert "backend_recovery_timeout" in failed["error"]["message"]
    assert beta.prompt_posts == 0


async def test_a_cut_off_backend_is_told_to_stop_the_rerun_job_even_after_a_daemon_restart(tmp_path, pair) -> None:
    alpha, beta = pair["alpha"], pair["beta"]
    settings = settings_for(tmp_path, pair)
    alpha.pause_at(2)
    async with daemon(settings) as client:
        job = await submit(client, "pool", 4)  # both free: whichever it lands on is cut off
        await alpha.wait_for(lambda: alpha.running_id is not None or beta.running_id is not None)
        cut, other = (alpha, beta) if alpha.running_id is not None else (beta, alpha)
        cut.pause_at(2)
        names = {id(alpha): "alpha", id(beta): "beta"}
        [prompt] = cut.accepted
        await cut.unplug()  # unreachable, yet it goes on holding the prompt
        done = await wait_status(client, job["id"], {"succeeded", "failed"}, timeout=20)
        assert (done["status"], done["attempts"], done["backend"]) == ("succeeded", 1, names[id(other)])
    assert cut.running_id == prompt  # still rendering there, for nobody

    async with daemon(settings) as client:  # a new daemon: only the job database remembers that prompt
        await cut.plug()
        await cut.wait_for(lambda: prompt in cut.interrupts)
        cut.resume()
        await cut.wait_for(lambda: cut.running_id is None)
        await wait_state(client, names[id(cut)], "up")
    status = cut.history[prompt]["status"]
    assert status["status_str"] == "error" and not status["completed"]  # interrupted, never finished there
    assert len(other.history) == 1  # the page rendered once, on the other server


async def test_a_recovered_job_already_rerun_once_fails_lost_on_restart_when_its_backend_stays_away(
        tmp_path, pair) -> None:
    alpha, beta = pair["alpha"], pair["beta"]
    settings = settings_for(tmp_path, pair, backend_recovery_timeout=0.3)
    alpha.pause_at(2)
    beta.pause_at(2)
    async with daemon(settings) as client:
        job = await submit(client, "pool", 5)  # both free: it lands on one, which dies under it
        await alpha.wait_for(lambda: alpha.running_id is not None or beta.running_id is not None)
        first, second = (alpha, beta) if alpha.running_id is not None else (beta, alpha)
        await first.kill()
        await second.wait_paused()  # re-run once, on the other: held there while the daemon stops
        rerun = await (await client.get(f"/jobs/{job['id']}")).json()
        assert (rerun["status"], rerun["attempts"]) == ("running", 1)
    await second.kill()
    await first.restart()  # the first one is back, the one holding the re-run is not
    async with daemon(settings) as client:
        failed = await wait_status(client, job["id"], {"succeeded", "failed", "queued"}, timeout=20)
    assert (failed["status"], failed["error"]["code"], failed["attempts"]) == ("failed", "lost_on_restart", 1)
    assert "re-queued once" in failed["error"]["message"]
    assert first.prompt_posts == 1 and len(first.history) == 0  # not run a third time

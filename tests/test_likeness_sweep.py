"""The checkpoint sweep ranks by likeness and names a pick (LORA-02): a run with two checkpoints, swept through
the daemon in-process over real HTTP (the fake trainer, a scripted renderer that draws the character for
one checkpoint and a stranger for the other, the tiny likeness model, the example project with a reference
set). `--promote-best` installs the pick; without references the sweep still renders and says why it
could not rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.likeness_fixtures import FigureBackendMixin, add_references, staged_step, tiny_likeness_models
from sidecar.api.app import create_app
from sidecar.config import Settings
from sidecar.loras import sweep as sweep_mod
from tests.pipeline_daemon import copy_example
from tests.test_training_sweep import FolderBackend, invoke, trained_run, url_of
from tests.training_fixtures import dataset_dir, fake_env, kohya_dir  # noqa: F401  (fixtures)

CHARACTER_STEP = 2  # the earlier checkpoint draws her; the later one has drifted into a stranger


class SweepFigures(FigureBackendMixin, FolderBackend):
    def is_character(self, seed: int, lora: str | None) -> bool:
        return staged_step(lora) == CHARACTER_STEP

    async def run(self, ctx):
        result = await super().run(ctx)
        self.draw(ctx)
        return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = copy_example(tmp_path / "project")
    add_references(root)
    return root


@pytest.fixture
def settings(tmp_path: Path, kohya_dir: Path, project: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", engine="embedded", kohya_dir=kohya_dir, project_root=project,
                 likeness_model="ccip-tiny")
    (s.models_path / "checkpoints").mkdir(parents=True)
    (s.models_path / "checkpoints" / s.checkpoint).write_bytes(b"not a real model: the fake trainer checks it exists")
    tiny_likeness_models(s.models_path)
    return s


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {"SIDECAR_DATA_DIR": str(settings.data_dir), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "SIDECAR_ENGINE": "embedded"}


async def _daemon(aiohttp_client, settings: Settings):
    backend = SweepFigures(settings.models_path / "loras")
    client = await aiohttp_client(create_app(settings, backend))
    client.backend = backend
    return client


async def test_sweep_ranks_checkpoints_by_likeness_and_promotes_the_pick(aiohttp_client, settings, fake_env,
                                                                         dataset_dir, env, tmp_path) -> None:
    daemon = await _daemon(aiohttp_client, settings)
    run = await trained_run(daemon, dataset_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("spyke_plasma_v1, standing\n")
    out = tmp_path / "sweep"
    result = await invoke(["sweep", run["id"], "--prompts", str(prompts), "--seeds", "1,2", "--out", str(out),
                           "--cell", "64", "--width", "128", "--height", "192", "--baseline", "--promote-best",
                           *url_of(daemon), "--poll-interval", "0.02"], env)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert [r["step"] for r in index["ranking"]] == [CHARACTER_STEP, 4]  # the baseline is never ranked
    assert index["pick"]["step"] == CHARACTER_STEP and index["pick"]["shareSame"] == 1.0
    assert index["ranking"][1]["shareSame"] == 0.0
    assert all(c["likeness"]["scorer"] == "ccip-tiny" for c in index["cells"])
    assert f"pick: step {CHARACTER_STEP}" in result.output
    installed = settings.models_path / "loras" / f"{run['outputName']}.safetensors"
    assert installed.read_bytes() == Path(run["checkpoints"][0]["path"]).read_bytes()


async def test_sweep_without_references_renders_and_says_why_it_cannot_rank(
        aiohttp_client, settings, fake_env, dataset_dir, env, tmp_path, project) -> None:
    (project / "character.toml").write_text('trigger = "spyke_plasma_v1"\n')
    daemon = await _daemon(aiohttp_client, settings)
    run = await trained_run(daemon, dataset_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("spyke_plasma_v1\n")
    result = await invoke(["sweep", run["id"], "--prompts", str(prompts), "--seeds", "1", "--out",
                           str(tmp_path / "sweep"), "--cell", "64", "--promote-best", *url_of(daemon),
                           "--poll-interval", "0.02"], env)
    assert result.exit_code == 2, result.output
    assert "references_missing" in result.output and "not promoting" in result.output
    index = json.loads((tmp_path / "sweep" / "index.json").read_text())
    assert index["ranking"] == [] and index["pick"] is None and "references" in index["unranked"]
    assert all(c["status"] == "succeeded" for c in index["cells"])
    assert not (settings.models_path / "loras" / f"{run['outputName']}.safetensors").exists()


def _plan(scores: dict[int, list[float | None]]) -> sweep_mod.SweepPlan:
    """A plan whose cells a scripted judge has scored (None: the render failed)."""
    run = {"id": "r", "status": "succeeded", "outputName": "x",
           "checkpoints": [{"step": s, "path": f"/c{s}"} for s in scores]}
    plan = sweep_mod.plan_sweep(run, ["p"], list(range(len(next(iter(scores.values()))))), Path("/tmp/x"))
    for cell in plan.cells:
        value = scores[cell.step][cell.row]  # type: ignore[index]
        if value is None:
            cell.status = "failed"
        else:
            cell.status = "succeeded"
            cell.likeness = {"score": value, "verdict": "same" if value >= 0.5 else "different"}
    return plan


def test_ranking_picks_the_checkpoint_the_scorer_says_is_best() -> None:
    plan = _plan({100: [0.4, 0.45, 0.5], 200: [0.9, 0.8, 0.7], 300: [0.6, 0.55, 0.5]})
    ranking = sweep_mod.rank(plan)
    assert [r["step"] for r in ranking] == [200, 300, 100]
    assert ranking[0]["meanScore"] == pytest.approx(0.8) and ranking[0]["shareSame"] == 1.0


def test_a_failed_render_counts_against_its_checkpoint() -> None:
    plan = _plan({100: [0.7, 0.7, 0.7], 200: [0.95, 0.95, None]})
    ranking = sweep_mod.rank(plan)
    assert [r["step"] for r in ranking] == [100, 200] and ranking[1]["failures"] == 1


async def test_a_broken_image_counts_as_a_failure_and_the_rest_still_rank() -> None:
    from sidecar.errors import DaemonRefused

    class Judge:
        async def score_likeness(self, job_ids: list[str]) -> list[dict]:
            if "broken" in job_ids:
                raise DaemonRefused(400, "invalid_field", "images: not a decodable image")
            return [{"likeness": {"score": 0.8, "verdict": "same"}} for _ in job_ids]

    plan = _plan({100: [0.0, 0.0], 200: [0.0, 0.0]})
    for cell in plan.cells:
        cell.likeness = None
        cell.job_id = "broken" if (cell.step, cell.row) == (200, 0) else f"j{cell.step}-{cell.row}"
    await sweep_mod.score(plan, Judge())  # type: ignore[arg-type]
    assert [(r["step"], r["failures"]) for r in plan.ranking] == [(100, 0), (200, 1)]
    assert next(c for c in plan.cells if c.job_id == "broken").error.startswith("broken image")

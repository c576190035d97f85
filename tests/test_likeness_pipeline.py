"""Likeness through `generate` and a daemon whose project is the example chapter with a reference set (a
scripted renderer drawing the character, or a stranger for some seeds; the tiny likeness model): drafts
come back sorted by likeness, each new version's log entry records it, and the chapter's report names a
planted off-model page as drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.likeness_fixtures import FigureBackendMixin, add_references, tiny_likeness_models
from sidecar.config import Settings
from tests.pipeline_daemon import PAGE3, DaemonThread, copy_example, generate
from tests.scripted_backend import ScriptedBackend

STRANGER_SEEDS = {7, 501, 503}
DRAFTS = Path("output/ch-01/drafts/ch01_p003")
LOG = Path("output/ch-01/generation-log.json")


class Figures(FigureBackendMixin, ScriptedBackend):
    def is_character(self, seed: int, lora: str | None) -> bool:
        return seed not in STRANGER_SEEDS

    async def run(self, ctx):
        result = await super().run(ctx)
        self.draw(ctx)
        return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = copy_example(tmp_path / "project")
    (root / "prompts/ch-01/ch01_p003.txt").write_text(PAGE3)
    add_references(root)
    return root


@pytest.fixture
def daemon(tmp_path: Path, project: Path):
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project,
                        models_dir=tiny_likeness_models(tmp_path / "models"), likeness_model="ccip-tiny")
    d = DaemonThread(settings, Figures()).start()
    yield d
    d.stop()


def test_drafts_come_back_sorted_by_likeness(project: Path, daemon: DaemonThread) -> None:
    result = generate(project, daemon.url, "-c", "1", "--page", "3", "--drafts", "4", "--draft-steps", "1")
    assert result.exit_code == 0, result.output
    index = json.loads((project / DRAFTS / "index.json").read_text())
    by_number = {d["number"]: d for d in index["drafts"]}
    assert [d["seed"] for d in index["drafts"]] == [500, 501, 502, 503]
    assert all(d["likeness"]["scorer"] == "ccip-tiny" for d in index["drafts"])
    scores = [by_number[n]["likeness"]["score"] for n in index["ranking"]]
    assert scores == sorted(scores, reverse=True)
    assert {by_number[n]["seed"] for n in index["ranking"][:2]} == {500, 502}  # hers first
    assert {by_number[n]["likeness"]["verdict"] for n in index["ranking"][2:]} == {"different"}
    assert "most like the character: draft" in result.output
    assert (project / DRAFTS / "contact-sheet.png").is_file()


def _approve(project: Path, page: int):
    from pipeline_stage.cli import main

    return CliRunner().invoke(main, ["approve", "--root", str(project), "-c", "1", "--page", str(page), "--version", "1"])


def _consistency(project: Path, url: str, *args: str):
    from pipeline_stage.cli import main

    return CliRunner().invoke(main, ["consistency", "--root", str(project), "-c", "1", "--daemon", url, "--json",
                                     *args])


def test_versions_log_their_likeness_and_the_chapter_report_names_the_off_model_page(
        project: Path, daemon: DaemonThread) -> None:
    for page, seed in ((1, 11), (2, 7), (3, 12)):  # seed 7 draws a stranger: page 2 is off-model
        made = generate(project, daemon.url, "-c", "1", "--page", str(page), "--seed", str(seed))
        assert made.exit_code == 0, made.output
        approved = _approve(project, page)
        assert approved.exit_code == 0, approved.output
    entries = json.loads((project / LOG).read_text())
    assert [e["likeness"]["verdict"] for e in entries] == ["same", "different", "same"]
    assert all(set(e["likeness"]) == {"score", "verdict", "scorer", "weights"} for e in entries)

    report = _consistency(project, daemon.url)
    assert report.exit_code == 0, report.output
    body = json.loads(report.output)
    assert body["drift"] == ["ch01_p002"] and body["unscored"] == []
    written = json.loads((project / "output/ch-01/consistency/likeness.json").read_text())
    assert written["drift"] == ["ch01_p002"]


def test_an_approved_version_logged_without_likeness_is_scored_by_the_daemon(project: Path,
                                                                             daemon: DaemonThread) -> None:
    for page, seed in ((1, 11), (2, 7)):
        assert generate(project, daemon.url, "-c", "1", "--page", str(page), "--seed", str(seed)).exit_code == 0
        assert _approve(project, page).exit_code == 0
    entries = json.loads((project / LOG).read_text())
    for e in entries:
        del e["likeness"]  # as an older pipeline, or a daemon without a project, logged them
    (project / LOG).write_text(json.dumps(entries))
    body = json.loads(_consistency(project, daemon.url).output)
    assert body["unscored"] == [] and body["drift"] == ["ch01_p002"]
    offline = json.loads(_consistency(project, "http://127.0.0.1:9").output)
    assert offline["unscored"] == ["ch01_p001", "ch01_p002"] and offline["drift"] == []
    assert "daemon_unavailable" in offline["unscoredWhy"]


def test_drafts_without_a_reference_set_come_back_unranked_and_say_why(project: Path, daemon: DaemonThread) -> None:
    sheet = project / "character.toml"
    sheet.write_text(sheet.read_text().replace('references = ["refs/*.png"]\n', ""))
    result = generate(project, daemon.url, "-c", "1", "--page", "3", "--drafts", "2", "--draft-steps", "1")
    assert result.exit_code == 0, result.output
    index = json.loads((project / DRAFTS / "index.json").read_text())
    assert [d["likeness"] for d in index["drafts"]] == [None, None] and index["ranking"] == [1, 2]
    assert "not ranked by likeness" in result.output

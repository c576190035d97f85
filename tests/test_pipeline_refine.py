"""`generate -c 1 --page 1 --refine "..."` against the real daemon and a fake Ollama: every page is refined
through `POST /prompt/refine` before anything is submitted, the diff is shown, the page renders with the
refined prompt, the job and the log entry carry `refinedFrom`, `--write` rewrites the prompt file (front
matter kept) after the render, and an Ollama failure queues nothing and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import Settings
from tests.fake_ollama import DIGEST, FakeOllama, ollama_fake, ollama_server  # noqa: F401
from tests.pipeline_daemon import DaemonThread, SeededBackend, copy_example, read_json
from tests.test_pipeline_generate import generate, written

PAGE = Path("prompts/ch-01/ch01_p001.txt")
DUSK_TO_NIGHT = {"changes": [
    {"op": "replace", "region": "lighting", "tag": "standing on a rooftop at dusk",
     "replacement": "standing on a rooftop at night"},
    {"op": "remove", "region": "setting", "tag": "city skyline"},
    {"op": "replace", "region": "appearance", "tag": "bracer on right forearm", "replacement": "bare forearms"},
    {"op": "add", "region": "appearance", "tag": "bracer on left forearm"}], "summary": "night, emptier"}


@pytest.fixture
def daemon(tmp_path: Path, ollama_fake: FakeOllama):
    d = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded", ollama_url=ollama_fake.url,
                              ollama_timeout=5), SeededBackend()).start()
    yield d
    d.stop()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "project")


def test_refine_renders_the_refined_prompt_and_records_where_it_came_from(
        project: Path, daemon: DaemonThread, ollama_fake: FakeOllama) -> None:
    original = (project / PAGE).read_text()
    ollama_fake.answer(DUSK_TO_NIGHT)
    result = generate(project, daemon.url, "-c", "1", "--page", "1", "--refine", "make it night, less busy")
    assert result.exit_code == 0, result.output
    assert "- standing on a rooftop at dusk" in result.output and "+ standing on a rooftop at night" in result.output
    assert "refused replace 'bracer on right forearm'" in result.output
    assert "refused add 'bracer on left forearm'" in result.output  # the mirror of a locked trait
    entry = read_json(project / "output/ch-01/generation-log.json")[-1]
    refined = entry["refinedFrom"]
    assert refined["feedback"] == "make it night, less busy" and refined["modelDigest"] == DIGEST
    assert refined["originalPrompt"].startswith("spyke_plasma_v1, 1boy, full body, standing on a rooftop at dusk")
    assert refined["refinedPrompt"] == ("spyke_plasma_v1, 1boy, full body, standing on a rooftop at night, ginger "
                                        "hair, white cloak, bracer on right forearm, pauldron on left knee, wind in "
                                        "the cloak, manga style")
    job = daemon.jobs()[0]
    assert job["params"]["prompt"] == refined["refinedPrompt"] and job["params"]["refinedFrom"] == refined
    assert (project / PAGE).read_text() == original  # rendered with it, not written: no --write
    ollama_fake.answer(DUSK_TO_NIGHT)
    again = generate(project, daemon.url, "-c", "1", "--page", "1", "--refine", "make it night", "--write")
    assert again.exit_code == 0, again.output
    text = (project / PAGE).read_text()
    assert text.startswith("+++\n# Page 1: the establishing panel.") and "seed = 1234\n" in text
    assert text.endswith("standing on a rooftop at night, ginger hair, white cloak, bracer on right forearm, "
                         "pauldron on left knee, wind in the cloak, manga style\n")


@pytest.mark.parametrize(("setup", "exit_code", "words"), [("missing", 2, "ollama pull llama3.1:8b"),
                                                           ("malformed", 1, "answered twice")])
def test_an_ollama_failure_queues_nothing_and_writes_nothing(project: Path, daemon: DaemonThread,
                                                             ollama_fake: FakeOllama, setup: str, exit_code: int,
                                                             words: str) -> None:
    if setup == "missing":
        ollama_fake.models.clear()
    else:
        ollama_fake.answer("{}", "[]")
    before = (project / PAGE).read_bytes()
    result = generate(project, daemon.url, "-c", "1", "--pages", "1-2", "--refine", "night", "--write")
    assert result.exit_code == exit_code, result.output
    assert words in result.output
    assert daemon.jobs() == [] and written(project) == [] and (project / PAGE).read_bytes() == before

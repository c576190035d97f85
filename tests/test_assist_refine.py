"""Refining a page from the command line (`sidecar prompt refine`) and through the daemon
(`POST /prompt/refine`, what the studio calls), against the fake Ollama: the diff is shown, the file is
rewritten only with --write and keeps its front matter byte for byte, the job records `refinedFrom`,
and a failing Ollama leaves every file as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.cli import main
from sidecar.config import Settings
from tests.fake_ollama import DIGEST, FakeOllama, Reply, ollama_fake, ollama_server  # noqa: F401
from tests.test_api_jobs import wait_status

FRONT = '+++\n# the page that needs work\nseed = 1234\nloraStrength = 0.85\n+++\n\n'
PROMPT = "spyke_plasma_v1, 1boy, full body, right bracer, ginger hair, looking at viewer, noon, cluttered street"
CHARACTER = ('trigger = "spyke_plasma_v1"\nlocked = ["right bracer", "left knee pauldron", "ginger hair", '
             '"white cloak"]\nlocked_negative = ["mirrored"]\n')
ANSWER = {"changes": [
    {"op": "replace", "region": "pose", "tag": "looking at viewer", "replacement": "looking to the left"},
    {"op": "replace", "region": "lighting", "tag": "noon", "replacement": "dusk"},
    {"op": "replace", "region": "setting", "tag": "cluttered street", "replacement": "empty street"},
    {"op": "replace", "region": "appearance", "tag": "right bracer", "replacement": "left bracer"}],
    "summary": "looks left at dusk on an emptier street"}
REFINED = "spyke_plasma_v1, 1boy, full body, right bracer, ginger hair, looking to the left, dusk, empty street"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "prompts" / "ch-01").mkdir(parents=True)
    (root / "character.toml").write_text(CHARACTER)
    (root / "prompts" / "ch-01" / "ch01_p003.txt").write_text(FRONT + PROMPT + "\n")
    return root


def _refine(fake: FakeOllama, page: Path, *extra: str):
    return CliRunner().invoke(main, ["prompt", "refine", "--prompt-file", str(page), "--feedback",
                                     "look left, dusk, less cluttered", "--ollama-url", fake.url,
                                     "--ollama-timeout", "5", *extra],
                              env={"SIDECAR_CONFIG": str(page.parent / "none.toml")})


def test_refine_shows_the_diff_and_writes_only_when_asked(ollama_fake: FakeOllama, project: Path) -> None:
    page = project / "prompts" / "ch-01" / "ch01_p003.txt"
    before = page.read_bytes()
    ollama_fake.answer(ANSWER)
    shown = _refine(ollama_fake, page)
    assert shown.exit_code == 0, shown.output
    assert f"-{PROMPT}" in shown.output and f"+{REFINED}" in shown.output
    assert "refused" in shown.output and "'right bracer' is a locked trait" in shown.output
    assert "run again with --write" in shown.output and page.read_bytes() == before
    ollama_fake.answer(ANSWER)
    written = _refine(ollama_fake, page, "--write")
    assert written.exit_code == 0, written.output
    assert page.read_text() == FRONT + REFINED + "\n"  # the front matter byte for byte, comment included


@pytest.mark.parametrize(("setup", "exit_code", "words"), [
    ("missing", 2, "ollama pull llama3.1:8b"),
    ("500", 1, "status 500"),
    ("malformed", 1, "answered twice"),
    ("down", 3, "ollama serve"),
])
def test_a_failing_ollama_changes_no_file(ollama_fake: FakeOllama, project: Path, setup: str, exit_code: int,
                                          words: str) -> None:
    page = project / "prompts" / "ch-01" / "ch01_p003.txt"
    before = page.read_bytes()
    url = ollama_fake.url
    if setup == "missing":
        ollama_fake.models.clear()
    elif setup == "500":
        ollama_fake.answer(Reply(status=500))
    elif setup == "malformed":
        ollama_fake.answer("{", '{"changes": "none"}')
    else:
        ollama_fake.url = "http://127.0.0.1:9"  # discard port: nothing listens
    try:
        result = _refine(ollama_fake, page, "--write")
    finally:
        ollama_fake.url = url
    assert result.exit_code == exit_code, result.output
    assert words in result.output and page.read_bytes() == before
    assert sorted(p.name for p in page.parent.iterdir()) == ["ch01_p003.txt"]  # no temp file either


# -- through the daemon ---------------------------------------------------------------------------

@pytest.fixture
def settings(tmp_path: Path, ollama_fake: FakeOllama) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded", ollama_url=ollama_fake.url, ollama_timeout=5)


async def test_the_daemon_refines_a_page_and_the_job_keeps_its_provenance(client, ollama_fake: FakeOllama,
                                                                         project: Path) -> None:
    page = project / "prompts" / "ch-01" / "ch01_p003.txt"
    ollama_fake.answer(ANSWER)
    resp = await client.post("/prompt/refine", json={"promptFile": str(page), "feedback": "look left, dusk"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["refined"] == REFINED and body["changed"] and not body["written"]
    assert body["character"]["file"] == str(project / "character.toml")
    assert [c["status"] for c in body["changes"]] == ["applied", "applied", "applied", "refused"]
    assert "+ dusk" in body["diff"] and body["fileDiff"].startswith("--- ch01_p003.txt (before)")
    provenance = body["refinedFrom"]
    assert provenance["modelDigest"] == DIGEST and provenance["originalPrompt"] == PROMPT
    job = await (await client.post("/jobs", json={"prompt": body["refined"], "refinedFrom": provenance})).json()
    done = await wait_status(client, job["id"], "succeeded")
    assert done["params"]["refinedFrom"] == provenance and done["params"]["prompt"] == REFINED
    ollama_fake.answer(ANSWER)
    resp = await client.post("/prompt/refine", json={"promptFile": str(page), "feedback": "look left", "write": True})
    assert (await resp.json())["written"] and page.read_text() == FRONT + REFINED + "\n"


async def test_the_daemon_refuses_bad_input_before_asking_ollama(client, ollama_fake: FakeOllama,
                                                                project: Path) -> None:
    cases = [({"feedback": "x"}, 400, "invalid_field"),
             ({"feedback": "x", "promptFile": "relative.txt"}, 400, "prompt_file_invalid"),
             ({"feedback": "x", "promptFile": str(project / "nope.txt")}, 400, "prompt_file_invalid"),
             ({"feedback": "x", "prompt": "a", "write": True}, 400, "invalid_field"),
             ({"feedback": "x", "prompt": "a", "lookImagePath": str(project / "character.toml")}, 400,
              "invalid_field")]
    (project / "character.toml").write_text("trigger = 3\n")
    cases.append(({"feedback": "x", "promptFile": str(project / "prompts" / "ch-01" / "ch01_p003.txt")}, 400,
                  "character_invalid"))
    for body, status, code in cases:
        resp = await client.post("/prompt/refine", json=body)
        assert (resp.status, (await resp.json())["error"]["code"]) == (status, code), body
    assert ollama_fake.chats == []
    ollama_fake.models.clear()
    resp = await client.post("/prompt/refine", json={"feedback": "x", "prompt": "spyke_plasma_v1, a"})
    error = (await resp.json())["error"]
    assert resp.status == 503 and error["code"] == "ollama_model_missing"
    assert error["details"]["fix"] == "ollama pull llama3.1:8b"

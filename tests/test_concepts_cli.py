"""`sidecar concepts` against a running daemon (scripted backend, Ollama absent): a concept made from
flags with a lock, composed (the fields as written, with the note why), a round rendered and waited for,
its feedback kept, the intent read, and the pick made a page's prompt file; a refusal is one error line
and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline_stage.prompts import load_prompt
from sidecar.cli import main
from sidecar.config import Settings
from tests.pipeline_daemon import DaemonThread, copy_example
from tests.scripted_backend import ScriptedBackend


def test_a_concept_from_flags_to_a_page_prompt(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "project")
    settings = Settings(data_dir=tmp_path / "data", engine="embedded", project_root=project,
                        ollama_url="http://127.0.0.1:9", ollama_timeout=2)
    daemon = DaemonThread(settings, ScriptedBackend()).start()
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["concepts", *args, "--url", daemon.url])
        assert result.exit_code == 0, result.output + (result.stderr or "")
        return result.output

    try:
        shown = run("new", "dusk", "--subject", "1boy on a rooftop", "--lighting", "dusk", "--lock", "subject",
                    "--extra", "wind")
        assert "[locked] subject    1boy on a rooftop" in shown
        composed = run("compose", "dusk")
        assert "subject    -> 1boy on a rooftop  (locked)" in composed
        assert "prompt: spyke_plasma_v1, ginger hair" in composed
        started = json.loads(run("round", "dusk", "--seed", "3", "--wait", "--json"))
        assert [j["status"] for j in started["jobs"]] == ["succeeded"] * 4
        ids = [j["id"] for j in started["jobs"]]
        out = run("feedback", "dusk", "1", "--pick", ids[0], "--reject", f"{ids[1]}:too busy", "--text", "calmer")
        assert "preference: rejected: too busy" in out
        assert "rejected: too busy" in run("intent", "dusk")
        assert "wrote prompts/ch-03/ch03_p002.txt" in run("page", "dusk", "-c", "3", "--page", "2", "--job", ids[0])
        assert load_prompt(project / "prompts/ch-03/ch03_p002.txt").options.seed == 3
        again = runner.invoke(main, ["concepts", "page", "dusk", "-c", "3", "--page", "2", "--job", ids[0],
                                     "--url", daemon.url])
        assert again.exit_code == 2 and "prompt_file_exists" in again.output + (again.stderr or "")
        # A concept file edited by hand into something else: `list` still shows the others and names it.
        (project / "concepts" / "broken.toml").write_text("[subject]\nvalue = 3\n")
        listed = runner.invoke(main, ["concepts", "list", "--url", daemon.url])
        assert listed.exit_code == 0 and "1boy on a rooftop" in listed.output
        assert "broken: cannot be read (concept_invalid)" in listed.stderr
    finally:
        daemon.stop()

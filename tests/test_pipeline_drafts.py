"""The draft funnel through `generate` and the real daemon on the embedded engine (tiny models, CPU):
drafts land in drafts/ (never raw/) with a sheet and an index; `--from-draft K` renders draft K's seed
and parameters at full steps as the page's next version, logged with `draftOf`, and `--reproduce` of
that version gives the same pixels."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.pipeline_daemon import DaemonThread, embedded_daemon, generate, page3_project  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the embedded engine needs torch")

DRAFTS = Path("output/ch-01/drafts/ch01_p003")
RAW = Path("output/ch-01/raw")


@pytest.mark.engine
def test_drafts_then_from_draft_then_reproduce(project: Path, daemon: DaemonThread) -> None:
    drafted = generate(project, daemon.url, "-c", "1", "--page", "3", "--drafts", "3", "--draft-steps", "1", "--no-lora")
    assert drafted.exit_code == 0, drafted.output
    assert not list((project / RAW).glob("*.png")) if (project / RAW).exists() else True  # never raw/
    index = json.loads((project / DRAFTS / "index.json").read_text())
    assert [d["number"] for d in index["drafts"]] == [1, 2, 3]
    assert [d["seed"] for d in index["drafts"]] == [500, 501, 502]  # consecutive from the page's seed
    assert all(d["params"]["steps"] == 1 and d["status"] == "succeeded" for d in index["drafts"])
    assert len({d["groupId"] for d in index["drafts"]}) == 1
    for d in index["drafts"]:
        with Image.open(project / DRAFTS / d["file"]) as im:
            assert im.size == (64, 64)
    with Image.open(project / DRAFTS / "contact-sheet.png") as sheet:
        assert sheet.size == (3 * 256, 28 + 256)
    group = [j for j in daemon.jobs() if j["groupId"] == index["drafts"][0]["groupId"]]
    assert len(group) == 3 and all(j["status"] == "succeeded" for j in group)

    more = generate(project, daemon.url, "-c", "1", "--page", "3", "--drafts", "1", "--draft-steps", "1", "--seed", "9",
                    "--no-lora")
    assert more.exit_code == 0, more.output
    again = json.loads((project / DRAFTS / "index.json").read_text())
    assert [(d["number"], d["seed"]) for d in again["drafts"]][3:] == [(4, 9)]  # numbers continue across runs

    final = generate(project, daemon.url, "-c", "1", "--page", "3", "--from-draft", "2")
    assert final.exit_code == 0, final.output
    [entry] = json.loads((project / "output/ch-01/generation-log.json").read_text())
    assert entry["draftOf"] == f"{DRAFTS.as_posix()}/ch01_p003_d02.png"
    assert entry["seed"] == 501 and entry["steps"] == 2  # the draft's seed, the page's full steps
    assert entry["imageFile"] == "output/ch-01/raw/ch01_p003_v1.png"

    rerun = generate(project, daemon.url, "--reproduce", str(project / RAW / "ch01_p003_v1.workflow.json"))
    assert rerun.exit_code == 0, rerun.output
    with Image.open(project / RAW / "ch01_p003_v1.png") as v1, Image.open(project / RAW / "ch01_p003_v2.png") as v2:
        assert np.array_equal(np.asarray(v1), np.asarray(v2))


@pytest.mark.parametrize(("args", "says"), [
    (["--page", "3", "--from-draft", "4"], "no draft 4"),
    (["--page", "3", "--drafts", "2", "--repeat", "2"], "--repeat"),
    (["--page", "3", "--from-draft", "1", "--seed", "3"], "--seed"),
    (["--page", "3", "--drafts", "2", "--from-draft", "1"], "--from-draft"),
    (["--pages", "1-3", "--from-draft", "1"], "--page"),
])
def test_draft_options_that_cannot_work_exit_2(project: Path, args: list[str], says: str) -> None:
    result = generate(project, "http://127.0.0.1:9", "-c", "1", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output

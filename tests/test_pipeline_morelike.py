"""`generate --more-like V --denoise D [--variations N]` through the real daemon on the embedded engine
(tiny models, CPU): img2img from the page's version V, each result the page's next version with
`initImage` and `denoise` (and `groupId` for variations) in its log entry; `--reproduce` of such a
version gives the same pixels, also once the version it started from is gone; the option combinations
that cannot work exit 2 before anything is sent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.pipeline_daemon import DaemonThread, embedded_daemon, generate, page3_project  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the embedded engine needs torch")

RAW = Path("output/ch-01/raw")
LOG = Path("output/ch-01/generation-log.json")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.mark.engine
def test_more_like_a_version_then_variations_of_it_then_reproduce(project: Path, daemon: DaemonThread) -> None:
    page = ("-c", "1", "--page", "3", "--no-lora")
    first = generate(project, daemon.url, *page)
    assert first.exit_code == 0, first.output

    more = generate(project, daemon.url, *page, "--more-like", "1", "--denoise", "0.45")
    assert more.exit_code == 0, more.output
    assert "img2img from output/ch-01/raw/ch01_p003_v1.png at denoise 0.45" in more.output
    entries = json.loads((project / LOG).read_text())
    v2 = entries[1]
    assert v2["imageFile"] == "output/ch-01/raw/ch01_p003_v2.png" and v2["workflowTemplate"] == "img2img"
    assert v2["initImage"] == "output/ch-01/raw/ch01_p003_v1.png" and v2["denoise"] == 0.45
    assert v2["seed"] == 500 and v2["groupId"] is None and entries[0]["initImage"] is None
    job = next(j for j in daemon.jobs() if j["id"] == v2["jobId"])
    assert job["params"]["initImagePath"] == str((project / RAW / "ch01_p003_v1.png").resolve())
    assert job["params"]["denoise"] == 0.45
    assert not np.array_equal(pixels(project / RAW / "ch01_p003_v1.png"), pixels(project / RAW / "ch01_p003_v2.png"))

    group = generate(project, daemon.url, *page, "--more-like", "2", "--denoise", "0.6", "--variations", "3",
                     "--json")
    assert group.exit_code == 0, group.output
    made = json.loads(group.output[group.output.index("{"):])["pages"]
    assert [m["version"] for m in made] == [3, 4, 5]
    entries = json.loads((project / LOG).read_text())[2:]
    assert [e["seed"] for e in entries] == [500, 501, 502]  # consecutive from the page's seed, in order
    assert {e["initImage"] for e in entries} == {"output/ch-01/raw/ch01_p003_v2.png"}
    assert {e["denoise"] for e in entries} == {0.6} and {e["workflowTemplate"] for e in entries} == {"img2img"}
    assert len({e["groupId"] for e in entries}) == 1 and entries[0]["groupId"]
    group_jobs = [j for j in daemon.jobs() if j["groupId"] == entries[0]["groupId"]]
    assert sorted(j["id"] for j in group_jobs) == sorted(e["jobId"] for e in entries)
    assert not np.array_equal(pixels(project / RAW / "ch01_p003_v3.png"), pixels(project / RAW / "ch01_p003_v4.png"))

    rerun = generate(project, daemon.url, "--reproduce", str(project / RAW / "ch01_p003_v2.workflow.json"))
    assert rerun.exit_code == 0, rerun.output
    v6 = json.loads((project / LOG).read_text())[5]
    assert v6["reproducedFrom"] == "output/ch-01/raw/ch01_p003_v2.workflow.json"
    assert v6["initImage"] == "output/ch-01/raw/ch01_p003_v1.png" and v6["denoise"] == 0.45
    assert np.array_equal(pixels(project / RAW / "ch01_p003_v2.png"), pixels(project / RAW / "ch01_p003_v6.png"))

    # The version it started from removed: the daemon's stored copy of the init image still reproduces it.
    (project / RAW / "ch01_p003_v1.png").rename(project / "v1-moved.png")
    again = generate(project, daemon.url, "--reproduce", str(project / RAW / "ch01_p003_v2.workflow.json"))
    assert again.exit_code == 0, again.output
    assert np.array_equal(pixels(project / RAW / "ch01_p003_v2.png"), pixels(project / RAW / "ch01_p003_v7.png"))


@pytest.mark.parametrize(("args", "says"), [
    (["--page", "3", "--more-like", "2", "--denoise", "0.4"], "has no version 2"),
    (["--page", "3", "--more-like", "1"], "--more-like needs --denoise"),
    (["--page", "3", "--more-like", "1", "--denoise", "0.01"], "out of range"),
    (["--page", "3", "--more-like", "1", "--denoise", "1.0"], "out of range"),
    (["--page", "3", "--more-like", "1", "--denoise", "0.4", "--drafts", "4"], "does not combine with --drafts"),
    (["--page", "3", "--more-like", "1", "--denoise", "0.4", "--from-draft", "1"], "--from-draft"),
    (["--page", "3", "--more-like", "1", "--denoise", "0.4", "--repeat", "2"], "--repeat"),
    (["--page", "3", "--variations", "2", "--drafts", "2"], "--variations does not combine with --drafts"),
    (["--pages", "1-3", "--more-like", "1", "--denoise", "0.4"], "--page N"),
])
def test_more_like_options_that_cannot_work_exit_2(project: Path, args: list[str], says: str) -> None:
    result = generate(project, "http://127.0.0.1:9", "-c", "1", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_more_like_names_the_versions_that_exist(project: Path) -> None:
    raw = project / RAW
    raw.mkdir(parents=True)
    for v in (1, 3):
        Image.new("RGB", (64, 64)).save(raw / f"ch01_p003_v{v}.png")
    result = generate(project, "http://127.0.0.1:9", "-c", "1", "--page", "3", "--more-like", "2", "--denoise", "0.4")
    assert result.exit_code == 2 and "versions: 1, 3" in result.output, result.output
    dry = generate(project, "http://127.0.0.1:9", "-c", "1", "--page", "3", "--more-like", "3", "--denoise", "0.4",
                   "--variations", "2", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    request = json.loads(dry.output)["requests"][0]["request"]
    assert request["initImagePath"] == str((raw / "ch01_p003_v3.png").resolve())
    assert request["denoise"] == 0.4 and request["variations"] == 2 and request["seed"] == 500

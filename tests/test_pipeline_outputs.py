"""Versioning under the chapter lock: racing processes each get their own version, files already on disk
are never overwritten, and recovery touches only the stage's own leftovers."""

from __future__ import annotations

import io
import json
import multiprocessing
from pathlib import Path

from PIL import Image

from pipeline_stage.layout import Page, Project
from pipeline_stage.outputs import publish

PAGE = Page(1, 1)


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 24), colour).save(buf, "PNG")
    return buf.getvalue()


def _publish_after(barrier, root: str, index: int, results) -> None:
    barrier.wait()
    done = publish(Project(Path(root)), PAGE, png((index, 0, 0)), {"1": {"class_type": "X", "inputs": {"i": index}}},
                   lambda v: {"imageFile": PAGE.image_name(v), "version": v, "writer": index})
    results.put((index, done.version))


def test_racing_processes_get_distinct_versions_and_complete_sets(tmp_path: Path) -> None:
    n = 6
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_publish_after, args=(barrier, str(tmp_path), i, results)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * n
    got = dict(results.get(timeout=5) for _ in range(n))
    assert sorted(got.values()) == list(range(1, n + 1))
    project = Project(tmp_path)
    log = json.loads(project.log_file(1).read_text())
    assert sorted(e["version"] for e in log) == list(range(1, n + 1))
    for entry in log:
        # Each version's image, workflow and entry come from the same writer.
        v, writer = entry["version"], entry["writer"]
        assert got[writer] == v
        with Image.open(project.raw_dir(1) / PAGE.image_name(v)) as img:
            assert img.getpixel((0, 0)) == (writer, 0, 0)
        assert json.loads((project.raw_dir(1) / PAGE.workflow_name(v)).read_text())["1"]["inputs"]["i"] == writer


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    project = Project(tmp_path)
    raw = project.raw_dir(1)
    raw.mkdir(parents=True)
    # Files the log does not know (a manual render, a half-cleaned folder) still hold their numbers.
    (raw / "ch01_p001_v1.png").write_bytes(b"hand-made")
    (raw / "ch01_p001_v2.workflow.json").write_text("{}")
    (raw / "ch01_p002_v9.png").write_bytes(b"other page")
    (raw / ".DS_Store").write_bytes(b"finder")
    done = publish(project, PAGE, png((1, 2, 3)), {}, lambda v: {"imageFile": PAGE.image_name(v), "version": v})
    assert done.version == 3
    assert (raw / "ch01_p001_v1.png").read_bytes() == b"hand-made"
    assert (raw / "ch01_p001_v2.workflow.json").read_text() == "{}"
    assert (raw / ".DS_Store").read_bytes() == b"finder"
    assert publish(project, Page(1, 2), png((0, 0, 0)), {},
                   lambda v: {"imageFile": Page(1, 2).image_name(v), "version": v}).version == 10

"""More like this: img2img from one of the page's versions, and several versions of a page at once.

`generate -c 1 --page 3 --more-like 2 --denoise 0.45` submits the page's request (its prompt as it is
now, its front matter and options) with version 2's PNG (`output/ch-01/raw/ch01_p003_v2.png`) as the
init image (`initImagePath`) and that denoise; the result is the page's next version, its log entry
carrying `initImage` (the version's file, relative to the root) and `denoise`. `--variations N` makes
N versions at once (seeds seed, seed+1, ...: one group on the daemon, each job a page job), each written
by the daemon as the page's next version as it finishes, its entry carrying the `groupId`.
`--reproduce` of such a version sends the same init image again (`reproduce_init`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pipeline_stage.daemon import DaemonClient
from pipeline_stage.errors import InputError, JobFailedError
from pipeline_stage.genlog import read_log, versions_in
from pipeline_stage.layout import Project, version_of
from pipeline_stage.outputs import check_log
from pipeline_stage.entry import PageTask
from pipeline_stage.progress import PageProgress
from pipeline_stage.stage import PageResult, job_error, written_version
from sidecar.api.responses import JobSummary
from sidecar.graph import Graph
from sidecar.statuses import JOB_TERMINAL

MIN_DENOISE = 0.05  # the API's floor (POST /jobs `denoise`); at 1.0 the init image means nothing
POLL_INTERVAL = 0.5


def check_more_like_options(opts: dict[str, Any]) -> None:
    """Refuse, before anything is read or sent, what cannot go with --more-like / --variations."""
    more_like, variations = opts["more_like"], opts["variations"]
    if more_like is None and variations is None:
        return
    for flag, value in (("--more-like", more_like), ("--variations", variations)):
        if value is None:
            continue
        clash = [name for name, given in (("--drafts", opts["drafts"] is not None),
                                          ("--from-draft", opts["from_draft"] is not None),
                                          ("--reproduce", bool(opts["reproduce"])),
                                          ("--repeat", opts["repeat"] != 1)) if given]
        if clash:
            why = ("drafts are their own variations group" if "--drafts" in clash else
                   "a draft is finished at its own seed and parameters" if "--from-draft" in clash else
                   "a workflow is resubmitted as it was" if "--reproduce" in clash else
                   "--repeat compares same-seed runs")
            raise InputError(f"{flag} does not combine with {', '.join(clash)} ({why}).",
                             {"option": flag, "with": clash})
    if more_like is not None:
        if opts["page"] is None:
            raise InputError("--more-like V names a version of one page: use it with --page N.")
        if opts["denoise"] is None:
            raise InputError("--more-like needs --denoise D: how much of the version is redrawn (0.05 keeps "
                             "nearly all of it; 0.3-0.6 for variations of it).", {"option": "--denoise"})
        if not MIN_DENOISE <= opts["denoise"] < 1.0:
            raise InputError(f"--denoise {opts['denoise']} is out of range for --more-like: from {MIN_DENOISE} "
                             "(keeps nearly all of the version) to below 1.0 (1.0 would ignore it: leave "
                             "--more-like out for a fresh render).",
                             {"option": "--denoise", "value": opts["denoise"], "min": MIN_DENOISE, "max": 1.0})


def known_versions(project: Project, task: PageTask) -> list[int]:
    """The page's versions, from its log and its raw/ folder (for the error that names them)."""
    page = task.page
    log_path = project.log_file(page.chapter)
    found: set[int] = set()
    if log_path.is_file():
        found.update(versions_in(read_log(log_path), page))
    raw = project.raw_dir(page.chapter)
    if raw.is_dir():
        found.update(v for p in raw.glob(f"{page.stem}_v*.png") if (v := version_of(p.name, page)) is not None)
    return sorted(found)


def more_like_task(project: Project, task: PageTask, version: int) -> PageTask:
    """The page's task starting from version `version`'s image (denoise: the merged options')."""
    image = project.raw_dir(task.page.chapter) / task.page.image_name(version)
    if not image.is_file():
        known = known_versions(project, task)
        raise InputError(f"{task.page} has no version {version} ({project.relative(image)} not found); its "
                         f"versions: {', '.join(map(str, known)) or 'none yet'}.",
                         {"path": str(image), "version": version, "versions": known})
    request = task.request.model_copy(update={"init_image_path": str(image.resolve())})
    return replace(task, request=request, init_image=project.relative(image))


def with_variations(task: PageTask, count: int) -> PageTask:
    return replace(task, request=task.request.model_copy(update={"variations": count}))


def init_loader_count(graph: Graph) -> int:
    """How many LoadImage nodes a VAEEncode encodes (an img2img workflow's init image)."""
    encoded = {n.id for n in (graph.source(node, "pixels") for node in graph.of_type("VAEEncode"))
               if n is not None and n.class_type == "LoadImage"}
    return len(encoded)


def reproduce_init(project: Project, graph: Graph, source: dict[str, Any]) -> tuple[str | None, str | None]:
    """For `--reproduce` of a --more-like version: (the init image's absolute path to send, its log path).

    The version's log entry names its init image (a file of the project): sent again, the daemon stores
    the same bytes under the same name and the pixels repeat. When that file is gone nothing is sent:
    the daemon still finds its own stored copy the workflow names, or says the image is missing."""
    named = source.get("initImage")
    if not init_loader_count(graph) or not isinstance(named, str):
        return None, None
    path = project.root / named
    return (str(path.resolve()), named) if path.is_file() else (None, named)


async def render_versions(client: DaemonClient, project: Project, task: PageTask, view: PageProgress,
                          on_version: Callable[[PageResult], None]) -> tuple[list[PageResult], list[JobSummary]]:
    """Submit the task's request (with `variations`) once and publish every job of the group as a version,
    in seed order, as each ends. Returns the versions made and the jobs that did not succeed; Ctrl-C (or
    an error) cancels what is left of the group on the daemon, versions already published stay."""
    await asyncio.to_thread(check_log, project, task.page.chapter)
    group = await client.submit_group(task.page_request(project.root))
    order = [job.id for job in group.jobs]
    results: list[PageResult] = []
    failed: list[JobSummary] = []
    handled = 0
    view.start(f"{task.page} x{len(order)}")
    try:
        while handled < len(order):
            jobs = {job.id: job for job in (await client.group(group.group_id)).jobs}
            running = next((jobs[i] for i in order[handled:] if jobs[i].status == "running"), None)
            if running is not None:
                view.update(running.model_dump(mode="json", by_alias=True))
            while handled < len(order) and jobs[order[handled]].status in JOB_TERMINAL:
                summary = jobs[order[handled]]
                handled += 1
                if summary.status != "succeeded":
                    failed.append(summary)
                    continue
                # The daemon wrote it as the page's next version when it succeeded.
                result = await asyncio.to_thread(written_version, project, task, await client.full_job(summary.id))
                results.append(result)
                on_version(result)
            if handled < len(order):
                await asyncio.sleep(POLL_INTERVAL)
    except BaseException:
        await client.cancel_group_quietly(group.group_id)
        raise
    finally:
        view.stop()
    return results, failed


def group_failure(failed: list[JobSummary], total: int) -> JobFailedError | None:
    """The error a group with failed jobs ends the command with (exit 1), naming the first failure."""
    if not failed:
        return None
    first = job_error(failed[0])  # type: ignore[arg-type]
    return JobFailedError(f"{len(failed)} of {total} variation(s) did not render; the first: {first.message}",
                          first.details, code=first.code)

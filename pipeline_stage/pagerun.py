"""Rendering the command line's pages on the daemon: one after another, or several in flight (`--where`
a pool), each `--repeat` times with a consistency report, or as one group of `--variations`; refined first
with `--refine`. Ctrl-C or SIGTERM cancels the job on the daemon and leaves nothing half-written."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import replace

import click

from pipeline_stage.consistency import ConsistencyReport, summary_lines, write_report
from pipeline_stage.daemon import DaemonClient
from pipeline_stage.errors import StageError
from pipeline_stage.layout import Project
from pipeline_stage.lorahash import check_lora_hashes
from pipeline_stage.morelike import group_failure, render_versions
from pipeline_stage.progress import make_progress
from pipeline_stage.refine import RefineAsk, refine_tasks, write_refined
from pipeline_stage.stage import PageResult, PageTask, render_page, summary_line


async def refine_only(url: str, token: str | None, project: Project, tasks: list[PageTask], refine: RefineAsk,
                       json_out: bool) -> list[PageTask]:
    async with DaemonClient(url, token=token) as client:
        return await refine_tasks(client, project, tasks, refine.feedback, refine.look, show=not json_out)


async def render_all(url: str, token: str | None, project: Project, tasks: list[PageTask], repeat: int, json_out: bool,
                      done: list[PageResult], reports: list[ConsistencyReport], parallel: int = 1,
                      refine: RefineAsk | None = None) -> None:
    # Several pages in flight share the terminal: no live bars then (one line per page as it ends).
    view = make_progress(json_out or parallel > 1, preview_path=project.preview_file())
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        # SIGTERM (launchd, a pipeline runner) behaves as Ctrl-C: cancel the job, finish any commit.
        loop.add_signal_handler(signal.SIGTERM, main_task.cancel)  # type: ignore[union-attr]
    async with DaemonClient(url, token=token) as client:
        await check_lora_hashes(client, tasks, quiet=json_out)  # --reproduce: the logged LoRA files, unchanged
        if refine is not None:  # every page first: an Ollama failure stops the run with nothing queued
            tasks = await refine_tasks(client, project, tasks, refine.feedback, refine.look, show=not json_out)

        async def one(task: PageTask) -> None:
            made: list[PageResult] = []
            if task.request.variations is not None:  # one group: each of its jobs the page's next version
                def show(result: PageResult) -> None:
                    done.append(result)
                    if not json_out:
                        click.echo(summary_line(project, result))

                results, failed = await render_versions(client, project, task, view, show)
                if results and refine is not None and refine.write:
                    note = await asyncio.to_thread(write_refined, project, task)
                    if note and not json_out:
                        click.echo(note)
                if (error := group_failure(failed, task.request.variations)) is not None:
                    raise error
                return
            for i in range(repeat):
                result = await render_page(client, project, task, view)
                done.append(result)
                made.append(result)
                if not json_out:
                    click.echo(summary_line(project, result))
                if i == 0 and refine is not None and refine.write:
                    note = await asyncio.to_thread(write_refined, project, task)
                    if note and not json_out:
                        click.echo(note)
                if i == 0 and task.request.workflow is None and task.request.seed is None:
                    # --repeat compares same-seed runs: later versions reuse the seed the daemon chose.
                    task = replace(task, request=task.request.model_copy(update={"seed": result.job.params.seed}))
            if len(made) > 1:
                report = await asyncio.to_thread(write_report, project, task.page, made)
                reports.append(report)
                if not json_out:
                    for line in summary_lines(report, project):
                        click.echo(line)

        if parallel <= 1:
            for task in tasks:
                await one(task)
            return
        # Pages in flight together (a pool of backends works on them at once); the first failure stops
        # the rest (their jobs are cancelled on the daemon, nothing half-written), as one at a time would.
        slots = asyncio.Semaphore(parallel)

        async def guarded(task: PageTask) -> None:
            async with slots:
                await one(task)

        try:
            async with asyncio.TaskGroup() as group:
                for task in tasks:
                    group.create_task(guarded(task))
        except BaseExceptionGroup as group_error:
            raise first_error(group_error) from None


def first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report from pages run together: a page's own error before a cancellation."""
    flat: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            flat.append(exc)
    return next((e for e in flat if isinstance(e, StageError)), flat[0])

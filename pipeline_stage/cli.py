"""The `generate` command (also `python -m pipeline_stage`): options, page selection, output and exit codes.

`generate --comfyui -c 1 --page 1` renders; `generate approve ...` marks a version approved. The group
runs the generation itself when no subcommand is given, so the pipeline's existing call works as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click

from pipeline_stage.consistency import ConsistencyReport, summary_lines, write_report
from pipeline_stage.daemon import DEFAULT_URL, DaemonClient
from pipeline_stage.drafts import DEFAULT_DRAFT_STEPS, draft_request, from_draft_task
from pipeline_stage.draftrun import check_draft_options, render_drafts_of
from pipeline_stage.errors import EXIT_INTERRUPTED, InputError, PromptFileMissing, StageError
from pipeline_stage.genlog import approve as approve_entry
from pipeline_stage.genlog import find_entries, read_log, versions_in
from pipeline_stage.layout import Page, Project, page_of, parse_pages
from pipeline_stage.morelike import (
    check_more_like_options, group_failure, init_loader_count, more_like_task, render_versions, reproduce_init,
    with_variations,
)
from pipeline_stage.outputs import approve_version
from pipeline_stage.printing import Printed, check_print_options, print_version
from pipeline_stage.progress import make_progress
from pipeline_stage.refine import refine_tasks, write_refined
from pipeline_stage.prompts import (
    GenerateOptions, build_request, load_defaults, load_prompt, merge, upscale_request,
)
from pipeline_stage.stage import PageResult, PageTask, render_page, summary_line
from sidecar.api.models import JobRequest
from sidecar.config import client_token
from sidecar.errors import SidecarError
from sidecar.graph import Graph

EPILOG = """\b
Examples:
  generate --comfyui -c 1 --page 1            page 1 of chapter 1 -> output/ch-01/raw/ch01_p001_vN.png
  generate -c 1 --pages 1-4,7 --seed 42
  generate -c 1 --page 3 --repeat 3           3 versions, same seed, + a consistency report
  generate -c 1 --all --dry-run               print the requests, submit nothing
  generate -c 1 --page 3 --drafts 12 --draft-steps 8
                                              12 cheap drafts -> output/ch-01/drafts/ch01_p003/ + contact sheet
  generate -c 1 --page 3 --from-draft 7       draft 7's seed and parameters at full steps, as the next version
  generate -c 1 --page 3 --more-like 2 --denoise 0.45 [--variations 4]
                                              img2img from version 2 (4 at once): the next version(s)
  generate --reproduce output/ch-01/raw/ch01_p001_v1.workflow.json
  generate --where pool -c 1 --all            the chapter across the daemon's backends tagged pool
  generate -c 1 --page 3 --refine "look left, dusk"   refine through Ollama, show the diff, render it
  generate -c 1 --page 3 --refine "look left" --write   ... and make it the page's prompt
  generate -c 1 --page 3 --upscale 4x-UltraSharp.pth   also the print -> output/ch-01/print/ch01_p003_vN.png
  generate -c 1 --page 3 --version 2 --upscale 4x-UltraSharp.pth   print v2 as it is, no new render
  generate approve -c 1 --page 1 --version 2

\b
Exit codes:
  0    done
  1    a job failed on the daemon (its error is shown); nothing written for it;
       --refine: Ollama timed out, failed or answered nonsense twice (nothing queued)
  2    usage or input error: bad option, prompt file missing (the path is named),
       bad front matter or pipeline.toml, or the daemon refused the request (400);
       --refine: the model is not pulled (the `ollama pull` line is shown)
  3    the daemon is not running (start it with `sidecar serve`); --refine: nor is Ollama
  4    the device is busy: LoRA training in progress (its step and ETA are shown)
  5    the generation log is torn or invalid (named; it is never overwritten)
  130  interrupted (Ctrl-C): a queued or running job is cancelled on the daemon
"""

POOL_PARALLEL = 64  # pages in flight with --where away from local: the daemon's router does the spreading
PARAM_OPTIONS = ("seed", "lora", "no_lora", "lora_strength", "steps", "cfg", "sampler", "scheduler", "negative",
                 "width", "height", "checkpoint", "pose", "controlnet_strength", "denoise")


def _emit_json(payload: dict[str, Any]) -> None:
    click.echo(json.dumps(payload, indent=2, ensure_ascii=False))


def _fail(exc: StageError, json_out: bool, extra: dict[str, Any] | None = None) -> int:
    click.echo(f"error: {exc.message}", err=True)
    if json_out:
        _emit_json({"ok": False, **(extra or {}), "exitCode": exc.exit_code, **exc.to_body()})
    return exc.exit_code


def _cli_options(opts: dict[str, Any]) -> GenerateOptions:
    values: dict[str, Any] = {}
    simple = {"seed": "seed", "lora_strength": "lora_strength", "steps": "steps", "cfg": "cfg",
              "sampler": "sampler", "scheduler": "scheduler", "negative": "negative_prompt", "width": "width",
              "height": "height", "checkpoint": "checkpoint", "controlnet_strength": "controlnet_strength",
              "denoise": "denoise"}
    for opt, field in simple.items():
        if opts[opt] is not None:
            values[field] = opts[opt]
    if opts["no_lora"]:
        values["lora_id"] = ""
    elif opts["lora"] is not None:
        values["lora_id"] = opts["lora"]
    if opts["pose"] is not None:
        values["pose_image"] = Path(opts["pose"]).expanduser().resolve()  # relative to where we run
    return GenerateOptions.model_validate(values)


def _pages(project: Project, opts: dict[str, Any]) -> list[Page]:
    chosen = [name for name in ("page", "pages", "all_pages") if opts[name] not in (None, False)]
    if opts["chapter"] is None:
        raise InputError("Say which chapter: -c/--chapter N.")
    if len(chosen) != 1:
        raise InputError("Say which pages with exactly one of --page N, --pages 1-4,7 or --all.")
    chapter = opts["chapter"]
    if opts["page"] is not None:
        return [Page(chapter, opts["page"])]
    if opts["pages"] is not None:
        return [Page(chapter, n) for n in parse_pages(opts["pages"])]
    pages = project.list_pages(chapter)
    if not pages:
        folder = project.prompt_file(Page(chapter, 1)).parent
        raise PromptFileMissing(f"--all found no prompt files (chNN_pNNN.txt) in {folder}", {"path": str(folder)})
    return pages


def _page_tasks(project: Project, opts: dict[str, Any]) -> list[PageTask]:
    defaults = load_defaults(project.config_file())
    overrides = _cli_options(opts)
    pages = _pages(project, opts)
    missing = [project.prompt_file(p) for p in pages if not project.prompt_file(p).is_file()]
    if missing:
        listed = ", ".join(str(p) for p in missing)
        raise PromptFileMissing(f"Prompt file not found: {listed}", {"paths": [str(p) for p in missing]})
    tasks = []
    for page in pages:
        prompt = load_prompt(project.prompt_file(page))
        options = merge(defaults, prompt.options, overrides)
        tasks.append(PageTask(page, build_request(prompt.text, options, prompt.file), project.relative(prompt.file)))
    return tasks


def _reproduce_task(project: Project, opts: dict[str, Any]) -> PageTask:
    # --pose is the one option it takes: the image of the workflow's LoadImage, when the log lacks it.
    given = [f"--{name.replace('_', '-')}" for name in PARAM_OPTIONS
             if name != "pose" and opts[name] not in (None, False)]
    given += [f"--{name}" for name in ("pages",) if opts[name] is not None] + (["--all"] if opts["all_pages"] else [])
    if given:
        raise InputError(f"--reproduce submits the workflow file as it is; it takes no {', '.join(given)}.")
    path = Path(opts["reproduce"])
    if not path.is_file():
        raise PromptFileMissing(f"Workflow file not found: {path}", {"path": str(path)})
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a JSON workflow ({exc}).", {"path": str(path)}) from None
    try:
        graph = Graph.parse(workflow)
    except SidecarError as exc:
        raise InputError(f"{path} is not an API-format workflow (node id -> {{class_type, inputs}}): {exc.message} "
                         "In ComfyUI use \"Save (API format)\".", {"path": str(path)}) from None
    named = page_of(path.name)
    if opts["chapter"] is not None and opts["page"] is not None:
        page = Page(opts["chapter"], opts["page"])
    elif named is not None:
        page = named[0]
    else:
        raise InputError(f"Cannot tell which page {path.name} belongs to; pass -c N --page N.", {"path": str(path)})
    source: dict[str, Any] = {}
    if named is not None and named[0] == page:
        # The source version's log entry says which prompt file and template it came from.
        found = find_entries(read_log(project.log_file(page.chapter)), page, named[1])
        source = found[-1] if found else {}
    prompt_file = source.get("promptFile")
    if prompt_file is None and project.prompt_file(page).is_file():
        prompt_file = project.relative(project.prompt_file(page))
    pose_path: str | None = None
    init_path, init_logged = reproduce_init(project, graph, source)  # a --more-like version's init image
    if len(graph.of_type("LoadImage")) > init_loader_count(graph):
        pose = (Path(opts["pose"]).expanduser().resolve() if opts["pose"]
                else project.root / source["poseImage"] if source.get("poseImage") else None)
        if pose is None:
            raise InputError(f"{path.name} loads a pose image, and the generation log does not say which: pass "
                             "--pose FILE.", {"path": str(path)})
        if not pose.is_file():
            raise InputError(f"Pose image not found: {pose}", {"path": str(pose)})
        pose_path = str(pose.resolve())
    elif opts["pose"]:
        raise InputError(f"{path.name} loads no image: --pose does not apply.", {"path": str(path)})
    request = JobRequest.model_validate({"workflow": workflow, "pose_image_path": pose_path,
                                         "init_image_path": init_path}, strict=False)
    return PageTask(page, request, prompt_file, reproduced_from=project.relative(path),
                    template_hint=source.get("workflowTemplate"), init_image=init_logged)


@dataclass(frozen=True)
class RefineAsk:
    feedback: str
    look: Path | None
    write: bool


async def _refine_only(url: str, token: str | None, project: Project, tasks: list[PageTask], refine: RefineAsk,
                       json_out: bool) -> list[PageTask]:
    async with DaemonClient(url, token=token) as client:
        return await refine_tasks(client, project, tasks, refine.feedback, refine.look, show=not json_out)


async def _render_all(url: str, token: str | None, project: Project, tasks: list[PageTask], repeat: int, json_out: bool,
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
            raise _first(group_error) from None


def _first(group: BaseExceptionGroup) -> BaseException:
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


def _refine_ask(opts: dict[str, Any]) -> RefineAsk | None:
    if opts["refine"] is None:
        if opts["write"] or opts["look"]:
            raise InputError("--write and --look go with --refine TEXT.")
        return None
    if opts["reproduce"]:
        raise InputError("--reproduce submits a workflow as it was; it cannot be --refine'd.")
    if opts.get("drafts") is not None or opts.get("from_draft") is not None:
        raise InputError("--refine renders the refined page itself; refine first (or `sidecar prompt refine "
                         "--write`), then make --drafts or --from-draft.")
    if not opts["refine"].strip():
        raise InputError("--refine needs the feedback text, e.g. --refine \"look left, dusk\".")
    look = Path(opts["look"]).expanduser().resolve() if opts["look"] else None
    if look is not None and not look.is_file():
        raise InputError(f"--look image not found: {look}", {"path": str(look)})
    return RefineAsk(opts["refine"].strip(), look, opts["write"])


def _result_json(project: Project, result: PageResult) -> dict[str, Any]:
    pub = result.published
    return {"page": str(result.task.page), "chapter": result.task.page.chapter, "pageNumber": result.task.page.page,
            "version": pub.version, "image": project.relative(pub.image), "workflow": project.relative(pub.workflow),
            "log": project.relative(pub.log), "jobId": result.job.id, "entry": pub.entry}


def _print_one(url: str, token: str | None, project: Project, opts: dict[str, Any], json_out: bool) -> int:
    """`--version N --upscale MODEL`: the print of a version already rendered (pipeline_stage.printing)."""
    page = Page(opts["chapter"], opts["page"])
    if opts["dry_run"]:
        request = {"upscaleModel": opts["upscale"],
                   "initImagePath": str(project.raw_dir(page.chapter) / page.image_name(opts["version"]))}
        if json_out:
            _emit_json({"ok": True, "dryRun": True, "requests": [{"page": str(page), "request": request}]})
        else:
            click.echo(f"# {page} v{opts['version']} print -> POST {url}/jobs")
            click.echo(json.dumps(request, indent=2))
        return 0

    async def run() -> Printed:
        view = make_progress(json_out, preview_path=project.preview_file())
        async with DaemonClient(url, token=token) as client:
            return await print_version(client, project, page, opts["version"], opts["upscale"], view)

    printed = asyncio.run(run())
    if json_out:
        _emit_json({"ok": True, "print": {"page": str(page), "version": printed.version, "model": printed.model,
                                          "file": project.relative(printed.file), "jobId": printed.job_id}})
    else:
        click.echo(f"{page} v{printed.version} print ({printed.model}) -> {project.relative(printed.file)}")
    return 0


def _generate(opts: dict[str, Any]) -> int:
    json_out = opts["json_out"]
    project = Project(Path(opts["root"]).expanduser().resolve())
    done: list[PageResult] = []
    reports: list[ConsistencyReport] = []

    def progress_json() -> dict[str, Any]:
        return {"pages": [_result_json(project, r) for r in done],
                "consistency": [r.figures for r in reports]}

    try:
        if opts["repeat"] < 1:
            raise InputError("--repeat must be at least 1.")
        check_print_options(opts, PARAM_OPTIONS)
        if opts["version"] is not None:
            url = opts["daemon"] or load_defaults(project.config_file()).daemon or DEFAULT_URL
            return _print_one(url, opts["token"] or client_token(), project, opts, json_out)
        check_draft_options(opts, PARAM_OPTIONS)
        check_more_like_options(opts)
        refine = _refine_ask(opts)
        tasks = [_reproduce_task(project, opts)] if opts["reproduce"] else _page_tasks(project, opts)
        if opts["more_like"] is not None:
            tasks = [more_like_task(project, t, opts["more_like"]) for t in tasks]
        if opts["variations"] is not None:
            tasks = [with_variations(t, opts["variations"]) for t in tasks]
        if opts["from_draft"] is not None:
            tasks = [from_draft_task(project, t.page, opts["from_draft"], t.request.steps) for t in tasks]
        if opts["drafts"] is not None:
            steps = opts["draft_steps"] or DEFAULT_DRAFT_STEPS
            tasks = [replace(t, request=draft_request(t.request, opts["drafts"], steps)) for t in tasks]
        if opts["where"]:
            tasks = [replace(t, request=t.request.model_copy(update={"where": opts["where"]})) for t in tasks]
        if opts["upscale"] is not None:
            tasks = [replace(t, request=upscale_request(t.request, opts["upscale"], opts["drafts"])) for t in tasks]
        parallel = opts["parallel"] or (POOL_PARALLEL if opts["where"] not in (None, "local") else 1)
        url = opts["daemon"] or load_defaults(project.config_file()).daemon or DEFAULT_URL
        token = opts["token"] or client_token()
        if opts["dry_run"] and refine is not None:  # show the refined requests; still nothing submitted
            tasks = asyncio.run(_refine_only(url, token, project, tasks, refine, json_out))
        if opts["dry_run"]:
            requests = [{"page": str(t.page), "promptFile": t.prompt_file, "daemon": url,
                         "request": t.request.model_dump(by_alias=True, exclude_none=True, mode="json")}
                        for t in tasks]
            if json_out:
                _emit_json({"ok": True, "dryRun": True, "requests": requests})
            else:
                for item in requests:
                    click.echo(f"# {item['page']} ({item['promptFile']}) -> POST {url}/jobs"
                               + (f" x{opts['repeat']}" if opts["repeat"] > 1 else ""))
                    click.echo(json.dumps(item["request"], indent=2, ensure_ascii=False))
            return 0
        # The daemon's token comes from the daemon's own settings (SIDECAR_TOKEN, its config file's `token`).
        token = opts["token"] or client_token()
        if opts["drafts"] is not None:
            return render_drafts_of(url, token, project, tasks, json_out)
        asyncio.run(_render_all(url, token, project, tasks, opts["repeat"], json_out, done, reports, parallel,
                                refine))
    except StageError as exc:
        return _fail(exc, json_out, progress_json())
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("interrupted: a queued or running job was cancelled on the daemon; versions already "
                   "written are complete, nothing is half-written.", err=True)
        if json_out:
            _emit_json({"ok": False, **progress_json(), "exitCode": EXIT_INTERRUPTED,
                        "error": {"code": "interrupted", "message": "interrupted", "details": {}}})
        return EXIT_INTERRUPTED
    if json_out:
        _emit_json({"ok": True, **progress_json()})
    return 0


@click.group(invoke_without_command=True, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--comfyui", is_flag=True,
              help="Generate with the local sidecar daemon (ComfyUI or its embedded engine). This is the only "
                   "mode of this command; the flag is accepted so the pipeline's `generate --comfyui` call works.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Project root holding pipeline.toml, prompts/ and output/.")
@click.option("-c", "--chapter", type=click.IntRange(min=0), help="Chapter number (ch-01 is 1).")
@click.option("--page", type=click.IntRange(min=0), help="One page number.")
@click.option("--pages", metavar="SPEC", help="Page numbers and ranges, e.g. 1-4,7.")
@click.option("--all", "all_pages", is_flag=True, help="Every prompt file of the chapter.")
@click.option("--seed", type=click.IntRange(min=0), help="Seed (default: the prompt's, else a random one).")
@click.option("--lora", metavar="ID", help="LoRA id (file name without extension), as `sidecar loras` lists.")
@click.option("--no-lora", is_flag=True, help="No LoRA, even if the prompt or pipeline.toml names one.")
@click.option("--lora-strength", type=float, help="LoRA strength.")
@click.option("--steps", type=click.IntRange(min=1), help="Sampling steps.")
@click.option("--cfg", type=float, help="CFG scale.")
@click.option("--sampler", help="Sampler name, as ComfyUI names it (e.g. euler_ancestral).")
@click.option("--scheduler", help="Scheduler name (e.g. normal, karras).")
@click.option("--negative", help="Negative prompt.")
@click.option("--width", type=int, help="Width in pixels (<= the daemon's profile limit, multiple of 8).")
@click.option("--height", type=int, help="Height in pixels.")
@click.option("--checkpoint", help="Checkpoint file name (the log's `model`).")
@click.option("--pose", type=click.Path(dir_okay=False), help="Pose image for ControlNet (relative to here).")
@click.option("--controlnet-strength", type=float, help="ControlNet strength (0.4-0.9).")
@click.option("--denoise", type=float,
              help="With --more-like: how much of the version is redrawn (0.05 keeps nearly all of it, below 1).")
@click.option("--daemon", metavar="URL", envvar="SIDECAR_DAEMON_URL",
              help=f"The sidecar daemon (default: pipeline.toml's `daemon`, else {DEFAULT_URL}).")
@click.option("--token", metavar="TOKEN",
              help="The daemon's token, when it has one (default: SIDECAR_TOKEN, else `token` in the sidecar "
                   "config file, SIDECAR_CONFIG or ~/.config/plasma-sidecar/config.toml).")
@click.option("--repeat", type=int, default=1, show_default=True, metavar="K",
              help="K versions per page with the same parameters and seed, plus a consistency report "
                   "(contact sheet + similarity figures in output/ch-XX/consistency/).")
@click.option("--where", metavar="WHERE",
              help="Where the daemon runs the pages: local, any, a tag or a backend name of its [[backends]] "
                   "tables [default: the daemon's default_where]. Away from local, pages are submitted "
                   "together (--parallel) so every backend of the pool works.")
@click.option("--parallel", type=click.IntRange(min=1, max=512), metavar="N",
              help="Pages in flight at once [default: 1; 64 with --where other than local]. Versions are still "
                   "numbered under the log's lock; pages finish (and are logged) in any order.")
@click.option("--drafts", type=click.IntRange(1, 100), metavar="N",
              help="N cheap drafts of the page (seeds seed, seed+1, ...) into output/ch-XX/drafts/chXX_pNNN/ with "
                   "a contact sheet and index.json; never into raw/.")
@click.option("--draft-steps", type=click.IntRange(1, 150), metavar="S",
              help=f"Sampling steps of each draft (default {DEFAULT_DRAFT_STEPS}).")
@click.option("--from-draft", type=click.IntRange(min=1), metavar="K",
              help="Render draft K's seed and parameters at full steps (--steps, else the page's) as the page's "
                   "next version (logged with draftOf).")
@click.option("--upscale", metavar="MODEL",
              help="Also make the page's print: the image upscaled by MODEL (a file of the daemon's "
                   "models/upscale_models/, e.g. 4x-UltraSharp.pth) into output/ch-XX/print/ under the version's "
                   "name (never raw/), logged as upscaleModel and printFile. With --reproduce too.")
@click.option("--version", "version", type=click.IntRange(min=1), metavar="N",
              help="With --upscale and --page: upscale that version as it was rendered (no new render) into "
                   "output/ch-XX/print/; its log entry gains upscaleModel and printFile.")
@click.option("--more-like", type=click.IntRange(min=1), metavar="V",
              help="img2img from version V of the page (its PNG in raw/ as the init image) with --denoise D "
                   "(0.05-1, how much is redrawn); the result is the page's next version, logged with initImage "
                   "and denoise.")
@click.option("--variations", type=click.IntRange(1, 100), metavar="N",
              help="N versions at once, seeds seed, seed+1, ... (one group on the daemon), each the page's next "
                   "version as it finishes; with --more-like, N variations of that version.")
@click.option("--dry-run", is_flag=True, help="Print the requests; submit and write nothing.")
@click.option("--reproduce", metavar="FILE.workflow.json", type=click.Path(dir_okay=False),
              help="Submit that exact workflow again as a new version of its page (recorded as reproducedFrom).")
@click.option("--refine", metavar="TEXT",
              help="Feedback in words (\"look left, dusk\"): each page's prompt is refined through the daemon's "
                   "Ollama first (trigger word and character.toml's locked traits kept), the diff shown, and the "
                   "page rendered with it; the log entry records refinedFrom.")
@click.option("--look", type=click.Path(dir_okay=False),
              help="With --refine: the picked image, which the vision model looks at first.")
@click.option("--write", is_flag=True,
              help="With --refine: write the refined prompt into the prompt file (front matter kept) once the "
                   "page is rendered.")
@click.option("--json", "json_out", is_flag=True, help="A machine-readable summary on stdout; no progress bar.")
@click.pass_context
def main(ctx: click.Context, **opts: Any) -> None:
    """Generate manga page images through the local sidecar daemon.

    Reads prompts/ch-XX/chXX_pNNN.txt (prompt text, optionally after a +++ TOML front matter block),
    submits the page to the daemon, shows progress, and writes output/ch-XX/raw/chXX_pNNN_vN.png (a new
    version N every run, never overwriting), chXX_pNNN_vN.workflow.json beside it, and an entry in
    output/ch-XX/generation-log.json. Command-line options override the front matter, which overrides
    the [generate] table of pipeline.toml.
    """
    if ctx.invoked_subcommand is not None:
        return
    ctx.exit(_generate(opts))


@main.command()
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Project root.")
@click.option("-c", "--chapter", type=click.IntRange(min=0), required=True, help="Chapter number.")
@click.option("--page", type=click.IntRange(min=0), required=True, help="Page number.")
@click.option("--version", "version", type=click.IntRange(min=1), required=True, help="Version to approve.")
@click.option("--json", "json_out", is_flag=True, help="Print the approved entry as JSON.")
@click.pass_context
def approve(ctx: click.Context, root: Path, chapter: int, page: int, version: int, json_out: bool) -> None:
    """Mark version N of a page approved in the chapter's generation log.

    \b
    Example:
      generate approve -c 1 --page 1 --version 2
    """
    project = Project(root.expanduser().resolve())
    target = Page(chapter, page)
    log_path = project.log_file(chapter)

    def mark(log: Any) -> dict[str, Any]:
        try:
            return approve_entry(log, target, version)
        except LookupError:
            known = sorted(set(versions_in(log, target)))
            raise InputError(
                f"{log_path} has no entry for {target.image_name(version)}"
                + (f" (versions logged for {target}: {', '.join(map(str, known))})." if known else "."),
                {"file": str(log_path), "versions": known},
            ) from None

    try:
        if not log_path.is_file():
            raise InputError(f"No generation log at {log_path}: nothing generated for chapter {chapter} yet.",
                             {"file": str(log_path)})
        entry = approve_version(project, target, version, mark)
    except StageError as exc:
        ctx.exit(_fail(exc, json_out))
    if json_out:
        _emit_json({"ok": True, "entry": entry, "log": project.relative(log_path)})
    else:
        click.echo(f"approved {target} v{version} ({entry.get('imageFile')}) in {project.relative(log_path)}")

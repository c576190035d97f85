"""`generate --reproduce FILE.workflow.json`: a logged workflow submitted as it is, as the page's next
version (its pose image and --more-like init image found from the generation log). The workflow carries
the checkpoint (and so the family) and every LoRA loader with its strength; the log entry's LoRA hashes
are checked against the daemon's files first (`pipeline_stage.lorahash`): a replaced LoRA stops it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline_stage.errors import InputError, PromptFileMissing
from pipeline_stage.genlog import find_entries, read_log
from pipeline_stage.layout import Page, Project, page_of
from pipeline_stage.morelike import init_loader_count, reproduce_init
from pipeline_stage.stage import PageTask
from pipeline_stage.tasks import PARAM_OPTIONS
from sidecar.api.models import JobRequest
from sidecar.errors import SidecarError
from sidecar.graph import Graph


def reproduce_task(project: Project, opts: dict[str, Any]) -> PageTask:
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
    # Every LoRA with the hash the log recorded: checked against the daemon's files before anything is sent.
    hashes = tuple((str(lora.get("file") or lora.get("id")), str(lora["sha256"])) for lora in source.get("loras") or []
                   if isinstance(lora, dict) and lora.get("sha256") and (lora.get("file") or lora.get("id")))
    return PageTask(page, request, prompt_file, reproduced_from=project.relative(path),
                    template_hint=source.get("workflowTemplate"), init_image=init_logged, lora_hashes=hashes,
                    reproduces=source.get("imageFile"))

"""The pages a `generate` command line names, each as a task: its prompt file's text and front matter,
under pipeline.toml's [generate] table, under the command line's options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_stage.errors import InputError, PromptFileMissing
from pipeline_stage.layout import Page, Project, parse_pages
from pipeline_stage.prompts import GenerateOptions, build_request, load_defaults, load_prompt, merge
from pipeline_stage.stage import PageTask

# The options that set a job's parameters: the modes that take none (--reproduce, --version) name them.
PARAM_OPTIONS = ("seed", "lora", "no_lora", "lora_strength", "steps", "cfg", "sampler", "scheduler", "negative",
                 "width", "height", "checkpoint", "pose", "controlnet_strength", "denoise")


def cli_options(opts: dict[str, Any]) -> GenerateOptions:
    values: dict[str, Any] = {}
    simple = {"seed": "seed", "lora_strength": "lora_strength", "steps": "steps", "cfg": "cfg",
              "sampler": "sampler", "scheduler": "scheduler", "negative": "negative_prompt", "width": "width",
              "height": "height", "checkpoint": "checkpoint", "controlnet_strength": "controlnet_strength",
              "denoise": "denoise"}
    for opt, field in simple.items():
        if opts[opt] is not None:
            values[field] = opts[opt]
    # The command line's LoRA choice replaces a page's LoRA stack (`loras`) too.
    if opts["no_lora"]:
        values["lora_id"], values["loras"] = "", []
    elif opts["lora"] is not None:
        values["lora_id"], values["loras"] = opts["lora"], None
    if opts["pose"] is not None:
        values["pose_image"] = Path(opts["pose"]).expanduser().resolve()  # relative to where we run
    return GenerateOptions.model_validate(values)


def chosen_pages(project: Project, opts: dict[str, Any]) -> list[Page]:
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


def page_tasks(project: Project, opts: dict[str, Any]) -> list[PageTask]:
    defaults = load_defaults(project.config_file())
    overrides = cli_options(opts)
    pages = chosen_pages(project, opts)
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

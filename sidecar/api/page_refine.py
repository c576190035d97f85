"""Refining a page of the pipeline project, for the studio's Pages view: `POST .../refine` asks the local
Ollama for the page's prompt (optionally looking at one of its versions first) and answers the diff;
`PUT .../prompt` writes the refined text the artist accepted as the page's prompt. Rendering with it is an
ordinary `POST /jobs` with the answer's `refinedFrom`, saved as a version by `POST .../versions`, which
records it in the log entry as `generate --refine` does. Parse, call, answer.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from aiohttp import web
from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from sidecar.api.errors import parse_body
from sidecar.api.keys import SETTINGS
from sidecar.api.operations import operation
from sidecar.api.project import PAGE, ProjectPage, _one_page, page_of, project_root
from sidecar.api.responses import json_response
from sidecar.assist.service import RefineAsk, refine_ask
from sidecar.assist.wire import RefineAnswer
from sidecar.errors import (
    AssistantAnswerInvalid, CharacterInvalid, NotFound, OllamaFailed, OllamaModelMissing, OllamaTimeout,
    OllamaUnavailable, ProjectNotConfigured, PromptFileChanged, PromptFileInvalid, VersionNotFound,
)
from sidecar.studio import refine as pages
from sidecar.whole_numbers import WholeNumbers

routes = web.RouteTableDef()
Text = Annotated[str, Field(max_length=4000)]


class In(WholeNumbers):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, strict=True)


class PageRefineRequest(In):
    feedback: str = Field(min_length=1, max_length=2000, description="what to change, in words")
    look_version: int | None = Field(None, ge=1, le=999_999, description="a version of the page: the vision "
                                                                         "model looks at its image first")


class PromptWrite(In):
    prompt: Text = Field(min_length=1, description="the page's new prompt text (the refinement's `refined`)")
    expected: Text = Field(description="the text it replaces (the refinement's `original`): the file must still "
                                       "hold it")


@routes.post(PAGE + "/refine")
@operation("Refine a page's prompt through Ollama: the change set, the refined prompt, the tag diff and the "
           "refinedFrom to render it with (nothing written)", {200: RefineAnswer}, request=PageRefineRequest,
           errors=(ProjectNotConfigured, NotFound, VersionNotFound, PromptFileInvalid, CharacterInvalid,
                   OllamaUnavailable, OllamaModelMissing, OllamaTimeout, OllamaFailed, AssistantAnswerInvalid),
           description="The same refinement as `sidecar prompt refine` on the page's prompt file, with the "
                       "character.toml found from it. Ollama not running (503), a model not pulled (503, "
                       "details.fix is the `ollama pull` line), a timeout (504) or an Ollama error (502) change "
                       "nothing.")
async def refine_page(request: web.Request) -> web.Response:
    root, page = project_root(request), page_of(request)
    req = await parse_body(request, PageRefineRequest)
    prompt_file = await asyncio.to_thread(pages.page_prompt_file, root, page)
    look = None
    if req.look_version is not None:
        look = await asyncio.to_thread(pages.version_image, root, page, req.look_version)
    ask = RefineAsk(feedback=req.feedback, prompt_file=prompt_file, look=look, look_field="lookVersion")
    return json_response(await refine_ask(ask, request.app[SETTINGS]))


@routes.put(PAGE + "/prompt")
@operation("Write a refined prompt as the page's prompt (front matter kept), as `generate --refine --write` does",
           {200: ProjectPage}, request=PromptWrite,
           errors=(ProjectNotConfigured, NotFound, PromptFileInvalid, PromptFileChanged),
           description="Only over the text it was refined from: a prompt file edited since is 409 "
                       "prompt_file_changed and stays as it is.")
async def write_prompt(request: web.Request) -> web.Response:
    root, page = project_root(request), page_of(request)
    req = await parse_body(request, PromptWrite)
    await asyncio.to_thread(pages.write_prompt, root, page, req.prompt, req.expected)
    return json_response(await asyncio.to_thread(_one_page, root, page))

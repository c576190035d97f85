"""POST /prompt/refine: the studio's (and any client's) way to refine a page prompt through the local
Ollama. Thin: the body is checked here, the work is `sidecar.assist.service.refine_ask`, the same the
`sidecar prompt refine` command runs."""

from __future__ import annotations

from aiohttp import web

from sidecar.api.errors import parse_body
from sidecar.api.keys import SETTINGS
from sidecar.api.models import RefineRequest
from sidecar.api.operations import operation
from sidecar.api.responses import json_response
from sidecar.assist.service import RefineAsk, refine_ask
from sidecar.assist.wire import RefineAnswer
from sidecar.errors import (
    AssistantAnswerInvalid, CharacterInvalid, InvalidField, OllamaFailed, OllamaModelMissing, OllamaTimeout,
    OllamaUnavailable, PromptFileInvalid,
)
from sidecar.userfiles import user_path

routes = web.RouteTableDef()


@routes.post("/prompt/refine")
@operation("Refine a prompt from feedback through Ollama: the change set with what became of each change, the "
           "refined prompt, the tag diff and its provenance (write: rewrite the prompt file)", {200: RefineAnswer},
           request=RefineRequest,
           errors=(PromptFileInvalid, CharacterInvalid, OllamaUnavailable, OllamaModelMissing, OllamaTimeout,
                   OllamaFailed, AssistantAnswerInvalid),
           description="Nothing is written unless `write` is true and the whole refinement succeeded; Ollama not "
                       "running (503 ollama_unavailable), a model not pulled (503 ollama_model_missing, "
                       "details.fix is the `ollama pull` line), a timeout (504) or an Ollama error (502) "
                       "change nothing.")
async def refine(request: web.Request) -> web.Response:
    req = await parse_body(request, RefineRequest)
    prompt_file = None
    if req.prompt_file is not None:
        prompt_file = user_path(req.prompt_file, "promptFile", PromptFileInvalid)
        if prompt_file.suffix != ".txt":
            raise PromptFileInvalid(f"promptFile {prompt_file} is not a page prompt file (.txt).",
                                    {"field": "promptFile", "path": str(prompt_file)})
    if req.write and prompt_file is None:
        raise InvalidField("write needs a promptFile to rewrite.", {"field": "write"})
    look = user_path(req.look_image_path, "lookImagePath") if req.look_image_path is not None else None
    ask = RefineAsk(feedback=req.feedback, prompt=req.prompt, prompt_file=prompt_file, look=look, write=req.write,
                    look_field="lookImagePath")
    return json_response(await refine_ask(ask, request.app[SETTINGS]))

"""The concept builder's routes (`sidecar.concepts`): concepts as `concepts/NAME.toml` in the daemon's
project, composing one into a prompt, rounds of four variations, their feedback, the intent document,
and a picked job made into a page's prompt file. Parse, call `concept_rounds` (or the store in a
thread), answer. Every route needs the project (`sidecar serve --project ROOT`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from sidecar.api.concept_rounds import compose_concept, composed_out, give_feedback, holding, start_round, to_page, view
from sidecar.api.errors import parse_body
from sidecar.api.keys import SETTINGS
from sidecar.api.operations import operation
from sidecar.api.project import _int, project_root
from sidecar.api.responses import json_response
from sidecar.concepts import intent as intents
from sidecar.concepts import store
from sidecar.concepts.fields import Concept
from sidecar.concepts.wire import (
    Composed, ComposeRequest, ConceptList, ConceptNew, ConceptPut, ConceptView, FeedbackAnswer, FeedbackRequest,
    IntentEdit, IntentView, PageRequest, PageWritten, RoundRequest, RoundStarted, UnreadableConcept,
)
from sidecar.errors import (
    AssistantAnswerInvalid, CharacterInvalid, CheckpointNotFound, ConceptExists, ConceptInvalid, ConceptNotFound,
    DiskFull, FamilyNotSupported, InvalidState, JobNotFinished, JobNotFound, LoraFamilyMismatch, LoraNotFound,
    NotFound, ProjectNotConfigured, ProjectPathOutside, PromptFileExists, QueueFull, ResolutionExceedsProfile,
    RoundNotFound, TrainingInProgress,
)

routes = web.RouteTableDef()
ONE = "/concepts/{name}"
READ_ERRORS = (ProjectNotConfigured, ConceptNotFound, ConceptInvalid, CharacterInvalid, ProjectPathOutside)


def _name(request: web.Request) -> str:
    return store.check_name(request.match_info["name"])


@routes.get("/concepts")
@operation("The project's concepts (concepts/*.toml) with their fields, locks and the character",
           {200: ConceptList}, errors=(ProjectNotConfigured, ConceptInvalid, CharacterInvalid, ProjectPathOutside))
async def list_concepts(request: web.Request) -> web.Response:
    root, settings = project_root(request), request.app[SETTINGS]

    def read() -> ConceptList:
        # One hand-edited file that no longer reads hides none of the others (it is named, with why).
        found, unreadable = [], []
        for n in store.names(root):
            try:
                found.append(view(root, n, settings))
            except ConceptInvalid as exc:
                unreadable.append(UnreadableConcept(name=n, code=exc.code, message=exc.message))
        return ConceptList(concepts=found, unreadable=unreadable)

    return json_response(await asyncio.to_thread(read))


@routes.post("/concepts")
@operation("Make a concept: concepts/NAME.toml with its fields (each lockable)", {201: ConceptView},
           request=ConceptNew, errors=(ProjectNotConfigured, ConceptExists, CharacterInvalid, ProjectPathOutside),
           description="Never overwrites: a concept of that name is 409 concept_exists (PUT changes one).")
async def new_concept(request: web.Request) -> web.Response:
    root, settings = project_root(request), request.app[SETTINGS]
    req = await parse_body(request, ConceptNew)
    concept = Concept(fields=req.fields, render=req.render)
    async with holding(request.app, req.name):
        await asyncio.to_thread(store.write, root, req.name, concept, new=True)
    return json_response(await asyncio.to_thread(view, root, req.name, settings, concept), 201)


@routes.get(ONE)
@operation("A concept: its fields and locks, what its rounds render with, the character's locked traits",
           {200: ConceptView}, errors=READ_ERRORS)
async def get_concept(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)
    return json_response(await asyncio.to_thread(view, root, name, request.app[SETTINGS]))


@routes.put(ONE)
@operation("Change a concept's fields, locks and render settings (the whole of them)", {200: ConceptView},
           request=ConceptPut, errors=READ_ERRORS)
async def put_concept(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)
    req = await parse_body(request, ConceptPut)
    concept = Concept(fields=req.fields, render=req.render)
    async with holding(request.app, name):
        await asyncio.to_thread(store.write, root, name, concept)
    return json_response(await asyncio.to_thread(view, root, name, request.app[SETTINGS], concept))


@routes.post(ONE + "/compose")
@operation("Compose the concept's prompt for the checkpoint's family: fields -> tags (nothing rendered)",
           {200: Composed}, request=ComposeRequest, errors=READ_ERRORS,
           description="The prompt engineer (Ollama) proposes; the character's traits and locked fields go in "
                       "verbatim, nothing a field does not say is kept (`refused` says what and why). Without "
                       "Ollama the prompt is the fields as written and `message` says why: never an error.")
async def compose_route(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)
    req = await parse_body(request, ComposeRequest)
    _, composition, _, _ = await compose_concept(request.app, root, name, req.checkpoint)
    return json_response(composed_out(composition))


@routes.post(ONE + "/rounds")
@operation("Start a round: the composed prompt rendered as four variations (a group of jobs, seeds seed..seed+3)",
           {202: RoundStarted}, request=RoundRequest,
           errors=(*READ_ERRORS, CheckpointNotFound, LoraNotFound, FamilyNotSupported, LoraFamilyMismatch,
                   ResolutionExceedsProfile, TrainingInProgress, QueueFull, DiskFull),
           description="Renders with pipeline.toml's [generate] defaults, the concept's render settings and this "
                       "request's, in that order; the round (fields, prompt, jobs) is added to the intent document "
                       "and the render settings kept for the next round.")
async def new_round(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)
    req = await parse_body(request, RoundRequest)
    return json_response(await start_round(request.app, root, name, req), 202,
                         headers={"Location": f"/concepts/{name}/intent"})


@routes.post(ONE + "/rounds/{round}/feedback")
@operation("The artist's feedback on the latest round: picks, rejections with a reason, words -> field changes "
           "for the next round (renders nothing)", {200: FeedbackAnswer}, request=FeedbackRequest,
           errors=(*READ_ERRORS, RoundNotFound, InvalidState, JobNotFound, JobNotFinished, NotFound,
                   AssistantAnswerInvalid),
           description="The feedback interpreter (Ollama) proposes field changes; a locked field is never changed "
                       "(refused, with the reason). Kept in the intent document either way; without Ollama no field "
                       "changes and `messages` says why.")
async def feedback(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)
    number = _int(request, "round", 1)
    req = await parse_body(request, FeedbackRequest)
    return json_response(await give_feedback(request.app, root, name, number, req))


def _intent_view(intent: intents.Intent) -> IntentView:
    return IntentView(intent=intent, preferences=intent.preferences())


@routes.get(ONE + "/intent")
@operation("The concept's intent document: every round, its feedback, and the preferences drawn from them",
           {200: IntentView}, errors=READ_ERRORS)
async def get_intent(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)

    def read() -> IntentView:
        store.read(root, name)
        return _intent_view(intents.read(root, name))

    return json_response(await asyncio.to_thread(read))


@routes.put(ONE + "/intent")
@operation("Edit the intent document's notes and dismissed preferences (the rounds are history)", {200: IntentView},
           request=IntentEdit, errors=READ_ERRORS)
async def put_intent(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)
    req = await parse_body(request, IntentEdit)

    def edit() -> IntentView:
        store.read(root, name)
        intent = intents.read(root, name).model_copy(update={"notes": req.notes, "dismissed": req.dismissed})
        intents.write(root, name, intent)
        return _intent_view(intent)

    async with holding(request.app, name):
        return json_response(await asyncio.to_thread(edit))


@routes.post(ONE + "/page")
@operation("Make a picked job of the concept a page's prompt file (front matter: seed, checkpoint, LoRAs, ...)",
           {201: PageWritten}, request=PageRequest,
           errors=(*READ_ERRORS, JobNotFound, JobNotFinished, PromptFileExists),
           description="`generate -c CHAPTER --page PAGE` then renders it. An existing prompt file is 409 "
                       "prompt_file_exists unless `overwrite` is true.")
async def page(request: web.Request) -> web.Response:
    root, name = project_root(request), _name(request)
    req = await parse_body(request, PageRequest)
    return json_response(await to_page(request.app, root, name, req), 201)

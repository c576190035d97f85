"""A concept's actions as the routes run them: compose, start a round (four variations through the job
and group machinery, recorded in the intent), read a round's feedback into field changes, and make a
picked job a page's prompt file. File work runs in a thread; one action at a time per concept.

Ollama being absent never fails an action: compose falls back to the fields as written, feedback is
kept without field changes, each with a message saying so (`sidecar.concepts.compose`, `interpret`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web

from pipeline_stage.errors import StageError
from pipeline_stage.layout import Page
from pipeline_stage.prompts import GenerateOptions, PipelineDefaults, StackedLora, build_request, load_defaults, merge
from sidecar.api.keys import BUILDER, CONCEPT_LOCKS, DEVICE, RUNNER, SETTINGS
from sidecar.api.responses import JobSummary
from sidecar.assist.character import CharacterSheet, find_character, load_character
from sidecar.concepts import intent as intents
from sidecar.concepts import store
from sidecar.concepts.compose import Composition, compose
from sidecar.concepts.fields import Concept, RenderSettings
from sidecar.concepts.interpret import Feedback, interpret
from sidecar.concepts.page import front_matter, write_page_prompt
from sidecar.concepts.wire import (
    ChangeOut, CharacterView, Composed, ComposedTagOut, ConceptView, FeedbackAnswer, FeedbackRequest, PageRequest,
    PageWritten, RefusalOut, RoundRequest, RoundStarted,
)
from sidecar.config import Settings
from sidecar.errors import InvalidField, InvalidState, JobNotFinished, NotFound, RoundNotFound
from sidecar.jobs.variations import build_variations, new_group_id

VARIATIONS = 4
SOURCE = "concepts"


@dataclass(frozen=True)
class Character:
    sheet: CharacterSheet
    file: Path | None


def character(root: Path, settings: Settings) -> Character:
    """The project's character.toml (at its root), else the configured trigger word alone."""
    found = find_character(root, stop=root)
    if found is not None:
        return Character(load_character(found), found)
    return Character(CharacterSheet(trigger=settings.trigger_word), None)


def view(root: Path, name: str, settings: Settings, concept: Concept | None = None) -> ConceptView:
    concept = concept or store.read(root, name)
    who = character(root, settings)
    return ConceptView(
        name=name, file=f"{store.FOLDER}/{name}.toml", fields=concept.fields, render=concept.render,
        character=CharacterView(file=str(who.file.relative_to(root)) if who.file else None, trigger=who.sheet.trigger,
                                locked=who.sheet.locked, locked_negative=who.sheet.locked_negative),
        rounds=len(intents.read(root, name).rounds))


def composed_out(c: Composition) -> Composed:
    return Composed(prompt=c.prompt, negative=c.negative, style=c.style, family=c.family, composer=c.composer,
                    model=c.model, message=c.message,
                    tags=[ComposedTagOut(field=t.field, tag=t.tag, source=t.source) for t in c.tags],
                    refused=[RefusalOut(field=r.field, tag=r.tag, reason=r.reason) for r in c.refused])


@asynccontextmanager
async def holding(app: web.Application, name: str) -> AsyncIterator[None]:
    lock = app[CONCEPT_LOCKS].setdefault(name, asyncio.Lock())
    async with lock:
        yield


def _defaults(root: Path) -> PipelineDefaults:
    try:
        return load_defaults(root / "pipeline.toml")
    except StageError as exc:
        raise InvalidField(f"The project's pipeline.toml cannot be used for a concept's round: {exc.message}",
                           {"field": "pipeline.toml"}) from None


def _render(concept: Concept, req: RoundRequest | None) -> RenderSettings:
    """The concept's render settings with what the round's request sets over them."""
    if req is None:
        return concept.render
    given = {k: getattr(req, k) for k in req.model_fields_set if k in RenderSettings.model_fields}
    return concept.render.model_copy(update=given)


def _options(render: RenderSettings) -> GenerateOptions:
    values = render.model_dump(exclude_none=True)
    if render.loras is not None:
        values["loras"] = [StackedLora(id=u.id, strength=u.strength) for u in render.loras]
    return GenerateOptions.model_validate(values)


async def compose_concept(app: web.Application, root: Path, name: str, checkpoint: str | None = None,
                          req: RoundRequest | None = None
                          ) -> tuple[Concept, Composition, RenderSettings, PipelineDefaults]:
    settings = app[SETTINGS]

    def load() -> tuple[Concept, Character, intents.Intent, PipelineDefaults]:
        return store.read(root, name), character(root, settings), intents.read(root, name), _defaults(root)

    concept, who, intent, defaults = await asyncio.to_thread(load)
    render = _render(concept, req)
    if checkpoint is not None:
        render = render.model_copy(update={"checkpoint": checkpoint})
    family = await app[BUILDER].checkpoint_family(render.checkpoint or defaults.checkpoint)
    composition = await compose(concept.fields, who.sheet, family, settings, base_negative=defaults.negative_prompt,
                                preferences=intent.fed())
    return concept, composition, render, defaults


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def start_round(app: web.Application, root: Path, name: str, req: RoundRequest) -> RoundStarted:
    if app[RUNNER].pool is None:  # with several backends a training stops only this machine's
        app[DEVICE].training.refuse_if_training()
    async with holding(app, name):
        concept, composition, render, defaults = await compose_concept(app, root, name, req=req)
        try:
            job = build_request(composition.prompt, merge(defaults, _options(render)))
        except StageError as exc:
            raise InvalidField(exc.message, exc.details) from None
        wanted = job.generation().model_copy(update={"negative_prompt": composition.negative or None,
                                                      "seed": req.seed})
        specs = await build_variations(app[BUILDER], wanted, VARIATIONS)
        jobs = await app[RUNNER].submit_many(specs, group_id=new_group_id(), source=SOURCE)

        def record() -> int:
            intent = intents.read(root, name)
            number = len(intent.rounds) + 1
            intent.rounds.append(intents.Round(
                round=number, group_id=jobs[0].group_id or "", jobs=[j.id for j in jobs],
                seeds=[j.params.seed for j in jobs if j.params.seed is not None], fields=concept.fields, render=render,
                prompt=composition.prompt, negative=composition.negative, composer=composition.composer,
                family=composition.family, started_at=_now()))
            intents.write(root, name, intent)
            if render != concept.render:  # the next round renders like this one
                store.write(root, name, concept.model_copy(update={"render": render}))
            return number

        number = await asyncio.to_thread(record)
    return RoundStarted(round=number, group_id=jobs[0].group_id or "", jobs=[JobSummary.from_record(j) for j in jobs],
                        composed=composed_out(composition))


async def give_feedback(app: web.Application, root: Path, name: str, number: int,
                        req: FeedbackRequest) -> FeedbackAnswer:
    settings = app[SETTINGS]
    if not (req.picks or req.rejects or req.text):
        raise InvalidField("Feedback needs a pick, a rejection or a few words (picks, rejects, text).",
                           {"field": "picks"})
    async with holding(app, name):
        def load() -> tuple[Concept, Character, intents.Intent]:
            return store.read(root, name), character(root, settings), intents.read(root, name)

        concept, who, intent = await asyncio.to_thread(load)
        if not 1 <= number <= len(intent.rounds):
            raise RoundNotFound(f"Concept {name!r} has {len(intent.rounds)} round(s); there is no round {number}.",
                                {"name": name, "round": number})
        this = intent.rounds[number - 1]
        if number != len(intent.rounds):
            raise InvalidState(f"Round {number} is not the latest ({len(intent.rounds)}): feedback steers the next "
                               "round from the latest one.", {"round": number, "latest": len(intent.rounds)})
        if this.feedback is not None:
            raise InvalidState(f"Round {number} already has its feedback: start the next round.", {"round": number})
        rejected = [r.job_id for r in req.rejects]
        for job_id in [*req.picks, *rejected]:
            if job_id not in this.jobs:
                raise InvalidField(f"Job {job_id} is not one of round {number}'s jobs.", {"field": "picks",
                                                                                          "jobId": job_id})
        both = set(req.picks) & set(rejected)
        if both or len(set(req.picks)) != len(req.picks) or len(set(rejected)) != len(rejected):
            raise InvalidField("A job is picked or rejected once, not both.", {"field": "rejects"})
        look = None
        if req.look:
            if not req.picks:
                raise InvalidField("look describes a picked image: pick one.", {"field": "look"})
            look = await _image(app, req.picks[0])
        fed = Feedback(prompt=this.prompt, picks=len(req.picks), rejects=[r.reason for r in req.rejects],
                       text=req.text, preferences=intent.fed())
        result = await interpret(concept.fields, who.sheet, fed, settings, look=look)
        this.feedback = intents.RoundFeedback(
            picks=req.picks, rejects=req.rejects, text=req.text, observations=result.observations,
            changes=[intents.FieldChangeRecord(field=o.field, old=o.old, new=o.new, reason=o.reason, status=o.status,
                                               note=o.note) for o in result.outcomes],
            summary=result.summary, interpreter=result.model, at=_now())

        def save() -> None:
            if result.fields != concept.fields:
                store.write(root, name, concept.model_copy(update={"fields": result.fields}))
            intents.write(root, name, intent)

        await asyncio.to_thread(save)
    return FeedbackAnswer(
        round=number, summary=result.summary, observations=result.observations, fields=result.fields,
        changes=[ChangeOut(field=o.field, old=o.old, new=o.new, reason=o.reason, status=o.status, note=o.note)
                 for o in result.outcomes],
        preferences=intent.preferences(), messages=result.messages)


async def _image(app: web.Application, job_id: str) -> bytes:
    record = await app[RUNNER].get(job_id)
    if record.status != "succeeded" or not record.output_file:
        raise JobNotFinished(f"Job {job_id} is {record.status}: the vision analyzer looks at a finished image.",
                             {"jobId": job_id, "status": record.status})
    path = Path(record.output_file)
    try:
        return await asyncio.to_thread(path.read_bytes)
    except OSError:
        raise NotFound(f"The image of job {job_id} is no longer on disk.", {"jobId": job_id}) from None


async def to_page(app: web.Application, root: Path, name: str, req: PageRequest) -> PageWritten:
    async with holding(app, name):
        intent = await asyncio.to_thread(intents.read, root, name)
        await asyncio.to_thread(store.read, root, name)  # the concept exists
        found = next((r for r in intent.rounds if req.job_id in r.jobs), None)
        if found is None:
            raise InvalidField(f"Job {req.job_id} is not one of concept {name!r}'s rounds' jobs.",
                               {"field": "jobId", "jobId": req.job_id})
        record = await app[RUNNER].get(req.job_id)
        if record.status != "succeeded":
            raise JobNotFinished(f"Job {record.id} is {record.status}: only a rendered image's concept becomes a page.",
                                 {"jobId": record.id, "status": record.status})
        page = Page(req.chapter, req.page)
        origin = (f"From concept {name}, round {found.round}, job {record.id} (sidecar concepts page): "
                  f"`generate -c {req.chapter} --page {req.page}` renders it.")
        path = await asyncio.to_thread(write_page_prompt, root, page, record.params, origin, overwrite=req.overwrite)
        content = await asyncio.to_thread(path.read_text, encoding="utf-8")
    return PageWritten(file=path.relative_to(root).as_posix(), content=content,
                       front_matter={k: v for k, v in front_matter(record.params).items() if v is not None})

"""The Explorer's routes: the installed LoRAs with their family, trigger and metadata and the state of
each one's showcase; a showcase rendered once per LoRA file and then served from the cache
(`sidecar.concepts.showcase`); and two LoRA combinations (with strengths) compared side by side on the
same seeds, one group of jobs (for each seed: combination A, then B) as a `lora:<id>` grid's cells are,
with a contact sheet of them (`sidecar.concepts.compare_sheet`) to save and share.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, StringConstraints

from sidecar.api.keys import BUILDER, DEVICE, RUNNER, SETTINGS
from sidecar.api.errors import parse_body
from sidecar.api.loras import installed_loras
from sidecar.api.operations import operation
from sidecar.api.responses import JobSummary, LoraInfo, json_response
from sidecar.concepts import compare_sheet, showcase
from sidecar.concepts.compose import style_for
from sidecar.concepts.fields import BareName, Wire
from sidecar.errors import (
    CheckpointNotFound, ComfyUnavailable, DiskFull, FamilyNotSupported, InvalidField, JobNotFound, LoraFamilyMismatch,
    LoraNotFound, NotFound, QueueFull, ResolutionExceedsProfile, TrainingInProgress,
)
from sidecar.jobs.params import GenerationRequest, LoraRef, LoraStrength, Pixels, Prompt, Resolution, Steps
from sidecar.jobs.variations import new_group_id, variation_seeds
from sidecar.statuses import JOB_TERMINAL

routes = web.RouteTableDef()
SOURCE = "explorer"
RENDER_ERRORS = (CheckpointNotFound, LoraNotFound, FamilyNotSupported, LoraFamilyMismatch, ResolutionExceedsProfile,
                 TrainingInProgress, QueueFull, DiskFull)


class In(Wire):
    model_config = Wire.model_config | {"strict": True}


class ShowcaseState(Wire):
    status: str = Field(description="`none` (never rendered), `cached` (the images show this file), `stale` (the "
                                    "file changed since: render again)")
    checkpoint: str | None = None
    jobs: list[str] = Field(default_factory=list)
    prompts: list[str] = Field(default_factory=list)


class ExplorerLora(Wire):
    id: str
    family: str = Field(description="sd15, sdxl, flux or unknown (read from the file's header)")
    trigger: str = Field(description="the trigger word from its metadata, else its id")
    info: LoraInfo
    showcase: ShowcaseState


class ExplorerLoras(Wire):
    loras: list[ExplorerLora]


class ShowcaseRequest(In):
    checkpoint: BareName | None = Field(None, description="default: the daemon's checkpoint")
    strength: LoraStrength | None = Field(None, description="the LoRA's strength (default: lora_strength)")
    steps: Steps | None = None
    width: Pixels | None = None
    height: Pixels | None = None
    force: bool = Field(False, description="render again even when the cached showcase is current")


class ShowcaseAnswer(Wire):
    lora: str
    cached: bool = Field(description="true: the cached images (nothing rendered); false: new jobs were queued")
    prompts: list[str]
    seed: int
    jobs: list[JobSummary]


class Combination(In):
    label: Annotated[str, StringConstraints(max_length=40)] = ""
    # An object, LoRA id -> strength (null: lora_strength), in the order applied: an id cannot be given twice.
    loras: dict[BareName, LoraStrength | None] = Field(
        max_length=3, json_schema_extra={"additionalProperties": False},
        description="the stack, LoRA id -> strength ({} : no LoRA; at most 3, every profile's max_loras)")


class CompareRequest(In):
    prompt: Prompt
    a: Combination
    b: Combination
    seed: int = Field(ge=0, le=2**64 - 4,
                      description="the first row's seed; the rows are seed, seed+1, ... (as variations)")
    rows: int = Field(2, ge=1, le=4, description="how many seeds: each renders both combinations")
    checkpoint: BareName | None = None
    negative_prompt: Annotated[str, StringConstraints(max_length=4000)] | None = None
    steps: Steps | None = None
    width: Pixels | None = None
    height: Pixels | None = None


class CompareCell(Wire):
    column: str = Field(description="`a` or `b`")
    seed: int
    job: JobSummary


class CompareAnswer(Wire):
    group_id: str
    columns: dict[str, Combination]
    seeds: list[int]
    cells: list[CompareCell] = Field(description="row by row: for each seed, a then b")
    sheet: str = Field(description="the contact sheet's URL (a then b side by side, a row per seed)")


def _refuse_if_training(app: web.Application) -> None:
    if app[RUNNER].pool is None:
        app[DEVICE].training.refuse_if_training()


async def _listing(app: web.Application) -> list[ExplorerLora]:
    infos, entries = await asyncio.gather(installed_loras(app), app[BUILDER].families.listing("loras"))
    families = {e.name: e.reading.family for e in entries}
    cache = await asyncio.to_thread(showcase.read, app[SETTINGS].data_dir)
    out = []
    for info in infos:
        entry = cache.loras.get(info.id)
        digest = await app[BUILDER].families.sha256("loras", info.file_name)
        state = ShowcaseState(status="none")
        if entry is not None:
            state = ShowcaseState(status="cached" if entry.sha256 == digest else "stale", checkpoint=entry.checkpoint,
                                  jobs=entry.jobs, prompts=entry.prompts)
        out.append(ExplorerLora(id=info.id, family=families.get(info.file_name, "unknown"),
                                trigger=info.trigger_word or info.id, info=info, showcase=state))
    return out


@routes.get("/explorer/loras")
@operation("The installed LoRAs for the Explorer: family, trigger word, metadata and each one's showcase",
           {200: ExplorerLoras}, errors=(ComfyUnavailable,))
async def explorer_loras(request: web.Request) -> web.Response:
    return json_response(ExplorerLoras(loras=await _listing(request.app)))


async def _jobs_alive(app: web.Application, ids: list[str]) -> list | None:
    records = []
    for job_id in ids:
        try:
            record = await app[RUNNER].get(job_id)
        except JobNotFound:
            return None
        if record.status in ("failed", "cancelled"):
            return None
        records.append(record)
    return records


@routes.post("/explorer/loras/{id}/showcase")
@operation("A LoRA's showcase: a few fixed prompts on one seed, rendered once per LoRA file and then cached",
           {200: ShowcaseAnswer, 202: ShowcaseAnswer}, request=ShowcaseRequest,
           errors=(*RENDER_ERRORS, ComfyUnavailable),
           description="200: the cached showcase (its LoRA file and every setting unchanged: checkpoint, size, "
                       "steps, strength, prompts; nothing rendered). 202: new jobs queued (never rendered, the file changed since, its jobs removed, or `force`).")
async def showcase_route(request: web.Request) -> web.Response:
    app = request.app
    req = await parse_body(request, ShowcaseRequest)
    lora_id = request.match_info["id"]
    lora = next((item for item in await _listing(app) if item.id == lora_id), None)
    if lora is None:
        raise LoraNotFound(f"No LoRA {lora_id!r} is installed (GET /explorer/loras lists them).", {"lora": lora_id})
    settings = app[SETTINGS]
    checkpoint = req.checkpoint or settings.checkpoint
    digest = await app[BUILDER].families.sha256("loras", lora.info.file_name)
    cache = await asyncio.to_thread(showcase.read, settings.data_dir)
    entry = cache.loras.get(lora_id)
    # The jobs are built (nothing queued) before the cache is asked: its key is their resolved parameters.
    family = await app[BUILDER].checkpoint_family(checkpoint)
    prompts = showcase.prompts_for(lora.trigger, style_for(family))
    size = Resolution(width=req.width, height=req.height) if req.width or req.height else None
    specs = [await app[BUILDER].build(GenerationRequest(
        prompt=p, checkpoint=checkpoint, seed=showcase.SEED, steps=req.steps, resolution=size,
        loras=[LoraRef(id=lora_id, strength=req.strength)])) for p in prompts]
    key = showcase.settings_key(s.params.stored() for s in specs)
    if not req.force and showcase.fresh(entry, digest, key):
        assert entry is not None
        records = await _jobs_alive(app, entry.jobs)
        if records is not None:
            return json_response(ShowcaseAnswer(lora=lora_id, cached=True, prompts=entry.prompts, seed=entry.seed,
                                                jobs=[JobSummary.from_record(r) for r in records]))
    _refuse_if_training(app)
    group = new_group_id()
    jobs = await app[RUNNER].submit_many(specs, group_id=group, source=SOURCE)
    cache.loras[lora_id] = showcase.ShowcaseEntry(sha256=digest, checkpoint=checkpoint, prompts=prompts,
                                                  seed=showcase.SEED, strength=req.strength, settings_key=key,
                                                  group_id=group, jobs=[j.id for j in jobs])
    await asyncio.to_thread(showcase.write, settings.data_dir, cache)
    return json_response(ShowcaseAnswer(lora=lora_id, cached=False, prompts=prompts, seed=showcase.SEED,
                                        jobs=[JobSummary.from_record(j) for j in jobs]), 202)


@routes.post("/explorer/compare")
@operation("Compare two LoRA combinations side by side: each seed rendered with A and with B (one group)",
           {202: CompareAnswer}, request=CompareRequest, errors=RENDER_ERRORS,
           description="The same prompt, checkpoint and settings for every cell; only the LoRA stack differs "
                       "between the columns, only the seed between the rows (as `sidecar grid --x lora:<id>=...`).")
async def compare(request: web.Request) -> web.Response:
    app = request.app
    req = await parse_body(request, CompareRequest)
    _refuse_repeated_keys(await request.read())
    seeds = variation_seeds(req.seed, req.rows)
    _refuse_if_training(app)
    size = Resolution(width=req.width, height=req.height) if req.width or req.height else None
    cells: list[tuple[str, int]] = [(column, seed) for seed in seeds for column in ("a", "b")]
    specs = []
    for column, seed in cells:
        stack = (req.a if column == "a" else req.b).loras
        specs.append(await app[BUILDER].build(GenerationRequest(
            prompt=req.prompt, negative_prompt=req.negative_prompt, checkpoint=req.checkpoint, seed=seed,
            steps=req.steps, resolution=size, loras=[LoraRef(id=i, strength=v) for i, v in stack.items()])))
    group = new_group_id()
    jobs = await app[RUNNER].submit_many(specs, group_id=group, source=SOURCE)
    index = compare_sheet.CompareIndex(
        group_id=group, prompt=req.prompt, columns={k: _label(k, c) for k, c in (("a", req.a), ("b", req.b))},
        stacks={"a": dict(req.a.loras), "b": dict(req.b.loras)}, seeds=seeds,
        cells=[compare_sheet.IndexCell(column=c, seed=s, job_id=j.id) for (c, s), j in zip(cells, jobs)])
    await asyncio.to_thread(compare_sheet.write_index, app[SETTINGS].data_dir, index)
    return json_response(CompareAnswer(
        group_id=group, columns={"a": req.a, "b": req.b}, seeds=seeds, sheet=f"/explorer/compare/{group}/sheet.png",
        cells=[CompareCell(column=c, seed=s, job=JobSummary.from_record(j)) for (c, s), j in zip(cells, jobs)]), 202)


def _refuse_repeated_keys(raw: bytes) -> None:
    """A combination's stack is an object, LoRA id -> strength, and JSON parsers keep the last of a repeated
    key: `{"ink": 0.5, "ink": 0.9}` would render one LoRA at a strength the artist may not have meant.
    (The body already parsed once: this reading cannot fail.)"""
    repeated: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        repeated.extend(k for i, k in enumerate(keys) if k in keys[:i])
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)
    if repeated:
        raise InvalidField(f"The body gives {repeated[0][:80]!r} twice: a combination names each LoRA once, with "
                           "its strength.", {"field": "loras", "key": repeated[0][:80]})


def _label(column: str, combination: Combination) -> str:
    if combination.label:
        return combination.label
    stack = " + ".join(f"{i}:{v}" if v is not None else i for i, v in combination.loras.items())
    return f"{column}: {stack or 'no LoRA'}"


@routes.get("/explorer/compare/{group}/sheet.png")
@operation("A compare's contact sheet: combination A and B side by side, a row per seed (PNG)",
           {200: None}, binary="image/png", errors=(NotFound,),
           description="Drawn once every cell has finished and then kept (`explorer/compare/<groupId>/` in the "
                       "data dir, beside its `index.json`); before that, a preview with each unfinished cell's "
                       "status (`Cache-Control: no-store`).")
async def compare_sheet_route(request: web.Request) -> web.StreamResponse:
    data_dir = request.app[SETTINGS].data_dir
    group = request.match_info["group"]
    index = await asyncio.to_thread(compare_sheet.read_index, data_dir, group)
    done = await asyncio.to_thread(compare_sheet.kept, data_dir, index)
    if done is not None:
        return web.FileResponse(done, headers={"Content-Type": "image/png", "Cache-Control": "no-cache"})
    outcomes: dict[str, tuple[str, Path | None, str]] = {}
    for cell in index.cells:
        try:
            record = await request.app[RUNNER].get(cell.job_id)
        except JobNotFound:
            continue  # removed (retention): drawn as such
        image = Path(record.output_file) if record.output_file else None
        outcomes[cell.job_id] = (record.status, image if image is not None and image.is_file() else None,
                                 record.error_code or "")
    finished = len(outcomes) == len(index.cells) and all(o[0] in JOB_TERMINAL for o in outcomes.values())
    path = await asyncio.to_thread(compare_sheet.draw, data_dir, index, outcomes, keep=finished)
    cache = "no-cache" if finished else "no-store"
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": cache})

"""GET /models: the checkpoints, LoRAs and diffusion models the backend offers, each with its family
(`sd15`, `sdxl`, `flux`, read from the file's header by `sidecar.jobs.families`) and the backends that can
run it (the router's own admission test, `Member.judge`, asked of that one file: the studio's checkpoint
picker shows where a model would go before a job is sent)."""

from __future__ import annotations

import asyncio
from typing import Literal

from aiohttp import web
from pydantic import Field

from sidecar.api.keys import BUILDER, POOL, PROFILE
from sidecar.api.operations import Query, operation
from sidecar.api.responses import Out, json_response
from sidecar.backends.admission import Needs
from sidecar.errors import ComfyUnavailable, InvalidField
from sidecar.jobs.families import ModelEntry

routes = web.RouteTableDef()
TRUE, FALSE = ("1", "true"), ("0", "false")


class ModelFileInfo(Out):
    name: str = Field(description="the file name, as a job's `checkpoint` (or LoRA file) names it")
    family: Literal["sd15", "sdxl", "flux", "unknown"] = Field(
        description="read from the file's safetensors header (tensor names and shapes), never its name; a file "
                    "only a remote backend has: `flux` in diffusion_models/ (ComfyUI's UNETLoader folder), else "
                    "`unknown`")
    family_note: str | None = Field(None, description="why the family is unknown, or how it was judged when not "
                                                      "from the header")
    size_bytes: int | None = Field(None, description="null when the file is not on this machine")
    backends: list[str] = Field(default_factory=list, description=(
        "the backends that can run it: their profile runs its family (an `unknown` one: the base family's) and "
        "they have the file or can be sent it (`local` without [[backends]])"))
    sha256: str | None = Field(None, description="with ?sha256=1, a LoRA's SHA-256 where this machine has the file "
                                                 "(what a log entry records); null otherwise")


class ModelList(Out):
    """GET /models: each model folder's files with their family."""

    checkpoints: list[ModelFileInfo]
    loras: list[ModelFileInfo]
    diffusion_models: list[ModelFileInfo] = Field(description="ComfyUI's diffusion_models/ (Flux)")


def _runs_on(app: web.Application, folder: str, entry: ModelEntry) -> list[str]:
    family = entry.reading.known
    pool = app.get(POOL)
    if pool is None:  # one backend, `local` in /health: its profile and (the embedded engine's) families
        engine_families = getattr(app[BUILDER].backend, "families", None)
        ok = family is None or (app[PROFILE].allows(family) and (engine_families is None or family in engine_families))
        return ["local"] if ok else []
    needs = Needs(models=((folder, entry.name),), family=family)
    return [m.name for m in pool.members if m.judge(needs, pool.local_models).admitted]


@routes.get("/models")
@operation("Installed models with their family (sd15, sdxl, flux), read from each file's header, and the backends "
           "that can run each", {200: ModelList}, errors=(ComfyUnavailable,),
           query=(Query("sha256", {"type": "boolean", "default": False},
                        "1|true: each LoRA's SHA-256 too, where this machine has the file (hashed once per size and "
                        "modification time; `generate --reproduce` compares it with the log's)"),))
async def models(request: web.Request) -> web.Response:
    hashes = request.query.get("sha256", "0").lower()
    if hashes not in TRUE + FALSE:
        raise InvalidField("sha256 must be 1, 0, true or false.", {"field": "sha256", "value": hashes[:16]})
    families = request.app[BUILDER].families
    checkpoints, loras, diffusion = await asyncio.gather(
        families.listing("checkpoints"), families.listing("loras"), families.listing("diffusion_models"))
    digests: list[str | None] = [None] * len(loras)
    if hashes in TRUE:
        digests = list(await asyncio.gather(*(families.sha256("loras", e.name) if e.local else _none()
                                               for e in loras)))

    def info(folder: str, entry: ModelEntry, sha256: str | None = None) -> ModelFileInfo:
        return ModelFileInfo(name=entry.name, family=entry.reading.family, family_note=entry.reading.reason,
                             size_bytes=entry.size_bytes, backends=_runs_on(request.app, folder, entry), sha256=sha256)

    return json_response(ModelList(
        checkpoints=[info("checkpoints", e) for e in checkpoints],
        loras=[info("loras", e, d) for e, d in zip(loras, digests, strict=True)],
        diffusion_models=[info("diffusion_models", e) for e in diffusion]))


async def _none() -> None:
    return None

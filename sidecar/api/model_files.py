"""GET /models: the checkpoints, LoRAs and diffusion models the backend offers, each with its family
(`sd15`, `sdxl`, `flux`, read from the file's header by `sidecar.jobs.families`)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from sidecar.api.keys import BUILDER
from sidecar.api.operations import operation
from sidecar.api.responses import ModelFileInfo, ModelList, json_response
from sidecar.errors import ComfyUnavailable
from sidecar.jobs.families import ModelEntry

routes = web.RouteTableDef()


def _info(entry: ModelEntry) -> ModelFileInfo:
    return ModelFileInfo(name=entry.name, family=entry.reading.family, family_note=entry.reading.reason,
                         size_bytes=entry.size_bytes)


@routes.get("/models")
@operation("Installed models with their family (sd15, sdxl, flux), read from each file's header",
           {200: ModelList}, errors=(ComfyUnavailable,))
async def models(request: web.Request) -> web.Response:
    families = request.app[BUILDER].families
    checkpoints, loras, diffusion = await asyncio.gather(
        families.listing("checkpoints"), families.listing("loras"), families.listing("diffusion_models"))
    return json_response(ModelList(checkpoints=[_info(e) for e in checkpoints], loras=[_info(e) for e in loras],
                                   diffusion_models=[_info(e) for e in diffusion]))

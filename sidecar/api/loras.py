"""GET /loras: the installed LoRAs with the metadata a person asks about (trigger word, steps, dim)."""

from __future__ import annotations

import asyncio
import functools

from aiohttp import web

from sidecar.api.keys import BACKEND
from sidecar.api.operations import operation
from sidecar.api.responses import LoraInfo, LoraList, json_response
from sidecar.errors import ComfyUnavailable
from sidecar.training.lora_metadata import list_loras, list_served_loras

routes = web.RouteTableDef()


@routes.get("/loras")
@operation("Installed LoRAs with their safetensors metadata", {200: LoraList}, errors=(ComfyUnavailable,))
async def loras(request: web.Request) -> web.Response:
    return json_response(LoraList(loras=await installed_loras(request.app)))


async def installed_loras(app: web.Application) -> list[LoraInfo]:
    """The LoRAs as GET /loras lists them (the Explorer adds each one's family and showcase)."""
    backend = app[BACKEND]
    directory = backend.models_dir("loras")
    if directory is None:
        # Attached to a ComfyUI: it lists the files and reads their metadata (`model_metadata`).
        names = await backend.list_models("loras") or []
        items = await list_served_loras(names, functools.partial(backend.model_metadata, "loras")
                                        if hasattr(backend, "model_metadata") else None)
    else:
        items = await asyncio.to_thread(list_loras, directory)
    return [LoraInfo.model_validate(item) for item in items]

"""A training run's publish bundle (`POST /loras/{id}/publish`, `sidecar loras publish`): the route; the bundle
is `sidecar.training.publish`'s."""

from __future__ import annotations

from aiohttp import web

from sidecar.api.errors import parse_body
from sidecar.api.keys import SETTINGS
from sidecar.api.operations import operation
from sidecar.api.responses import json_response
from sidecar.api.training import TRAINING
from sidecar.errors import CheckpointFileMissing, InvalidField, InvalidState, TrainingNotFound
from sidecar.training.publish import publish as write_bundle
from sidecar.training.wire import PublishedBundle, PublishRequest

routes = web.RouteTableDef()


@routes.post("/loras/{id}/publish")
@operation("Write the publish bundle of a run's LoRA (`sidecar loras publish`)", {201: PublishedBundle},
           request=PublishRequest,
           description="{id}: a run, or an installed LoRA a run here trained. Writes root/dist/<name>/ (the LoRA, "
                       "metadata.json, README.md model card, samples/, training/config.json, dataset/manifest.json, "
                       "and with withDataset the images) and root/dist/<name>.zip, byte-reproducible; an existing "
                       "bundle of that name is replaced.",
           errors=(TrainingNotFound, InvalidField, InvalidState, CheckpointFileMissing))
async def publish(request: web.Request) -> web.Response:
    req = await parse_body(request, PublishRequest)
    done = await write_bundle(request.app[SETTINGS], request.app[TRAINING].store, request.match_info["id"], req)
    return json_response(done, 201)

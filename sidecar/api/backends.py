"""The backends and the ComfyUIs the daemon rents: `GET /backends` (each with its cost so far),
`POST /backends/rent` (answers at once; the rental's `state` says how it goes) and
`POST /backends/{name}/release`. Parse, call the renter, answer through the response models.
"""

from __future__ import annotations

import itertools
from typing import Literal

from aiohttp import web
from pydantic import ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from sidecar.api.errors import parse_body
from sidecar.api.health import backends_status
from sidecar.api.keys import POOL, RENTER, SETTINGS
from sidecar.api.models import Wire
from sidecar.api.operations import operation
from sidecar.api.responses import BackendStatus, Out, json_response
from sidecar.backends.wire import RentalSummary
from sidecar.backends.renting import Renter
from sidecar.config.backends import BackendSpec
from sidecar.errors import (
    BackendNotFound, InvalidField, InvalidState, RemoteNotConfigured, RemoteUnavailable,
)

routes = web.RouteTableDef()


class RentRequest(Wire):
    """POST /backends/rent: a `[[backends]] kind = "vast"` table by `name`, these fields over it; or, with
    no such table, a new rented backend (named `vast-1`, `vast-2`, ... when no name is given)."""

    # Strict, as POST /jobs and POST /loras/train: "0.5" is not a price, true not a number of hours.
    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    provider: Literal["vast"] = Field("vast", description="where to rent (vast.ai)")
    name: str | None = Field(None, description="a kind = \"vast\" table to rent, or the new backend's name")
    gpu: str | None = Field(None, max_length=64, description="the GPU model, as vast.ai names it (\"RTX 4090\")")
    max_price_per_hour: float | None = Field(None, gt=0, le=100, description="most $/hour an offer may cost")
    max_total_cost: float | None = Field(None, gt=0, le=10_000, description="destroyed when its cost reaches this")
    max_hours: float | None = Field(None, gt=0, le=720, description="destroyed after this many hours")
    idle_minutes: float | None = Field(None, gt=0, le=1440, description="destroyed after this many idle minutes")
    min_gpu_memory_gb: float | None = Field(None, gt=0, le=1024, description="least GPU memory, GB")
    profile: str | None = Field(None, description="its hardware profile [default: cuda-24gb]")
    tags: list[str] | None = Field(None, max_length=16, description="labels `where` can name")


class BackendsList(Out):
    """GET /backends: the backends in the pool, and every rental of this daemon (live and recently ended)."""

    backends: list[BackendStatus]
    rentals: list[RentalSummary]
    cost: float = Field(description="$ the listed rentals cost so far, together")



def _renter(app: web.Application) -> Renter:
    renter = app.get(RENTER)
    if renter is None:
        raise InvalidState("Renting a backend needs the daemon's pool of backends: add a [[backends]] table with "
                           "kind = \"vast\" to the configuration (its limits are the rental's defaults) and restart "
                           "the daemon.", {"fix": "[[backends]] name = \"rented\" kind = \"vast\""})
    return renter


def spec_for(app: web.Application, req: RentRequest) -> BackendSpec:
    settings = app[SETTINGS]
    tables = {s.name: s for s in settings.backends}
    overrides = req.model_dump(exclude_none=True, exclude={"provider", "name"})
    if "tags" in overrides:
        overrides["tags"] = tuple(overrides["tags"])
    base: dict = {"kind": "vast"}
    name = req.name
    if name is not None and name in tables:
        table = tables[name]
        if not table.rented:
            raise InvalidField(f"name: {name!r} is a {table.kind} backend, not one to rent (kind = \"vast\").",
                               {"field": "name", "value": name})
        base = table.model_dump(exclude_unset=True)
    elif name is None:
        taken = {*tables, *_renter(app).active, *(app[POOL].by_name if app.get(POOL) else ())}
        name = next(f"vast-{i}" for i in itertools.count(1) if f"vast-{i}" not in taken)
    try:
        return BackendSpec.model_validate({**base, **overrides, "name": name, "kind": "vast"})
    except ValidationError as exc:
        # The first problem in the request's words (camelCase field, the rule), not pydantic's report.
        first = exc.errors(include_url=False)[0]
        field = to_camel(str(first["loc"][0])) if first["loc"] else "body"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidField(f"{field}: {message}.", {"field": field}) from None


@routes.get("/backends")
@operation("The backends in routing and the ComfyUIs this daemon rents, each with its cost so far",
           {200: BackendsList})
async def list_backends(request: web.Request) -> web.Response:
    app = request.app
    renter = app.get(RENTER)
    rentals = [RentalSummary.model_validate(r) for r in (renter.summaries() if renter is not None else [])]
    return json_response(BackendsList(backends=await backends_status(app), rentals=rentals,
                                      cost=round(sum(r.cost for r in rentals), 6)))


@routes.post("/backends/rent")
@operation("Rent a GPU with ComfyUI on vast.ai; it joins routing once it answers through its SSH tunnel",
           {202: RentalSummary}, request=RentRequest,
           errors=(InvalidField, InvalidState, RemoteNotConfigured, RemoteUnavailable),
           description="Answers at once with the rental (state `searching`); GET /backends shows it go through "
                       "creating and starting to serving (in routing) or failed (with the reason; an instance "
                       "that does not answer within start_timeout is destroyed). It is destroyed when idle for "
                       "idleMinutes, at maxTotalCost or maxHours, on POST /backends/{name}/release, and at a "
                       "graceful daemon stop.")
async def rent(request: web.Request) -> web.Response:
    req = await parse_body(request, RentRequest)
    renter = _renter(request.app)
    record = renter.rent(spec_for(request.app, req))
    return json_response(RentalSummary.model_validate(renter.summary(record)), status=202)


@routes.post("/backends/{name}/release")
@operation("Release a rented backend: out of routing (a job it runs is re-queued once elsewhere), destroyed",
           {200: RentalSummary}, errors=(BackendNotFound, InvalidState))
async def release(request: web.Request) -> web.Response:
    renter = _renter(request.app)
    record = await renter.release(request.match_info["name"], "released on request")
    return json_response(RentalSummary.model_validate(renter.summary(record)))

"""What each route answers, declared on its handler, and read back from the app's route table.

A handler is decorated with `@operation(...)`: its summary, request model, the models it answers
with per status, the errors it can raise (classes from `sidecar.errors`, grouped by their HTTP
status) and its query parameters. `operations(app)` walks the app's router, so the OpenAPI
document lists exactly the routes that are served: no registry to keep in step, nothing mutated at
import time (the metadata is a frozen value on the function, like click's decorators).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from sidecar.errors import (
    HostNotAllowed, InvalidField, InvalidJson, OriginNotAllowed, PayloadTooLarge, SidecarError, Unauthorized,
    UnknownField, UnsupportedMediaType,
)

H = TypeVar("H", bound=Callable[..., Any])
ATTRIBUTE = "__sidecar_operation__"

# What the edge (sidecar/api/edge.py) answers on every operation before its handler runs (401 only when a
# token is set), and what every operation with a JSON body can answer before its handler decides anything.
EDGE_ERRORS: tuple[type[SidecarError], ...] = (Unauthorized, HostNotAllowed, OriginNotAllowed)
BODY_ERRORS: tuple[type[SidecarError], ...] = (
    InvalidJson, UnknownField, InvalidField, PayloadTooLarge, UnsupportedMediaType)


@dataclass(frozen=True)
class Query:
    """One `?name=` parameter: its JSON schema as served (strings parsed by the handler)."""

    name: str
    schema: Mapping[str, Any]
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Header:
    name: str
    schema: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    summary: str
    # status -> the model of the body; None: no JSON body (see `binary`).
    responses: Mapping[int, type[BaseModel] | None]
    request: type[BaseModel] | None = None
    errors: tuple[type[SidecarError], ...] = ()
    query: tuple[Query, ...] = ()
    headers: tuple[Header, ...] = ()
    description: str = ""
    binary: str | tuple[str, ...] | None = None  # the media type(s) of a non-JSON success body (image/png)
    websocket: bool = False
    response_headers: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    def all_errors(self) -> tuple[type[SidecarError], ...]:
        implied: tuple[type[SidecarError], ...] = EDGE_ERRORS
        if self.request is not None:
            implied += BODY_ERRORS
        if self.query or self.headers:
            implied += (InvalidField,)
        return tuple(dict.fromkeys(implied + self.errors))


def operation(summary: str, responses: Mapping[int, type[BaseModel] | None], **kw: Any) -> Callable[[H], H]:
    """Declare what a handler accepts and answers; `operations(app)` reads it back."""
    op = Operation(summary, dict(responses), **kw)

    def mark(handler: H) -> H:
        setattr(handler, ATTRIBUTE, op)
        return handler

    return mark


@dataclass(frozen=True)
class Routed:
    method: str  # lower case, as OpenAPI spells it
    path: str
    operation: Operation | None


def operations(app: web.Application) -> list[Routed]:
    """Every route the app serves (aiohttp's implicit HEAD of a GET left out), with its declaration."""
    found: list[Routed] = []
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        path = route.resource.canonical if route.resource is not None else ""
        found.append(Routed(route.method.lower(), path, getattr(route.handler, ATTRIBUTE, None)))
    return found

"""The HTTP edge of errors: the middleware mapping `SidecarError` to its body and status, request
logging (one line per request), and typed body parsing (JSON -> pydantic, pydantic errors -> our codes).
Handlers raise; only this module builds error responses.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from sidecar.api.keys import SETTINGS
from sidecar.errors import (
    InvalidField, InvalidJson, MethodNotAllowed, NotFound, PayloadTooLarge, SidecarError, UnknownField,
)

log = logging.getLogger("sidecar.http")
M = TypeVar("M", bound=BaseModel)


def error_response(exc: SidecarError) -> web.Response:
    return web.json_response(exc.to_body(), status=exc.http_status)


@web.middleware
async def error_middleware(request: web.Request, handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except SidecarError as exc:
        status = exc.http_status
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        status = 413
        limit = request.app[SETTINGS].max_body_bytes
        return error_response(PayloadTooLarge(
            f"The request body is larger than the {limit} bytes this daemon accepts.", {"limit": limit}
        ))
    except web.HTTPNotFound:
        status = 404
        return error_response(NotFound(f"No route for {request.method} {request.path}."))
    except web.HTTPMethodNotAllowed as exc:
        status = 405
        allowed = sorted(exc.allowed_methods)
        response = error_response(MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}; it answers {', '.join(allowed)}.",
            {"allowed": allowed}))
        response.headers["Allow"] = ", ".join(allowed)  # RFC 9110: a 405 must say what is allowed
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(SidecarError("Internal error; see the daemon log.").to_body(), status=500)
    finally:
        if request.path != "/events":
            log.info("%s %s %d %.1fms", request.method, request.path_qs, status,
                     (time.perf_counter() - started) * 1000)


# No body of ours nests deeper than a workflow's node -> inputs -> link (5 levels); past this a body
# is refused before any recursive code (pydantic, json.dumps on the way to SQLite) walks it.
MAX_JSON_DEPTH = 32


def json_depth(value: Any) -> int:
    """How deeply `value` nests lists and objects, walked without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


async def read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJson(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:  # the parser itself recurses: ~1,000 levels of [[[...
        raise InvalidJson(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.",
                          {"field": "body", "limit": MAX_JSON_DEPTH}) from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise InvalidJson(f"The request body nests deeper than {MAX_JSON_DEPTH} levels.",
                          {"field": "body", "limit": MAX_JSON_DEPTH})
    return data


def parse_model(model: type[M], data: Any) -> M:
    """Validate a body; the first problem becomes unknown_field or invalid_field with the field named."""
    if not isinstance(data, dict):
        raise InvalidJson("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        unknown = [".".join(str(p) for p in e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
        if unknown:
            raise UnknownField(
                f"Unknown field(s): {', '.join(unknown)}.", {"fields": unknown}
            ) from None
        first = errors[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidField(
            f"{field}: {first['msg']}.",
            {"field": field, "errors": [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                                        for e in errors]},
        ) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    return parse_model(model, await read_json(request))


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer `?name=` in low..high, or a 400 naming it."""
    try:
        value = int(request.query.get(name, str(default)))
    except ValueError:
        raise InvalidField(f"{name} must be an integer.", {"field": name}) from None
    if not low <= value <= high:
        raise InvalidField(f"{name} must be between {low} and {high}.", {"field": name, "value": value})
    return value


def query_limit(request: web.Request, default: int = 50, most: int = 500) -> int:
    """The `?limit=` of a listing, 1..most."""
    return query_int(request, "limit", default, low=1, high=most)

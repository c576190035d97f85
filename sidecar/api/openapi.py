"""GET /openapi.json: the OpenAPI document, built from the app's own route table.

Each route's `@operation` declaration (see `operations.py`) names the pydantic models it parses and
answers with; the schemas come from those same models (`models_json_schema`), and the handlers
serialize through them, so the document and the bodies cannot drift apart. Error answers list the
stable codes each status can carry, as an enum on the error body.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from sidecar import __version__
from sidecar.api.operations import Operation, operation, operations
from sidecar.api.responses import ErrorBody, OpenApiDocument, json_response

routes = web.RouteTableDef()
REF = "#/components/schemas/{model}"


@routes.get("/openapi.json")
@operation("This document: every operation, what it accepts and answers", {200: OpenApiDocument})
async def openapi(request: web.Request) -> web.Response:
    return json_response(OpenApiDocument.model_validate(build_openapi(request.app)))


def build_openapi(app: web.Application) -> dict[str, Any]:
    routed = [r for r in operations(app) if r.operation is not None]
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for r in routed:
        op = r.operation
        assert op is not None
        if op.request is not None:
            wanted[(op.request, "validation")] = None
        for model in op.responses.values():
            if model is not None:
                wanted[(model, "serialization")] = None
    ordered = sorted(wanted, key=lambda k: (k[0].__name__, k[1]))
    refs, top = models_json_schema(ordered, by_alias=True, ref_template=REF)
    paths: dict[str, Any] = {}
    for r in sorted(routed, key=lambda r: (r.path, r.method)):
        assert r.operation is not None
        paths.setdefault(r.path, {})[r.method] = _operation(r.method, r.path, r.operation, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": "plasma-sidecar", "version": __version__,
                 "description": "Local generation and LoRA training daemon. Every error is "
                                "{\"error\": {\"code\", \"message\", \"details\"}} with a stable code."},
        "paths": paths,
        "components": {"schemas": top.get("$defs", {}), "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Only when the daemon has a `token` setting (required with allow_remote)."}}},
        "security": [{}, {"bearer": []}],
    }


def _operation(method: str, path: str, op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(method, path), "responses": {}}
    if op.description:
        entry["description"] = op.description
    params = [{"name": p.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
              for p in path.split("/") if p.startswith("{")]
    params += [{"name": q.name, "in": "query", "required": q.required, "schema": dict(q.schema),
                **({"description": q.description} if q.description else {})} for q in op.query]
    params += [{"name": h.name, "in": "header", "required": False, "schema": dict(h.schema),
                **({"description": h.description} if h.description else {})} for h in op.headers]
    if params:
        entry["parameters"] = params
    if op.request is not None:
        entry["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": refs[(op.request, "validation")]}}}
    for status, model in sorted(op.responses.items()):
        answer: dict[str, Any] = {"description": _REASONS.get(status, "OK")}
        if model is not None:
            answer["content"] = {"application/json": {"schema": refs[(model, "serialization")]}}
        elif op.binary and status < 300:
            types = (op.binary,) if isinstance(op.binary, str) else op.binary
            answer["content"] = {t: {"schema": {"type": "string", "format": "binary"}} for t in types}
        if status in op.response_headers:
            answer["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                 for name, text in op.response_headers[status].items()}
        entry["responses"][str(status)] = answer
    by_status: dict[int, list[str]] = defaultdict(list)
    for err in op.all_errors():
        if err.code not in by_status[err.http_status]:
            by_status[err.http_status].append(err.code)
    error_ref = refs[(ErrorBody, "serialization")]
    for status, codes in sorted(by_status.items()):
        entry["responses"][str(status)] = {
            "description": f"error codes: {', '.join(codes)}",
            "content": {"application/json": {"schema": {"allOf": [error_ref, {
                "type": "object",
                "properties": {"error": {"type": "object", "properties": {"code": {"enum": codes}}}},
            }]}}},
        }
    return entry


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.strip("/").replace(".", "_").split("/") if w]
    return "_".join([method, *words])


_REASONS = {200: "OK", 201: "Created", 202: "Accepted: the work continues in the background",
            304: "Not Modified: the If-None-Match ETag is current (no body)",
            101: "Switching Protocols (WebSocket)"}

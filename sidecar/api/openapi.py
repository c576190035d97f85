"""The OpenAPI document, generated from the same pydantic models that parse and shape the bodies.

Route modules describe their operations in `OPERATIONS` entries (path, method, summary, request
model, response model, error codes); the schemas come from `pydantic.json_schema.models_json_schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sidecar import __version__
from sidecar.api import models as m


@dataclass
class Operation:
    method: str
    path: str
    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: dict[int, str] = field(default_factory=dict)
    websocket: bool = False


OPERATIONS: list[Operation] = [
    Operation("get", "/health", "Daemon, backend and device status", response=m.Health),
    Operation("post", "/jobs", "Submit a generation job", request=m.JobRequest, response=m.Job, status=202,
              errors={400: "invalid_json, unknown_field, invalid_field, resolution_exceeds_profile, "
                           "batch_size_not_supported, lora_not_found, checkpoint_not_found, pose_image_invalid, "
                           "node_not_supported, sampler_not_supported",
                      409: "training_in_progress", 413: "payload_too_large", 429: "queue_full",
                      503: "comfyui_unavailable", 507: "disk_full"}),
    Operation("get", "/jobs", "Recent jobs, newest first (?status=, ?limit=)", response=m.JobList),
    Operation("get", "/jobs/{id}", "One job", response=m.Job, errors={404: "job_not_found"}),
    Operation("get", "/jobs/{id}/image", "The job's PNG", errors={404: "job_not_found", 409: "job_not_finished"}),
    Operation("post", "/jobs/{id}/cancel", "Cancel a queued or running job", response=m.Job,
              errors={404: "job_not_found", 409: "invalid_state"}),
    Operation("get", "/loras", "Installed LoRAs with their safetensors metadata", response=m.LoraList),
    Operation("get", "/events", "WebSocket of job and training events (JSON text frames)", response=m.Event,
              websocket=True),
]


def register(*ops: Operation) -> None:
    """Other route modules (training) add their operations here at import time."""
    known = {(o.method, o.path) for o in OPERATIONS}
    OPERATIONS.extend(o for o in ops if (o.method, o.path) not in known)


def build_openapi() -> dict[str, Any]:
    models = {o.request for o in OPERATIONS if o.request} | {o.response for o in OPERATIONS if o.response}
    models.add(m.ErrorBody)
    ordered = sorted(models, key=lambda c: c.__name__)
    _, top = models_json_schema(
        [(c, "validation") for c in ordered], by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas = top.get("$defs", {})
    paths: dict[str, Any] = {}
    for op in OPERATIONS:
        entry: dict[str, Any] = {"summary": op.summary, "responses": {}}
        if op.websocket:
            entry["description"] = "Upgrade to a WebSocket; each text frame is one Event."
        if op.request:
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{op.request.__name__}"}}}}
        ok: dict[str, Any] = {"description": "OK"}
        if op.response:
            ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{op.response.__name__}"}}}
        elif op.path.endswith("/image"):
            ok["content"] = {"image/png": {"schema": {"type": "string", "format": "binary"}}}
        entry["responses"][str(op.status)] = ok
        for status, codes in {**edge_errors(op), **op.errors}.items():
            entry["responses"][str(status)] = {
                "description": f"error codes: {codes}",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            }
        params = [p.strip("{}") for p in op.path.split("/") if p.startswith("{")]
        if params:
            entry["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                   for p in params]
        paths.setdefault(op.path, {})[op.method] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "plasma-sidecar", "version": __version__,
                 "description": "Local generation and LoRA training daemon. Errors are "
                                "{\"error\": {\"code\", \"message\", \"details\"}}."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "Only when the daemon has a `token` setting (required with allow_remote)."}}},
        "security": [{}, {"bearer": []}],
    }


def edge_errors(op: Operation) -> dict[int, str]:
    """What the edge (sidecar/api/edge.py) answers on every operation before its handler runs."""
    errors = {401: "unauthorized (a token is set and the request lacks it)",
              403: "host_not_allowed, origin_not_allowed"}
    if op.request:
        errors[415] = "unsupported_media_type (a body that is not application/json)"
    return errors

"""reference/http-api.md: every operation of the daemon's HTTP API, from the OpenAPI document the app
builds from its own route table (what `GET /openapi.json` answers), with the models it names."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from manual.markdown import GENERATED, cell, code, table

PATH = "reference/http-api.md"


def openapi_document() -> dict[str, Any]:
    """The document `GET /openapi.json` serves, built from an app that is made but never started (no
    port, no database, no engine loaded)."""
    from sidecar.api.app import create_app
    from sidecar.api.openapi import build_openapi
    from sidecar.api.responses import OpenApiDocument
    from sidecar.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp) / "data", engine="embedded"))
        served = OpenApiDocument.model_validate(build_openapi(app))  # as the route answers it
    return served.model_dump(mode="json", by_alias=True, exclude_none=True)


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def schema_type(schema: dict[str, Any]) -> str:
    """A short reader's type for a JSON schema: a model name links to its section below."""
    name = _ref_name(schema)
    if name:
        return f"[{name}](#{name.lower()})"
    if "enum" in schema:
        return " \\| ".join(code(v) for v in schema["enum"])
    if "const" in schema:
        return code(schema["const"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            kinds = [schema_type(s) for s in schema[key] if s.get("type") != "null"]
            nullable = any(s.get("type") == "null" for s in schema[key])
            return " or ".join([*dict.fromkeys(kinds), *(["null"] if nullable else [])])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {schema_type(schema.get('items', {}))}" + _limits(schema, "minItems", "maxItems")
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {schema_type(schema['additionalProperties'])}"
    if kind == "string":
        bounds = _limits(schema, "minLength", "maxLength")
        return "string" + (f", length{bounds[1:]}" if bounds else "")
    return str(kind) + _limits(schema, "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _limits(schema: dict[str, Any], low: str, high: str, low_open: str = "", high_open: str = "") -> str:
    """The bounds a value is held to, as `1..150` (an open end as `>0`, `<1`)."""
    lo = schema.get(low, schema.get(low_open) if low_open else None)
    hi = schema.get(high, schema.get(high_open) if high_open else None)
    if lo is None and hi is None:
        return ""
    if low_open and low_open in schema and lo is not None and hi is None:
        return f", >{lo}"
    if lo is not None and hi is not None:
        return f", {lo}..{hi}"
    return f", >= {lo}" if lo is not None else f", <= {hi}"


def _codes(answer: dict[str, Any]) -> list[str]:
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    for part in schema.get("allOf", []):
        enum = part.get("properties", {}).get("error", {}).get("properties", {}).get("code", {}).get("enum")
        if enum:
            return list(enum)
    return []


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    parts = [f"### `{method.upper()} {path}`\n", cell(op.get("summary", "")) + "\n"]
    if op.get("description"):
        parts.append(cell(op["description"]) + "\n")
    params = op.get("parameters", [])
    if params:
        parts.append(table(["parameter", "in", "type", "description"], [
            [code(p["name"]), p["in"], schema_type(p.get("schema", {})), cell(p.get("description", ""))]
            for p in params]))
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        parts.append(f"Body: {schema_type(body)}\n")
    rows = []
    for status, answer in op.get("responses", {}).items():
        content = answer.get("content", {})
        media = ", ".join(code(m) for m in content)
        schema = content.get("application/json", {}).get("schema", {})
        codes = _codes(answer)
        what = ("error " + ", ".join(code(c) for c in codes)) if codes else (
            schema_type(schema) if schema else cell(answer.get("description", "")))
        rows.append([code(status), what, media])
    parts.append(table(["status", "answer", "content type"], rows))
    return "\n".join(parts)


def _model(name: str, schema: dict[str, Any]) -> str:
    parts = [f"### {name}\n"]
    if schema.get("description"):
        parts.append(cell(schema["description"]) + "\n")
    required = set(schema.get("required", []))
    props = schema.get("properties", {})
    if props:
        parts.append(table(["field", "type", "required", "description"], [
            [code(field), schema_type(s), "yes" if field in required else "", cell(s.get("description", ""))]
            for field, s in props.items()]))
    elif "enum" in schema:
        parts.append("One of " + ", ".join(code(v) for v in schema["enum"]) + ".\n")
    return "\n".join(parts)


def render() -> str:
    doc = openapi_document()
    parts = ["# HTTP API reference\n", GENERATED.format(source="the OpenAPI document the daemon serves "
                                                        "at `GET /openapi.json`"),
             cell(doc["info"].get("description", "")) + " How to use it, with examples: "
             "[The HTTP API](../http-api.md); what each code means: [Error codes](errors.md).\n",
             "## Operations\n"]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            parts.append(_operation(method, path, op))
    parts.append("## Models\n")
    for name, schema in sorted(doc.get("components", {}).get("schemas", {}).items()):
        parts.append(_model(name, schema))
    return "\n".join(parts)

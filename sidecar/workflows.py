"""Workflow templates: loading, the slot manifest, validation, slot filling and hot reload.

Templates are static API-format JSON files exported from ComfyUI ("Save (API format)"), never
assembled in code. Filling touches exactly the slots the manifest declares. A broken edit on disk
is reported and the last good template set stays in use.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sidecar.errors import WorkflowInvalid
from sidecar.graph import Graph

log = logging.getLogger("sidecar.workflows")

MANIFEST = "manifest.json"


class SlotTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str
    input: str


class TemplateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str
    description: str = ""
    precision: dict[str, str] = Field(default_factory=dict)
    output_node: str
    slots: dict[str, list[SlotTarget]]


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    templates: dict[str, TemplateSpec]
    # Old template name -> its current name: a renamed template still answers to the name that logged
    # workflows and generation logs recorded.
    aliases: dict[str, str] = Field(default_factory=dict)


@dataclass(frozen=True)
class Template:
    name: str
    spec: TemplateSpec
    graph: dict[str, Any]

    def has_slot(self, slot: str) -> bool:
        return slot in self.spec.slots

    def fill(self, values: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of the graph with exactly the given slots set. Unknown slots are a bug."""
        graph = copy.deepcopy(self.graph)
        for slot, value in values.items():
            targets = self.spec.slots.get(slot)
            if targets is None:
                raise KeyError(f"template {self.name} has no slot {slot!r}")
            for t in targets:
                graph[t.node]["inputs"][t.input] = value
        return graph


def validate_graph(raw: Any, known_types: set[str] | None = None) -> Graph:
    """A template's structure (`Graph.parse`), and node types the backend knows when it says which."""
    graph = Graph.parse(raw)
    if known_types is not None:
        for node in graph:
            if node.class_type not in known_types:
                raise WorkflowInvalid(
                    f"Node {node.id!r} has class_type {node.class_type!r}, unknown to the backend.",
                    {"node": node.id, "classType": node.class_type},
                )
    return graph


def read_manifest(directory: Path) -> Manifest:
    manifest_path = directory / MANIFEST
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except FileNotFoundError:
        raise WorkflowInvalid(f"No template manifest at {manifest_path}.") from None
    except ValueError as exc:
        raise WorkflowInvalid(f"{manifest_path} is invalid: {exc}") from None
    for old, new in manifest.aliases.items():
        if new not in manifest.templates or old in manifest.templates:
            raise WorkflowInvalid(f"{manifest_path}: alias {old!r} must name a template ({new!r} is not one) and "
                                  "must not be a template name itself.", {"alias": old})
    return manifest


def load_templates(directory: Path, known_types: set[str] | None = None) -> dict[str, Template]:
    """Load and validate every template the manifest names. Raises WorkflowInvalid on any problem."""
    return load_template_set(directory, known_types)[0]


def load_template_set(directory: Path,
                      known_types: set[str] | None = None) -> tuple[dict[str, Template], dict[str, str]]:
    """The templates and the manifest's aliases."""
    manifest = read_manifest(directory)
    templates: dict[str, Template] = {}
    for name, spec in manifest.templates.items():
        path = directory / spec.file
        try:
            graph = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WorkflowInvalid(f"Template {path} cannot be read as JSON: {exc}", {"template": name}) from None
        try:
            validate_graph(graph, known_types)
        except WorkflowInvalid as exc:
            raise WorkflowInvalid(f"Template {path}: {exc.message}", {"template": name, **exc.details}) from None
        if spec.output_node not in graph:
            raise WorkflowInvalid(f"Template {path}: output node {spec.output_node!r} is missing.")
        for slot, targets in spec.slots.items():
            for t in targets:
                node = graph.get(t.node)
                if node is None or t.input not in node.get("inputs", {}):
                    raise WorkflowInvalid(
                        f"Template {path}: slot {slot!r} targets {t.node}.{t.input}, which does not exist.",
                        {"template": name, "slot": slot},
                    )
        templates[name] = Template(name=name, spec=spec, graph=graph)
    return templates, dict(manifest.aliases)


class TemplateStore:
    """The current good template set, reloaded when files change (watchfiles)."""

    def __init__(self, directory: Path, known_types: Callable[[], Awaitable[set[str] | None]] | None = None):
        self.directory = directory
        self._known_types = known_types
        self.templates: dict[str, Template] = {}
        self.aliases: dict[str, str] = {}
        self.last_error: str | None = None
        self.generation = 0  # bumps on each successful (re)load

    async def load(self) -> None:
        known = await self._known_types() if self._known_types else None
        self.templates, self.aliases = await asyncio.to_thread(load_template_set, self.directory, known)
        self.last_error = None
        self.generation += 1

    async def reload(self) -> bool:
        """Try a reload; on failure keep the last good set and remember the error."""
        try:
            await self.load()
        except WorkflowInvalid as exc:
            self.last_error = exc.message
            log.error("template reload failed, keeping the last good templates: %s", exc.message)
            return False
        log.info("templates reloaded: %s", ", ".join(sorted(self.templates)))
        return True

    def get(self, name: str) -> Template:
        """The template of that name, or of the name it had (an alias: `img2img-lora-controlnet`)."""
        try:
            return self.templates[self.aliases.get(name, name)]
        except KeyError:
            raise WorkflowInvalid(f"No template named {name!r} is loaded.") from None

    async def watch(self, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        async for _changes in awatch(self.directory, stop_event=stop, debounce=200, step=50):
            await self.reload()

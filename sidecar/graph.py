"""The API-format workflow graph: what ComfyUI's "Save (API format)" writes and `/prompt` takes.

`{node_id: {"class_type": str, "inputs": {name: literal | [source_id, output_slot]}}}` is the
project's central data structure: templates are such graphs, a job stores one, both backends run one.
This module owns reading it: nodes by type, links and where they come from, an order to evaluate it
in. It knows nothing of what a node type means (that is `sidecar.nodes`) nor of limits (the jobs
layer). Traversals are iterative, so a long chain of nodes cannot exhaust Python's recursion limit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidecar.errors import PayloadTooLarge, WorkflowInvalid

# Our templates have a dozen nodes and real ComfyUI workflows a few hundred; past this a submitted
# graph is refused before anything walks it (the body itself is bounded by `max_body_bytes`).
MAX_NODES = 2000

Link = tuple[str, int]


def is_link(value: Any) -> bool:
    """`[source_node_id, output_slot]`, as ComfyUI writes an input fed by another node's output."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def input_field(node_id: str, name: str) -> str:
    """How an error names a workflow input: the path of the value in the request body."""
    return f"workflow.{node_id}.inputs.{name}"


@dataclass(frozen=True)
class Node:
    """A view of one node; `inputs` is the graph's own dict (copy the graph before changing it)."""

    id: str
    class_type: str
    inputs: dict[str, Any]

    def link(self, name: str) -> Link | None:
        value = self.inputs.get(name)
        return (value[0], value[1]) if is_link(value) else None

    def links(self) -> Iterator[tuple[str, Link]]:
        for name, value in self.inputs.items():
            if is_link(value):
                yield name, (value[0], value[1])


class Graph:
    """A workflow graph. `Graph(raw)` trusts `raw` (a template or a stored job's workflow, checked when
    it came in); `Graph.parse(raw)` checks the structure of something a client sent."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw

    @classmethod
    def parse(cls, raw: Any, max_nodes: int = MAX_NODES) -> Graph:
        if not isinstance(raw, dict) or not raw:
            raise WorkflowInvalid("A workflow must be a non-empty JSON object of nodes (API format).")
        if len(raw) > max_nodes:
            raise PayloadTooLarge(
                f"The workflow has {len(raw)} nodes; this daemon accepts at most {max_nodes}.",
                {"field": "workflow", "nodes": len(raw), "limit": max_nodes})
        for node_id, node in raw.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                raise WorkflowInvalid(f"Node {node_id} has no class_type.",
                                      {"node": node_id, "field": f"workflow.{node_id}.class_type"})
            inputs = node.get("inputs")
            if not isinstance(inputs, dict):
                raise WorkflowInvalid(f"Node {node_id} has no inputs object.",
                                      {"node": node_id, "field": f"workflow.{node_id}.inputs"})
            for name, value in inputs.items():
                if is_link(value) and value[0] not in raw:
                    raise WorkflowInvalid(
                        f"Node {node_id} input {name!r} links to missing node {value[0]!r}.",
                        {"node": node_id, "input": name, "field": input_field(node_id, name), "link": value})
        graph = cls(raw)
        graph.order()  # refuses a cycle
        return graph

    # -- reading
    def __len__(self) -> int:
        return len(self.raw)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.raw

    def __iter__(self) -> Iterator[Node]:
        for node_id, node in self.raw.items():
            if isinstance(node, dict):
                yield Node(node_id, str(node.get("class_type")), node.get("inputs") or {})

    def __getitem__(self, node_id: str) -> Node:
        node = self.raw[node_id]
        return Node(node_id, node["class_type"], node["inputs"])

    def get(self, node_id: str) -> Node | None:
        return self[node_id] if isinstance(self.raw.get(node_id), dict) else None

    def of_type(self, *class_types: str) -> list[Node]:
        return [node for node in self if node.class_type in class_types]

    def ids_of_type(self, *class_types: str) -> list[str]:
        return [node.id for node in self.of_type(*class_types)]

    def class_types(self) -> set[str]:
        return {node.class_type for node in self}

    def source(self, node: Node, name: str) -> Node | None:
        """The node whose output feeds `node`'s input `name`, if that input is a link."""
        link = node.link(name)
        return self.get(link[0]) if link else None

    def order(self, roots: list[str] | None = None) -> list[str]:
        """Node ids so that every node comes after the nodes it links to (of `roots` and what they
        need, or of the whole graph). Iterative depth-first search; a cycle is `workflow_invalid`."""
        done: set[str] = set()
        active: set[str] = set()
        order: list[str] = []
        for root in roots if roots is not None else list(self.raw):
            if root in done:
                continue
            stack: list[tuple[str, Iterator[tuple[str, Link]]]] = [(root, self[root].links())]
            active.add(root)
            while stack:
                node_id, pending = stack[-1]
                step = next(pending, None)
                if step is None:
                    stack.pop()
                    active.discard(node_id)
                    done.add(node_id)
                    order.append(node_id)
                    continue
                name, (source, _slot) = step
                if source in done:
                    continue
                if source in active:
                    raise WorkflowInvalid(f"The workflow has a cycle through node {source}.",
                                          {"node": node_id, "input": name, "field": input_field(node_id, name)})
                if source not in self.raw:
                    raise WorkflowInvalid(f"Node {node_id} input {name!r} links to missing node {source!r}.",
                                          {"node": node_id, "input": name, "field": input_field(node_id, name)})
                active.add(source)
                stack.append((source, self[source].links()))
        return order

    # -- changing (always on a copy: templates and stored workflows are shared)
    def with_inputs(self, changes: dict[str, dict[str, Any]]) -> Graph:
        """A copy with `{node_id: {input: value}}` set; the other nodes are shared, not copied."""
        raw = dict(self.raw)
        for node_id, values in changes.items():
            raw[node_id] = {**raw[node_id], "inputs": {**raw[node_id]["inputs"], **values}}
        return Graph(raw)

    def copy(self) -> Graph:
        return Graph(copy.deepcopy(self.raw))

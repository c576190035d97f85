"""What a job needs of a backend, and whether one backend admits it (and if not, why, in one sentence).

`Needs` is read off the job's filled workflow (the graph that runs, the same for template and whole
jobs): image sizes and batch against the backend's hardware profile, the ControlNet count, each model
file against the backend's model listings, each node type against its `/object_info`. A model the
backend lacks does not refuse it when the file can be copied there (the backend has an SSH target and
the daemon has the file locally): the job then carries that copy as part of its run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidecar.graph import Graph
from sidecar.nodes import LATENT_NODES, NODE_TYPES, Value
from sidecar.profiles import Profile

FOLDER_WORDS = {"checkpoints": "checkpoint", "loras": "LoRA", "controlnet": "ControlNet",
                "diffusion_models": "diffusion model"}


@dataclass(frozen=True)
class Needs:
    """What running a workflow asks of a backend."""

    sizes: tuple[tuple[int, int, int], ...] = ()  # (width, height, batch) of each latent
    controlnets: int = 0
    models: tuple[tuple[str, str], ...] = ()  # (folder, file name)
    node_types: frozenset[str] = frozenset()
    steps: int = 20
    checkpoint: str | None = None
    family: str | None = None  # the checkpoint's family (job params); None: unknown, held to the base family

    @classmethod
    def of(cls, workflow: dict[str, Any], family: str | None = None) -> Needs:
        graph = Graph(workflow)
        sizes, models, steps, checkpoint = [], [], 0, None
        for node in graph:
            spec = NODE_TYPES.get(node.class_type)
            if node.class_type in LATENT_NODES:
                i = node.inputs
                if all(isinstance(i.get(k), int) for k in ("width", "height")):
                    sizes.append((i["width"], i["height"], int(i.get("batch_size", 1) or 1)))
            if node.class_type in ("KSampler", "KSamplerAdvanced") and isinstance(node.inputs.get("steps"), int):
                steps += node.inputs["steps"]
            if spec is None:
                continue
            for name, want in spec.inputs.items():
                value = node.inputs.get(name)
                if isinstance(want, Value) and want.folder and isinstance(value, str):
                    models.append((want.folder, value))
                    if want.folder == "checkpoints":
                        checkpoint = checkpoint or value
        return cls(sizes=tuple(sizes), controlnets=len(graph.ids_of_type("ControlNetLoader")),
                   models=tuple(dict.fromkeys(models)), node_types=frozenset(graph.class_types()),
                   steps=steps or 20, checkpoint=checkpoint, family=family)


@dataclass(frozen=True)
class Capabilities:
    """What a backend was last seen to have (a health probe); None where it could not say."""

    models: dict[str, frozenset[str]] = field(default_factory=dict)  # folder -> file names
    node_types: frozenset[str] | None = None


@dataclass(frozen=True)
class Verdict:
    """One backend's answer for one job: admitted (with the files to copy there first) or why not."""

    backend: str
    reason: str | None = None  # None: admitted
    copies: tuple[tuple[str, str], ...] = ()  # (folder, name) to copy over SSH before running

    @property
    def admitted(self) -> bool:
        return self.reason is None


def judge(name: str, profile: Profile, caps: Capabilities | None, needs: Needs, *, can_copy: bool,
          local_models: dict[str, frozenset[str]], ssh_hint: str) -> Verdict:
    """Admit or refuse; the first reason found, in the order a user would fix them (family, size, nodes,
    models)."""
    if needs.family is not None and not profile.allows(needs.family):
        return Verdict(name, f"its {profile.name} profile does not run {needs.family} models (it runs "
                             f"{', '.join(profile.family_names)})")
    profile = profile.for_family(needs.family)
    for width, height, batch in needs.sizes:
        if not profile.fits(width, height):
            return Verdict(name, f"{width}x{height} exceeds its {profile.name} profile limit of "
                                 f"{profile.size_limit_text()}" + (f" for {needs.family}" if needs.family else ""))
        if batch > profile.max_batch:
            return Verdict(name, f"batch {batch} exceeds its {profile.name} profile limit of {profile.max_batch}")
    if needs.controlnets > profile.max_controlnets:
        return Verdict(name, f"{needs.controlnets} ControlNets exceed its {profile.name} profile limit of "
                             f"{profile.max_controlnets}")
    if caps is None:
        return Verdict(name, "it has not answered a health probe yet, so its models and nodes are unknown")
    if caps.node_types is not None:
        missing_nodes = sorted(needs.node_types - caps.node_types)
        if missing_nodes:
            return Verdict(name, f"it has no node type {', '.join(missing_nodes)}")
    copies: list[tuple[str, str]] = []
    for folder, model in needs.models:
        have = caps.models.get(folder)
        if have is None or model in have:
            continue  # a listing it could not give is not a refusal: ComfyUI's own validation decides
        what = f"{FOLDER_WORDS.get(folder, folder)} {model}"
        if not can_copy:
            return Verdict(name, f"it lacks the {what} and has no ssh target to copy it there{ssh_hint}")
        if model not in local_models.get(folder, frozenset()):
            return Verdict(name, f"it lacks the {what}, and this machine has no such file to copy there")
        copies.append((folder, model))
    return Verdict(name, None, tuple(copies))

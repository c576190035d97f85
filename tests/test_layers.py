"""Imports run downward: each module of `sidecar` and `pipeline_stage` is in a layer, and no import,
lazy or at the top, reaches a layer above its own; and no modules import each other in a circle (within
a layer too, and among the `bench/` scripts). Read from the source (an ast walk), so nothing is
imported and a new module is checked the moment it exists.

A module belongs to the layer of the longest prefix listed for it; a module no prefix names fails
the test, so every new package is placed deliberately (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sidecar", "pipeline_stage")
# Checked for circles only: the benchmarks import the daemon's modules and each other, and are in no layer.
SCRIPTS = ("bench",)

# Top to bottom. Within a layer, modules may import each other.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("sidecar.__main__", "pipeline_stage.__main__", "sidecar.cli")),
    ("commands", ("pipeline_stage", "sidecar.loras", "sidecar.dataprep.cli", "sidecar.dataprep.propose_cli",
                  "sidecar.dataprep.progress", "sidecar.dataprep.reg", "sidecar.doctor.cli", "sidecar.doctor.bench",
                  "sidecar.gc", "sidecar.launchd.cli", "sidecar.demo", "sidecar.engine.cli", "sidecar.studio.cli",
                  "sidecar.grids", "sidecar.assist.cli", "sidecar.likeness.cli", "sidecar.storage.cli",
                  "sidecar.storage.progress", "sidecar.backends.cli", "sidecar.concepts.cli")),
    ("what the commands share", ("sidecar.cli_support", "sidecar.client")),
    ("the HTTP API", ("sidecar.api", "sidecar.studio")),
    # Libraries the commands and the daemon (the studio's routes) both run: no click, no daemon client.
    ("the doctor's checks, the dataset tools, the pipeline project's prompts", (
        "sidecar.doctor", "sidecar.dataprep", "sidecar.launchd", "pipeline_stage.prompts", "pipeline_stage.entry",
        "sidecar.likeness", "sidecar.concepts")),  # concepts: the routes and `sidecar concepts`; the likeness judge: the daemon's routes and the commands both score
    # The wire: what POST /jobs takes and the API answers, shared by the daemon and its clients.
    ("request and response models", ("sidecar.api.models", "sidecar.api.responses")),
    ("jobs and training", ("sidecar.jobs", "sidecar.training")),
    # The page library: the job runner writes a page job's version with it (sidecar.jobs.pages), the way
    # `generate` always wrote one, so it sits below the runner and knows nothing of jobs or the API.
    ("the pipeline project's files: layout, versions, the generation log", (
        "pipeline_stage.layout", "pipeline_stage.errors", "pipeline_stage.genlog", "pipeline_stage.image",
        "pipeline_stage.outputs")),
    ("several backends: pool, routing, lanes", ("sidecar.backends",)),
    ("device, events, backends, workflows", (
        "sidecar.device", "sidecar.events", "sidecar.backend", "sidecar.comfyui", "sidecar.engine",
        "sidecar.workflows", "sidecar.lora_stack", "sidecar.nodes", "sidecar.graph", "sidecar.upscaling", "sidecar.userfiles", "sidecar.inputs", "sidecar.previews", "sidecar.thumbnails", "sidecar.memory",
        "sidecar.datadir_lock", "sidecar.datadir_check", "sidecar.listen", "sidecar.logpipe",
        "sidecar.remote", "sidecar.assist",
        "sidecar.storage")),  # the machines remote LoRA training runs on (the run itself is sidecar.training)
    ("leaves everyone shares", (
        "sidecar", "sidecar.config", "sidecar.profiles", "sidecar.families", "sidecar.errors", "sidecar.statuses", "sidecar.eta",
        "sidecar.atomic", "sidecar.hosts", "sidecar.sqlite_store", "sidecar.durations", "sidecar.assets",
        "sidecar.answer_limits", "sidecar.whole_numbers", "sidecar.family_sizes",
        "sidecar.contact_sheet",  # the grid, the sweep and the Explorer's compare draw their sheets with it
        "sidecar.dataprep.kohya_layout", "sidecar.assist.provenance",
        "sidecar.likeness.wire")),
]

COMMANDS_SHARE = next(i for i, (name, _) in enumerate(LAYERS) if name == "what the commands share")

# Siblings of one layer that must not know each other.
INDEPENDENT = [("sidecar.jobs", "sidecar.training"), ("sidecar.comfyui", "sidecar.engine")]

# The `sidecar loras` client tools reach the daemon over HTTP only: none of its insides.
CLIENT_ONLY = {"sidecar.loras": ("sidecar.training", "sidecar.jobs", "sidecar.api", "sidecar.device",
                                 "sidecar.engine", "sidecar.comfyui")}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _names(module: str, prefix: str) -> bool:
    """A layer's prefix names a module and its submodules; `sidecar` itself names only the package's
    `__init__` (else it would place every module of the daemon)."""
    return module == prefix if prefix == "sidecar" else _within(module, prefix)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _names(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every project module `path` imports, anywhere in it (function-level imports included)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from sidecar import atomic` imports the module sidecar.atomic, not just the package.
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if (ROOT / Path(*base.split("."), f"{alias.name}.py")).is_file()
                         or (ROOT / Path(*base.split("."), alias.name, "__init__.py")).is_file())
    return {name for name in found if name.split(".")[0] in PACKAGES + SCRIPTS}


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of everything `path` imports (project and third-party alike)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def script_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in SCRIPTS for p in sorted((ROOT / folder).rglob("*.py"))}


MODULES = project_modules()
EDGES = {module: imports_of(path, module) for module, path in MODULES.items()}
EVERY_EDGE = EDGES | {module: imports_of(path, module) for module, path in script_modules().items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other round a circle (the strongly connected components of
    more than one module, Tarjan's algorithm), each sorted, with one module's self-import as its own."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(start: str) -> None:
        # Iterative, so a long import chain cannot reach Python's recursion limit.
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in edges:
                    continue  # not a module of ours (a package's name, a third-party import)
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return sorted(found)


def test_every_module_has_a_layer() -> None:
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = []
    for module, targets in EDGES.items():
        for target in targets:
            here, there = layer_of(module), layer_of(target)
            if here is not None and there is not None and there < here:
                upward.append(f"{module} ({LAYERS[here][0]}) imports {target} ({LAYERS[there][0]})")
    assert upward == []


def test_only_commands_speak_click() -> None:
    # Below the commands, code is run by the daemon too: a click prompt or echo there would block or
    # vanish inside a request. (click.testing aside, nothing but the tools should need it.)
    talking = sorted(m for m, path in MODULES.items() if layer_of(m) is not None and layer_of(m) > COMMANDS_SHARE
                     and "click" in third_party_imports(path))
    assert talking == []


@pytest.mark.parametrize(("a", "b"), INDEPENDENT)
def test_independent_siblings_do_not_import_each_other(a: str, b: str) -> None:
    crossing = [f"{m} -> {t}" for m, targets in EDGES.items() for t in targets
                if (_within(m, a) and _within(t, b)) or (_within(m, b) and _within(t, a))]
    assert crossing == []


def test_the_loras_client_imports_no_daemon_insides() -> None:
    for package, forbidden in CLIENT_ONLY.items():
        reached = [f"{m} -> {t}" for m, targets in EDGES.items() if _within(m, package)
                   for t in targets if any(_within(t, f) for f in forbidden)]
        assert reached == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    # A circle makes import order matter (a module half-initialised when the other reads it) and fuses
    # two modules into one concern: the shared part belongs in a third module both import.
    assert circles(EVERY_EDGE) == []


def test_the_circle_check_finds_a_circle_however_long_and_only_circles() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    assert circles({"a": {"a"}}) == [["a"]]


def test_the_circle_check_reads_the_benchmarks_and_lazy_imports(tmp_path: Path) -> None:
    assert "bench.train" in EVERY_EDGE and "bench.common" in EVERY_EDGE
    source = tmp_path / "lazy.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bench import train\n"
                      "def f():\n    from sidecar.jobs.runner import JobRunner\n")
    assert imports_of(source, "bench.lazy") >= {"bench.train", "sidecar.jobs.runner"}


def test_the_check_sees_imports_anywhere_in_a_module(tmp_path: Path) -> None:
    # The walk must catch a lazy import inside a function, the way an upward import usually hides.
    source = tmp_path / "lazy.py"
    source.write_text("def f():\n    from sidecar.api.app import create_app\n    import sidecar.cli\n")
    assert imports_of(source, "sidecar.jobs.lazy") >= {"sidecar.api.app", "sidecar.cli"}
    assert layer_of("sidecar.api.app") < layer_of("sidecar.jobs.lazy")


HOUSE_SIZE = 400  # lines; a module past it says at its top why it stays one module


def test_no_module_outgrows_the_house_size_without_saying_why() -> None:
    root = Path(__file__).resolve().parents[1]
    silent = []
    for folder in ("sidecar", "pipeline_stage", "manual", "bench"):
        for path in sorted((root / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if text.count("\n") <= HOUSE_SIZE:
                continue
            if "Why one module" not in (ast.get_docstring(ast.parse(text)) or ""):
                silent.append(f"{path.relative_to(root)} ({text.count(chr(10))} lines)")
    assert not silent, "split these by concern, or say at their top why they stay one module: " + ", ".join(silent)

"""The manual (docs/, mkdocs.yml) builds strictly, its generated reference pages list everything the code
has (every setting, command, HTTP operation and error code), every dependency has its reason written down,
and the README stays the short front door that points at it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

from manual import api_page, cli_page, errors_page, settings_page
from sidecar.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, env=env, capture_output=True, text=True, timeout=600)


def test_the_manual_builds_strictly_with_its_generated_reference(tmp_path: Path) -> None:
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-4000:]
    for page in ("getting-started", "studio", "pipeline", "training/local", "training/rented", "backends",
                 "configuration", "http-api", "security", "benchmarks", "architecture", "dependencies",
                 "reference/settings", "reference/cli", "reference/http-api", "reference/errors"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text(encoding="utf-8")
    assert "<code>SIDECAR_KEEP_DAYS</code>" in settings
    assert not list(DOCS.glob("reference/*.md")), "reference pages are generated at build time, never committed"


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs")
    shutil.copytree(ROOT / "manual", copy / "manual", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for code in ("sidecar", "pipeline_stage"):  # what the reference is generated from (and `watch:` names)
        (copy / code).symlink_to(ROOT / code, target_is_directory=True)
    page = copy / "docs" / "studio.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the gallery](gallery.md).\n", encoding="utf-8")
    result = build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "gallery.md" in result.stderr


def test_the_settings_reference_lists_every_setting_with_its_description() -> None:
    page = settings_page.render()
    for name, field in Settings.model_fields.items():
        row = next((line for line in page.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"reference/settings.md misses {name}"
        assert f"`SIDECAR_{name.upper()}`" in row
        assert " ".join((field.description or "").split())[:40].replace("<", "&lt;").replace("*", "\\*") in row
    assert "| `--port` |" in page.replace("| `port` | `--port` |", "| `--port` |")
    assert "`remote.vast.max_total_cost`" in page and "## `[[backends]]`" in page


def test_the_cli_reference_has_every_command_and_option() -> None:
    page = cli_page.render()
    for name, command in cli_page.scripts().items():
        for ctx, cmd in cli_page.walk(command, click.Context(command, info_name=name)):
            assert f"`{ctx.command_path}`\n" in page, f"reference/cli.md misses {ctx.command_path}"
    generate = cli_page.scripts()["generate"]
    for param in generate.params:
        if isinstance(param, click.Option):
            assert f"`{param.opts[0]}" in page, f"reference/cli.md misses generate {param.opts[0]}"
    assert "#### `sidecar loras train`" in page and "`--remote" in page


def test_the_http_reference_has_every_operation_of_openapi_json() -> None:
    doc = api_page.openapi_document()
    page = api_page.render()
    assert len(doc["paths"]) > 40
    for path, methods in doc["paths"].items():
        for method in methods:
            assert f"### `{method.upper()} {path}`" in page, f"reference/http-api.md misses {method} {path}"
    for model in doc["components"]["schemas"]:
        assert f"### {model}\n" in page
    submit = page.split("### `POST /jobs`", 1)[1].split("\n### ", 1)[0]
    assert "`training_in_progress`" in submit and "[JobRequest](#jobrequest)" in submit


def test_the_error_reference_has_every_code_of_the_tree() -> None:
    from sidecar import errors

    page = errors_page.render()
    tree = [cls for _, cls in errors_page.classes()]
    assert errors.QueueFull in tree and errors.HostNotAllowed in tree
    for cls in tree:
        if cls is not errors.DaemonRefused:
            row = next(line for line in page.splitlines() if f" {cls.__name__} |" in line)
            assert f"| `{cls.code}` | {cls.http_status} | {cls.exit_code} |" in row, row
    assert "backend_gone" in page  # a job failure's code, from the tree's docstring


def _requirement_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    return {re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower().replace("_", "-") for spec in specs}


def _explained_names() -> set[str]:
    names = set()
    for line in (DOCS / "dependencies.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("| ") and not line.startswith("| package"):
            first = re.sub(r"\([^)]*\)", "", line.split("|")[1])
            names |= {m.group(1).lower() for part in first.split(",")
                      if (m := re.match(r"\s*([A-Za-z0-9][A-Za-z0-9_.-]*)", part))}
    return {n.replace("_", "-") for n in names}


def test_every_dependency_has_its_reason_in_the_manual() -> None:
    missing = _requirement_names() - _explained_names()
    assert not missing, f"docs/dependencies.md has no line for {sorted(missing)}"


def test_the_dependency_check_sees_a_new_dependency() -> None:
    assert {"aiohttp", "pydantic-settings", "torch", "setuptools", "mkdocs-material"} <= _explained_names()
    assert "sqlalchemy" not in _explained_names()  # what the check above would then report missing


def test_the_readme_is_a_front_door_that_points_at_the_manual() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme and "make docs" in readme
    links = re.findall(r"\]\(((?:docs/)[^)#]+)", readme)
    assert "docs/index.md" in links
    for link in links:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert all(Path(link).suffix != ".md" or link.removeprefix("docs/") in nav for link in links)


@pytest.mark.parametrize("target", ["docs", "test"])
def test_make_installs_the_docs_extra_and_serves_the_manual(target: str) -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert '-e ".[engine,test,docs]"' in makefile
    assert re.search(rf"^{target}: setup", makefile, re.M)
    if target == "docs":
        assert "mkdocs serve" in makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]

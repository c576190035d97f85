"""The one error tree: every error carries its stable code, HTTP status and exit code, and the
commands turn any of them into one stderr line and that exit code."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sidecar import errors
from sidecar.cli_support import tool_group

# The tree's classes live in the package's modules (sidecar/errors/*.py); every one is named by the package.
CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if issubclass(c, errors.SidecarError) and c.__module__.startswith(f"{errors.__name__}.")]
DEFINED = [c for path in sorted(Path(errors.__file__).parent.glob("*.py"))
           for _, c in inspect.getmembers(importlib.import_module(f"{errors.__name__}.{path.stem}"), inspect.isclass)
           if path.stem != "__init__" and issubclass(c, errors.SidecarError) and c.__module__.endswith(f".{path.stem}")]


def test_every_error_class_of_the_tree_s_modules_is_named_by_the_package() -> None:
    # `from sidecar.errors import X` is how every module raises them: a class left out of the package's
    # imports would be missing from this test, the docstring tree and error_class() alike.
    assert len(DEFINED) > 60 and sorted(c.__name__ for c in DEFINED) == sorted(c.__name__ for c in CLASSES)


def test_every_error_class_is_in_the_docstring_tree_with_its_code() -> None:
    tree = errors.__doc__ or ""
    for cls in CLASSES:
        assert re.search(rf"\b{cls.__name__}\b", tree), f"{cls.__name__} is missing from the tree in sidecar/errors/__init__.py"
        if cls is not errors.DaemonRefused and cls is not errors.SidecarError:
            assert cls.code in tree, f"{cls.__name__}'s code {cls.code} is missing from the tree"


def test_codes_are_unique_and_carry_status_and_exit_code() -> None:
    seen: dict[str, type] = {}
    for cls in CLASSES:
        if cls is errors.DaemonRefused:
            continue
        assert cls.code not in seen, f"{cls.__name__} and {seen[cls.code].__name__} share {cls.code}"
        seen[cls.code] = cls
        assert 400 <= cls.http_status < 600
        assert cls.exit_code in (1, 2, 3, 4)
        assert errors.error_class(cls.code) is cls


@pytest.mark.parametrize(("status", "code", "exit_code"), [
    (409, "training_in_progress", 4),  # a training holds the device
    (400, "dataset_invalid", 2),       # the daemon refused the input
    (404, "training_not_found", 2),
    (409, "lora_exists", 1),           # promote never overwrites: the install failed
    (422, "some_future_code", 2),      # unknown 4xx: refused
    (500, "internal_error", 1),
    (503, "comfyui_unavailable", 1),
])
def test_a_daemon_refusal_exits_with_its_codes_exit_code(status: int, code: str, exit_code: int) -> None:
    assert errors.DaemonRefused(status, code, "m").exit_code == exit_code


def test_a_command_turns_any_of_our_errors_into_one_line_and_its_exit_code(tmp_path: Path) -> None:
    @tool_group()
    def group() -> None:
        pass

    @group.command()
    @click.argument("which")
    def fail(which: str) -> None:
        raise {"config": errors.ConfigError("port", "must be a number"),
               "down": errors.DaemonUnavailable("The sidecar daemon is not running at http://x."),
               "busy": errors.DaemonRefused(409, "training_in_progress", "training abc holds the device"),
               "input": errors.InvalidField("--seeds must be integers")}[which]

    runner = CliRunner()
    expected = {"config": (2, "sidecar: config error: port: must be a number"),
                "down": (3, "error: The sidecar daemon is not running at http://x."),
                "busy": (4, "error: the daemon refused: training abc holds the device (training_in_progress)"),
                "input": (2, "error: --seeds must be integers")}
    for which, (code, line) in expected.items():
        result = runner.invoke(group, ["fail", which])
        assert result.exit_code == code, which
        assert result.output.strip().splitlines() == [line]

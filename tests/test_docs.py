"""The documentation keeps up with the code: every setting is described in the model, offered as a
flag with that description as help, and listed in the manual's configuration table (docs/configuration.md,
written by hand: what each setting means in practice; after simonw/datasette's tests/test_docs.py). A
setting added without its docs fails here. The generated settings reference is checked in test_manual.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from sidecar.cli import main
from sidecar.config import Settings

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
SETTINGS = sorted(Settings.model_fields)


def _configuration_table() -> str:
    text = CONFIGURATION.read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_is_in_the_manuals_configuration_table(name: str) -> None:
    assert re.search(rf"`{name}`", _configuration_table()), f"docs/configuration.md's table misses `{name}`"


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_has_a_description(name: str) -> None:
    assert (Settings.model_fields[name].description or "").strip(), f"setting {name} has no description"


def _is_table(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def test_serve_offers_a_flag_per_setting_with_its_description_and_default() -> None:
    help_text = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    flat = " ".join(help_text.split())
    for name, field in Settings.model_fields.items():
        if field.annotation is dict or "dict" in str(field.annotation) or "BackendSpec" in str(field.annotation) \
                or _is_table(field.annotation):
            continue  # tables ([[backends]] too) are set in the file
        flag = "--" + name.replace("_", "-")
        assert flag in help_text, f"`sidecar serve` has no {flag}"
        assert " ".join((field.description or "").split()) in flat, f"{flag}'s help is not the model's description"
    assert "--port INTEGER TCP port of the HTTP API [default: 3000]" in flat


def test_a_flag_left_at_its_shown_default_does_not_hide_the_environment(tmp_path: Path) -> None:
    env = {"SIDECAR_PORT": "4011", "SIDECAR_CONFIG": str(tmp_path / "none.toml")}
    shown = CliRunner().invoke(main, ["config", "show", "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    assert '"value": 4011' in shown.output and "env SIDECAR_PORT" in shown.output
    flagged = CliRunner().invoke(main, ["config", "show", "--json", "--port", "4012"], env=env)
    assert '"value": 4012' in flagged.output and '"source": "flag"' in flagged.output

"""The real app on the scripted backend (tests/scripted_backend.py), through aiohttp's test client: the
`settings`, `backend` and `client` fixtures the API tests share. A test module that needs other
settings or another backend defines its own fixture of the same name, which takes precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.api.app import create_app
from sidecar.config import Settings
from tests.scripted_backend import ScriptedBackend


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", engine="embedded")


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def client(aiohttp_client, settings, backend):
    return await aiohttp_client(create_app(settings, backend))

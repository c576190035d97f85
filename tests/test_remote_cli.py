"""The remote-training commands: `sidecar loras train DIR --name X --remote vast --estimate` prints the plan
and rents nothing; the remote keys as options; `sidecar doctor` checks the vast.ai key and SDK without ever
printing the key; `config show` masks it and says it came from VAST_API_KEY."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sidecar.cli import main
from sidecar.config import Settings
from sidecar.doctor.remote import check_remote
from sidecar.config.remote import RemoteSettings, VastSettings
from sidecar.loras.cli import loras
from tests.conftest_comfy import free_port
from tests.fake_vast import FakeVast
from tests.remote_fixtures import (  # noqa: F401  (fixtures)
    app_client,
    client_key,
    dataset,
    make_settings,
    remote_settings,
    trainer_env,
)

KEY = "vast-test-key-0123456789"


@pytest.fixture
async def vast(tmp_path: Path):
    fake = await FakeVast(tmp_path / "vast", KEY).start()
    yield fake
    assert not await fake.close()


async def invoke(command, args: list[str], env: dict[str, str]):
    # The CLI runs its own event loop: give it a thread while this loop serves the daemon and the fake.
    return await asyncio.to_thread(CliRunner().invoke, command, args, env=env, catch_exceptions=False)


async def test_estimate_prints_the_plan_and_rents_nothing(aiohttp_client, tmp_path: Path, client_key, vast,
                                                          dataset) -> None:
    client = await app_client(aiohttp_client, make_settings(
        tmp_path, remote_settings(tmp_path, client_key, vast_url=vast.url)))
    url = str(client.make_url("")).rstrip("/")
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    result = await invoke(loras, ["train", str(dataset), "--name", "spyke", "--remote", "vast", "--estimate",
                                  "--max-price-per-hour", "0.3", "--url", url], env)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "steps: 1000" in out and "offer: 103: RTX 3090 24 GB at $0.220/h" in out
    assert "expected cost: $" in out and "why: lowest expected cost" in out and "under $0.3/h" in out
    assert "here: unknown" in out and "nothing was rented" in out
    assert vast.instances == {}
    plan = await invoke(loras, ["train", str(dataset), "--name", "spyke", "--remote", "vast", "--estimate",
                                "--json", "--url", url], env)
    assert json.loads(plan.output)["offer"]["id"] == "103"
    refused = await invoke(loras, ["train", str(dataset), "--name", "spyke", "--remote", "vast", "--estimate",
                                   "--max-price-per-hour", "0.01", "--url", url], env)
    assert refused.exit_code == 1 and "no_offer_under_limits" in refused.output
    wrong = await invoke(loras, ["train", str(dataset), "--name", "spyke", "--remote", "vast", "--host", "me@x",
                                 "--url", url], env)
    assert wrong.exit_code == 2 and "--host is not an option of --remote vast" in wrong.output


def _doctor_env(home: Path, vast: FakeVast, key: str | None) -> dict[str, str | None]:
    config = home / ".config" / "plasma-sidecar" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[remote.vast]\nserver_url = "{vast.url}"\n')
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "SIDECAR_DATA_DIR": str(home / "data"),
            "SIDECAR_COMFYUI_PORT": str(free_port()), "SIDECAR_LAUNCHCTL": None, "VAST_API_KEY": key}


async def test_doctor_checks_the_vast_key_and_sdk_and_never_prints_the_key(tmp_path: Path, vast) -> None:
    home = tmp_path / "home"
    ok = await invoke(main, ["doctor", "--json", "--port", str(free_port())], _doctor_env(home, vast, KEY))
    checks = {c["name"]: c for c in json.loads(ok.output)["checks"]}
    assert checks["vast.ai SDK"]["status"] == "ok" and checks["vast.ai SDK"]["detail"].startswith("vastai ")
    assert checks["vast.ai key"]["status"] == "ok" and "accepted" in checks["vast.ai key"]["detail"]
    # The same checks, without the rest of the doctor: a refused key, no key.
    bad = {c.name: c for c in await check_remote(Settings(data_dir=home / "data", remote=RemoteSettings(
        vast=VastSettings(api_key="not-the-key-0123456789", server_url=vast.url))))}
    assert bad["vast.ai key"].status == "warn" and "HTTP 401" in bad["vast.ai key"].detail
    none = {c.name: c for c in await check_remote(Settings(data_dir=home / "data"))}
    assert none["vast.ai key"].status == "warn" and "VAST_API_KEY" in none["vast.ai key"].fix
    shown = await invoke(main, ["config", "show", "--json"], _doctor_env(home, vast, KEY))
    remote = json.loads(shown.output)["remote"]
    assert remote["value"]["vast"]["api_key"] == "**********" and "env VAST_API_KEY" in remote["source"]
    for output in (ok.output, shown.output, repr(bad), repr(none)):
        assert KEY not in output

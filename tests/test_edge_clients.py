"""The project's own clients against a daemon with a token: `generate`, `sidecar loras`, `sidecar doctor`
(checks and --bench) and the /events WebSocket send it from the same settings the daemon reads
(SIDECAR_TOKEN, or `token` in the config file); without it each says 401 `unauthorized` plainly."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline_stage.cli import main as generate_main
from sidecar.cli import main as sidecar_main
from sidecar.client import DaemonClient, DaemonRefused
from sidecar.config import Settings, client_token
from sidecar.loras.cli import loras
from tests.pipeline_daemon import DaemonThread, SeededBackend, copy_example

TOKEN = "client-test-token-0123456789abcdef"


@pytest.fixture
def daemon(tmp_path: Path):
    d = DaemonThread(Settings(data_dir=tmp_path / "data", engine="embedded", token=TOKEN), SeededBackend()).start()
    yield d
    d.stop()


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str | None]:
    """An environment with no token anywhere (no SIDECAR_TOKEN, an empty config dir)."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
            "SIDECAR_CONFIG": None, "SIDECAR_TOKEN": None, "SIDECAR_DATA_DIR": str(tmp_path / "client-data")}


def config_with_token(tmp_path: Path, token: str) -> Path:
    config = tmp_path / "home" / ".config" / "plasma-sidecar" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'token = "{token}"\n')
    return config


def generate(project: Path, url: str, env: dict[str, str | None], *args: str):
    return CliRunner().invoke(generate_main, ["--comfyui", "--root", str(project), "--daemon", url, "-c", "1",
                                              "--page", "1", *args], env=env)


def test_generate_sends_the_token_from_the_environment(tmp_path: Path, daemon: DaemonThread, home) -> None:
    project = copy_example(tmp_path / "project")
    result = generate(project, daemon.url, {**home, "SIDECAR_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert (project / "output/ch-01/raw/ch01_p001_v1.png").is_file()


def test_generate_reads_the_token_from_the_daemons_config_file(tmp_path: Path, daemon: DaemonThread, home) -> None:
    project = copy_example(tmp_path / "project")
    config_with_token(tmp_path, TOKEN)
    result = generate(project, daemon.url, home)
    assert result.exit_code == 0, result.output
    assert client_token(environ={}, config_file=tmp_path / "home/.config/plasma-sidecar/config.toml") == TOKEN


def test_generate_without_the_token_exits_2_saying_unauthorized(tmp_path: Path, daemon: DaemonThread, home) -> None:
    project = copy_example(tmp_path / "project")
    result = generate(project, daemon.url, home)
    assert result.exit_code == 2, result.output
    assert "needs its token" in result.output and "SIDECAR_TOKEN" in result.output
    assert not (project / "output/ch-01/raw").exists() and daemon.jobs() == []
    wrong = generate(project, daemon.url, home, "--token", "not-the-token-0123456789")
    assert wrong.exit_code == 2 and "not the daemon's" in wrong.output


def test_sidecar_loras_sends_the_configured_token(tmp_path: Path, daemon: DaemonThread, home) -> None:
    ok = CliRunner().invoke(loras, ["runs", "--json", "--url", daemon.url], env={**home, "SIDECAR_TOKEN": TOKEN})
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output) == []
    refused = CliRunner().invoke(loras, ["list", "--url", daemon.url], env=home)
    assert refused.exit_code == 2 and "(unauthorized)" in refused.output


def test_doctor_checks_and_bench_use_the_token(tmp_path: Path, daemon: DaemonThread, home) -> None:
    port = daemon.url.rsplit(":", 1)[1]
    args = ["doctor", "--json", "--port", port, "--bench", "--url", daemon.url, "--poll-interval", "0.02"]
    result = CliRunner().invoke(sidecar_main, args, env={**home, "SIDECAR_TOKEN": TOKEN})
    body = json.loads(result.output)
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["daemon"]["status"] == "ok" and "running on" in checks["daemon"]["detail"]
    assert body["bench"]["source"] == f"daemon at {daemon.url}"
    assert [r["status"] for r in body["bench"]["runs"]] == ["succeeded"]

    without = CliRunner().invoke(sidecar_main, args, env=home)
    body = json.loads(without.output)
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["daemon"]["status"] == "fail" and "token" in checks["daemon"]["detail"]
    assert body["bench"]["error"]["code"] == "unauthorized" and without.exit_code == 1
    assert len(daemon.jobs()) == 1  # the refused bench rendered nothing, and started no daemon of its own


def test_the_event_socket_carries_the_token(daemon: DaemonThread) -> None:
    async def go() -> None:
        async with DaemonClient(daemon.url, token=TOKEN) as client:
            ws = await client._events()
            assert ws is not None  # the upgrade passed the edge with the token
            done = await client.run({"prompt": "spyke_plasma_v1, standing", "steps": 2}, lambda job: None)
            assert done["status"] == "succeeded"
            await ws.close()
        async with DaemonClient(daemon.url) as anonymous:
            with pytest.raises(DaemonRefused) as exc:
                await anonymous.health()
            assert exc.value.status == 401 and exc.value.code == "unauthorized"

    asyncio.run(go())

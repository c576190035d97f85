"""Configuration: precedence, provenance, and one clear line for a bad value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.config import load_settings
from sidecar.errors import ConfigError
from tests.conftest_comfy import free_port

TOKEN = "t0ken-for-the-tests-0123456789"


def test_flags_beat_env_beat_file_beat_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('port = 4000\nsteps = 25\ncfg = 5.5\nsampler = "ddim"\n')
    env = {"SIDECAR_STEPS": "30", "SIDECAR_CFG": "6.0"}
    settings, sources = load_settings({"cfg": 8.0}, cfg, environ=env)
    assert (settings.port, settings.steps, settings.cfg, settings.sampler, settings.scheduler) == (
        4000, 30, 8.0, "ddim", "normal")
    assert sources["cfg"] == "flag"
    assert sources["steps"] == "env SIDECAR_STEPS"
    assert sources["port"].startswith("file ")
    assert sources["scheduler"] == "default"


def test_job_defaults_are_the_documented_ones() -> None:
    s, _ = load_settings({}, None, environ={})
    assert (s.steps, s.cfg, s.sampler, s.scheduler, s.lora_strength) == (20, 7.0, "euler_ancestral", "normal", 0.8)
    assert s.resolved_engine == "embedded"  # no ComfyUI configured on a fresh machine
    assert load_settings({"comfyui_url": "http://127.0.0.1:8188"}, None, environ={})[0].resolved_engine == "comfyui"


@pytest.mark.parametrize(
    ("flags", "env", "key"),
    [
        ({"port": 70000}, {}, "port"),
        ({}, {"SIDECAR_PORT": "abc"}, "port"),
        ({"profile": "pdp-11"}, {}, "profile"),
        ({"host": "0.0.0.0"}, {}, "host"),
        ({"comfyui_url": "localhost:8188"}, {}, "comfyui_url"),
        ({"engine": "comfyui"}, {}, "engine"),
    ],
)
def test_bad_value_names_the_key(flags: dict, env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(flags, None, environ=env)
    assert exc.value.key == key


def test_remote_bind_needs_allow_remote_and_warns(tmp_path: Path, monkeypatch, caplog) -> None:
    import aiohttp.web
    from click.testing import CliRunner

    import sidecar.api.app
    from sidecar import cli

    s, _ = load_settings({"host": "0.0.0.0", "allow_remote": True}, None, environ={"SIDECAR_TOKEN": TOKEN})
    assert s.host == "0.0.0.0"
    warning = cli.remote_bind_warning(s)
    assert warning is not None and "0.0.0.0" in warning and "token" in warning
    assert cli.remote_bind_warning(load_settings({}, None, environ={})[0]) is None

    # `serve` itself logs it (stderr and the log file) before it binds.
    bound: list[str] = []

    def run_app(app, sock, **kw) -> None:  # `serve` binds before the app starts and hands over its sockets
        bound.extend(s.getsockname()[0] for s in sock)
        for s in sock:
            s.close()

    monkeypatch.setattr(cli, "setup_logging", lambda settings: None)
    monkeypatch.setattr(sidecar.api.app, "create_app", lambda settings, **kw: object())
    monkeypatch.setattr(aiohttp.web, "run_app", run_app)
    monkeypatch.setattr(cli, "bound_shutdown", lambda app: None)
    monkeypatch.setattr(cli, "exit_process", lambda code: None)  # serve leaves with os._exit
    config = tmp_path / "empty.toml"
    config.touch()
    with caplog.at_level("WARNING", logger="sidecar"):
        result = CliRunner().invoke(cli.main, ["serve", "--host", "0.0.0.0", "--allow-remote", "--token", TOKEN,
                                               "--port", str(free_port()), "--config",
                                               str(config), "--data-dir", str(tmp_path / "data")], env={})
    assert result.exit_code == 0, result.output
    assert bound == ["0.0.0.0"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [warning]


def test_serve_on_a_remote_host_without_allow_remote_exits_naming_it(tmp_path: Path) -> None:
    out = _sidecar("serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path), "--port", "3999")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "host" in lines[0] and "--allow-remote" in lines[0]
    assert not (tmp_path / "sidecar.db").exists()


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text("prot = 4000\n")
    with pytest.raises(ConfigError) as exc:
        load_settings({}, cfg, environ={})
    assert exc.value.key == "prot"


def _sidecar(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sidecar", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **(env or {})}, timeout=60)


def test_config_show_prints_values_and_sources(tmp_path: Path) -> None:
    out = _sidecar("config", "show", "--json", "--port", "3100", env={"SIDECAR_STEPS": "12"})
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["port"] == {"value": 3100, "source": "flag"}
    assert shown["steps"] == {"value": 12, "source": "env SIDECAR_STEPS"}


def test_serve_with_bad_config_exits_before_starting(tmp_path: Path) -> None:
    out = _sidecar("serve", "--data-dir", str(tmp_path), "--port", "0")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "port" in lines[0]
    assert not (tmp_path / "sidecar.db").exists()


# -- the edge settings: allowed_hosts, allowed_origins, token ---------------------------------------
def test_allow_remote_without_a_token_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"host": "0.0.0.0", "allow_remote": True}, None, environ={})
    assert exc.value.key == "token" and "allow_remote" in exc.value.message and "secrets" in exc.value.message


def test_serve_with_allow_remote_and_no_token_exits_2_before_touching_anything(tmp_path: Path) -> None:
    out = _sidecar("serve", "--host", "0.0.0.0", "--allow-remote", "--data-dir", str(tmp_path / "d"),
                   "--port", "3999")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "token" in lines[0] and "allow_remote" in lines[0]
    assert not (tmp_path / "d").exists()


def test_edge_lists_come_comma_separated_from_the_environment() -> None:
    s, sources = load_settings({}, None, environ={
        "SIDECAR_ALLOWED_ORIGINS": "http://localhost:5173, HTTPS://Studio.example:443/",
        "SIDECAR_ALLOWED_HOSTS": "studio.lan,[fe80::1]", "SIDECAR_TOKEN": TOKEN})
    assert s.allowed_origins == ["http://localhost:5173", "https://studio.example"]
    assert s.allowed_hosts == ["studio.lan", "fe80::1"]
    assert s.token_value == TOKEN and sources["token"] == "env SIDECAR_TOKEN"


def test_edge_lists_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('allowed_origins = ["*"]\nallowed_hosts = ["box.local"]\n')
    s, _ = load_settings({}, cfg, environ={})
    assert s.allowed_origins == ["*"] and s.allowed_hosts == ["box.local"] and s.token is None


@pytest.mark.parametrize("env, key", [
    ({"SIDECAR_ALLOWED_ORIGINS": "localhost:5173"}, "allowed_origins"),
    ({"SIDECAR_ALLOWED_ORIGINS": "http://localhost:5173/studio"}, "allowed_origins"),
    ({"SIDECAR_ALLOWED_HOSTS": "http://box.local"}, "allowed_hosts"),
    ({"SIDECAR_ALLOWED_HOSTS": "box.local:3000"}, "allowed_hosts"),
    ({"SIDECAR_TOKEN": "short"}, "token"),
    ({"SIDECAR_TOKEN": "has a space in it 0123456789"}, "token"),
])
def test_bad_edge_values_name_the_key(env: dict, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({}, None, environ=env)
    assert exc.value.key == key


def test_config_show_never_prints_the_token(tmp_path: Path) -> None:
    out = _sidecar("config", "show", "--json", env={"SIDECAR_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    assert TOKEN not in out.stdout and json.loads(out.stdout)["token"]["source"] == "env SIDECAR_TOKEN"


def test_every_setting_has_a_description_and_a_manual_row() -> None:
    from sidecar.config import Settings

    manual = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in ("allowed_hosts", "allowed_origins", "token"):
        assert Settings.model_fields[name].description, name
        assert f"`{name}`" in manual, name

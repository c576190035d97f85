"""Loading the settings: command-line flags > `SIDECAR_*` environment > TOML file (`--config`, default
`~/.config/plasma-sidecar/config.toml`) > defaults, with where each value came from (for `sidecar config
show`); a bad value raises `ConfigError` naming the key, before anything starts. Also the one key a
client reads from the same places: the daemon's token.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource, TomlConfigSettingsSource

from sidecar.config.defaults import ENV_PREFIX, default_config_path
from sidecar.config.model import Settings
from sidecar.errors import ConfigError


def client_token(config_file: Path | None = None, environ: dict[str, str] | None = None) -> str | None:
    """The token a client sends, from the daemon's own settings: SIDECAR_TOKEN, else `token` in the config
    file. Only that key is read, so a client is not stopped by a setting it does not use."""
    env = os.environ if environ is None else environ
    if env.get(f"{ENV_PREFIX}TOKEN"):
        return env[f"{ENV_PREFIX}TOKEN"]
    path = Path(config_file).expanduser() if config_file else default_config_path()
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("token")
    except (OSError, ValueError):
        return None  # no file, or one the daemon could not read either: a 401 will say what is missing
    return value if isinstance(value, str) and value else None


def load_settings(
    flags: dict[str, Any] | None = None,
    config_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Build the effective settings and a map key -> where its value came from.

    `flags` holds only the options given on the command line (None values are dropped).
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    explicit_file = config_file is not None
    path = Path(config_file).expanduser() if config_file else default_config_path()
    if explicit_file and not path.is_file():
        raise ConfigError("config", f"config file {path} does not exist")
    file_values: dict[str, Any] = {}
    if path.is_file():
        try:
            file_values = TomlConfigSettingsSource(Settings, toml_file=path)()
        except Exception as exc:  # tomllib.TOMLDecodeError and friends
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
        unknown = sorted(set(file_values) - set(Settings.model_fields))
        if unknown:
            raise ConfigError(unknown[0], f"unknown key in {path} (known keys: see `sidecar config show`)")

    old_env = None
    if environ is not None:
        old_env = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        env_values = EnvSettingsSource(Settings, case_sensitive=False, env_prefix=ENV_PREFIX)()
    finally:
        if old_env is not None:
            os.environ.clear()
            os.environ.update(old_env)
    env_values.pop("config", None)

    merged: dict[str, Any] = {**file_values, **env_values, **flags}
    vast_key_from_env = _vast_key_from_environment(merged, os.environ if environ is None else environ)
    sources = {k: "default" for k in Settings.model_fields}
    sources.update({k: f"file {path}" for k in file_values})
    sources.update({k: f"env {ENV_PREFIX}{k.upper()}" for k in env_values})
    sources.update({k: "flag" for k in flags})
    if vast_key_from_env:
        sources["remote"] = f"{sources['remote']} + env VAST_API_KEY"
    try:
        # Sources were read above; validate the merged dict alone so env is not read twice.
        settings = _validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        key = ".".join(str(p) for p in err["loc"]) or _key_from_message(msg)
        msg = msg.removeprefix(f"{key}: ")
        raise ConfigError(key, f"{msg} (from {sources.get(key, 'default')})") from None
    return settings, sources


def _vast_key_from_environment(values: dict[str, Any], environ: Any) -> bool:
    """vast.ai's own `VAST_API_KEY` (what its SDK and CLI read) fills `[remote.vast] api_key` when the
    file and SIDECAR_REMOTE leave it out."""
    key = environ.get("VAST_API_KEY")
    remote = values.get("remote")
    if not key or (remote is not None and not isinstance(remote, dict)):
        return False
    vast = (remote or {}).get("vast") or {}
    if not isinstance(vast, dict) or vast.get("api_key"):
        return False
    values["remote"] = {**(remote or {}), "vast": {**vast, "api_key": key}}
    return True


class _NoEnvSettings(Settings):
    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)


def _validate(values: dict[str, Any]) -> Settings:
    built = _NoEnvSettings(**values)
    return Settings.model_construct(**{k: getattr(built, k) for k in Settings.model_fields})


def _key_from_message(msg: str) -> str:
    # Model-level checks start their message with "<key>: ".
    head = msg.split(":", 1)[0]
    return head if head in Settings.model_fields else "config"

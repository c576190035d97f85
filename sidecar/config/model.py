"""The one settings model: every knob of the daemon and its tools, typed, with a description each (the
flag's help and the manual's configuration table). Its tables have models of their own beside it:
`[[backends]]` (backends.py), `[remote.*]` (remote.py) and `[storage]` (storage.py). Loading it: load.py.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sidecar.assets import WORKFLOWS, asset_path
from sidecar.config.backends import BackendSpec, check_tables
from sidecar.config.defaults import (
    DEFAULT_HOST, DEFAULT_PORT, ENV_PREFIX, default_data_dir, http_url, normalize_origin,
)
from sidecar.config.remote import RemoteSettings
from sidecar.config.storage import StorageSettings
from sidecar.durations import parse_duration
from sidecar.hosts import is_loopback
from sidecar.profiles import known_profile

MIN_TOKEN_LENGTH = 16
TOKEN_RECIPE = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _comma_list(v: Any) -> Any:
    """A list setting given as one string (environment, flag) is comma-separated."""
    if isinstance(v, str):
        return [item.strip() for item in v.split(",") if item.strip()]
    if isinstance(v, (list, tuple)):
        return [item.strip() if isinstance(item, str) else item for item in v]
    return v


class Settings(BaseSettings):
    """Every knob of the daemon. Field names are the TOML keys; env vars are SIDECAR_<NAME>; flags
    --<name-with-dashes> (built from these fields by `sidecar.cli_support.config_options`). Every
    field has a `description`: it is the flag's help, and the manual's configuration table lists them all
    (tests/test_docs.py checks both)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    # -- server
    host: str = Field(DEFAULT_HOST, description="bind address; a non-loopback one needs allow_remote")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="TCP port of the HTTP API")
    allow_remote: bool = Field(False, description="allow binding to a non-loopback address (logs a warning)")
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="SQLite database, job images and logs [default: ~/.local/share/plasma-sidecar, "
                                       "macOS ~/Library/Application Support/plasma-sidecar]")
    profile: str = Field("m1pro-16gb", description="hardware profile: the resolution, batch and ControlNet limits")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    log_stderr: bool = Field(
        True, description="also write the log to stderr (a terminal); the launchd agent turns it off "
                          "(--no-log-stderr) so its log goes only to the rotating <data_dir>/logs/sidecar.log")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="largest request body accepted, in bytes")
    max_queue: int = Field(512, ge=1, description="most jobs waiting to run; past it POST /jobs answers 429 "
                                                  "queue_full (Ollama's OLLAMA_MAX_QUEUE default)")
    events_buffer: int = Field(1000, ge=16, description="events held for one /events client that reads too "
                                                        "slowly; past it that client is disconnected (code 1008)")
    shutdown_timeout: float = Field(3.0, gt=0, le=60, description="seconds open requests get to finish on "
                                                                  "SIGTERM/Ctrl-C before they are cut")

    # -- the HTTP edge (sidecar/api/edge.py): what a browser page may reach
    # NoDecode: the environment gives these comma-separated (SIDECAR_ALLOWED_ORIGINS=a,b), not as JSON.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (besides 127.0.0.1, localhost, [::1] and the bound host) that requests may "
                    "address the daemon by; anything else is 403 host_not_allowed (defeats DNS rebinding). "
                    "Comma-separated in the environment; '*' allows any host")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Web origins (scheme://host[:port]) besides the daemon's own whose pages may call the API; "
                    "a request from any other Origin is 403 origin_not_allowed. Comma-separated in the "
                    "environment; '*' allows every origin (only by explicit choice)")
    token: SecretStr | None = Field(
        None,
        description="Bearer token every request must carry (Authorization: Bearer <token>), else 401 "
                    "unauthorized; required with allow_remote. The project's clients send it from the same "
                    "settings (SIDECAR_TOKEN or the config file)")

    # -- the studio (the web page at /)
    project_root: Path | None = Field(
        None, description="the page pipeline's project (the folder holding prompts/ and output/) whose chapters, "
                          "pages and versions the studio shows (`sidecar serve --project ROOT`), and where page jobs "
                          "(POST /jobs with `page`) write their versions when they name no project",
        json_schema_extra={"flag_aliases": ["--project"]})

    # -- generation backend
    engine: Literal["auto", "embedded", "comfyui"] = Field(
        "auto", description="generation backend; auto = ComfyUI when comfyui_url/comfyui_dir is set, else embedded")
    models_dir: Path | None = Field(None, description="checkpoints/, loras/, controlnet/ of the embedded engine "
                                                      "[default: <data_dir>/models]")
    device: Literal["auto", "mps", "cuda", "cpu"] = Field("auto", description="torch device of the embedded engine")
    workflows_dir: Path = Field(default_factory=lambda: asset_path(WORKFLOWS),
                                description="folder of the workflow templates and their manifest.json "
                                            "[default: the templates shipped in the package]")
    keep_alive: float = Field(
        300.0, description="how long the embedded engine keeps its models loaded after the last job, as "
                           "Ollama's keep_alive: \"5m\", \"30s\", \"1h\" or seconds; 0 unloads after each job, "
                           "-1 never unloads",
        json_schema_extra={"flag_type": "text"})  # "5m" is a value: the flag takes text, the model parses it
    keep_days: int = Field(
        30, ge=0, description="finished jobs older than this many days are removed with their images in the "
                              "data dir (at start, daily, and by `sidecar gc`); 0 keeps them forever. Pages the "
                              "pipeline saved in the artist's project are never touched")

    # -- ComfyUI (attach with comfyui_url, or manage with comfyui_dir + comfyui_python)
    comfyui_url: str | None = Field(None, description="attach to a running ComfyUI at this URL")
    comfyui_dir: Path | None = Field(None, description="ComfyUI install to start and supervise (managed mode)")
    comfyui_python: Path | None = Field(None, description="python of ComfyUI's venv (managed mode)")
    comfyui_port: int = Field(8188, ge=1, le=65535, description="port of the managed ComfyUI")
    comfyui_extra_args: str = Field(
        "", description="managed mode: more flags for ComfyUI's main.py, split like a shell command line "
        "(e.g. `--cpu --preview-method auto`); they come last, so they win over the daemon's own")
    comfyui_start_timeout: float = Field(120.0, gt=0, description="seconds to wait for a managed ComfyUI to start")
    comfyui_unavailable_deadline: float = Field(
        300.0, gt=0, description="seconds jobs wait for a dead ComfyUI before failing comfyui_unavailable")
    job_inactivity_timeout: float = Field(
        900.0, gt=0, description="seconds without news after which a job is interrupted and failed timeout")
    history_poll_interval: float = Field(3.0, gt=0, description="seconds between ComfyUI history polls while a "
                                                                 "job runs")
    comfyui_delete_outputs: bool = Field(
        True, description="delete the copy ComfyUI keeps in its output/ folder once the daemon has fetched "
                          "a job's image (the daemon keeps its own); needs the ComfyUI folder (managed mode, "
                          "or comfyui_dir set with comfyui_url): ComfyUI has no API to delete a file")

    # -- several generation backends (sidecar/backends/): [[backends]] tables in the config file
    backends: list[BackendSpec] = Field(
        default_factory=list,
        description="[[backends]] tables (name, kind, url or dir+python, profile, tags, ssh): several generation "
                    "backends jobs are routed over; none = the one backend the settings above describe. When no "
                    "table is local, that backend joins the pool as `local`")
    default_where: str = Field(
        "local", description="where a job without `where` runs: `local` (this machine), `any`, a tag or a backend "
                             "name of the [[backends]] tables")
    backend_probe_interval: float = Field(
        5.0, gt=0, le=3600, description="seconds between health probes of each backend (system_stats, models, "
                                        "node types); a backend that fails two in a row is out of routing until it "
                                        "answers again")
    rent_check_interval: float = Field(
        5.0, gt=0, le=600, description="seconds between checks of each rented backend: idle time, cost and time "
                                       "limits (it is destroyed when one is reached)")
    backend_recovery_timeout: float = Field(
        300.0, gt=0, le=86400, description="seconds a job that was running on a backend when the daemon stopped "
                                           "waits for that backend to answer again after a restart; then it is "
                                           "re-queued once onto another backend `where` allows (its prompt there "
                                           "interrupted when that backend returns), or failed `backend_gone`")

    # -- kohya_ss
    kohya_dir: Path | None = Field(None, description="kohya_ss sd-scripts folder (training engine kohya)")
    kohya_python: Path | None = Field(None, description="python of kohya's venv")
    # -- ostris ai-toolkit (trainer ai-toolkit on this machine; a CUDA profile)
    ai_toolkit_dir: Path | None = Field(None, description="ostris ai-toolkit checkout (the folder of run.py)")
    ai_toolkit_python: Path | None = Field(None, description="python of ai-toolkit's venv [default: "
                                                                "<ai_toolkit_dir>/venv/bin/python]")

    # -- job defaults
    checkpoint: str = Field("anything-v5.safetensors", description="base model file name of a job without one")
    negative_prompt: str = Field("lowres, bad anatomy, bad hands, blurry, watermark, text",
                                 description="negative prompt of a job without one")
    steps: int = Field(20, ge=1, le=150, description="sampling steps of a job without them")
    cfg: float = Field(7.0, ge=0, le=30, description="CFG scale of a job without one")
    sampler: str = Field("euler_ancestral", description="sampler (ComfyUI name) of a job without one")
    scheduler: str = Field("normal", description="scheduler (ComfyUI name) of a job without one")
    lora_strength: float = Field(0.8, ge=0, le=2, description="LoRA strength of a job without one")
    controlnet_strength: float = Field(0.65, ge=0.4, le=0.9, description="ControlNet strength of a pose job "
                                                                          "without one")
    controlnet_model: str = Field("control_v11p_sd15_openpose.pth", description="OpenPose ControlNet file name")
    # A Flux job's checkpoint is its diffusion model (diffusion_models/); these are the rest of it, as the
    # ComfyUI backend has them (ComfyUI's Flux example names).
    flux_clip_l: str = Field("clip_l.safetensors", description="Flux jobs: the CLIP-L text encoder file of "
                                                               "ComfyUI's models/text_encoders/")
    flux_t5xxl: str = Field("t5xxl_fp8_e4m3fn.safetensors", description="Flux jobs: the T5-XXL text encoder file "
                                                                        "of ComfyUI's models/text_encoders/")
    flux_vae: str = Field("ae.safetensors", description="Flux jobs: the VAE file of ComfyUI's models/vae/")
    trigger_word: str = Field("spyke_plasma_v1", description="the character's trigger word (captions, training)")

    # -- training away from this machine: the [remote.vast] and [remote.ssh] tables (file or SIDECAR_REMOTE JSON)
    remote: RemoteSettings = Field(
        default_factory=RemoteSettings,
        description="remote LoRA training: [remote.vast] (API key, price, cost and time limits, offer filters) "
                    "and [remote.ssh] (host, kohya folder); a request's `remote` overrides them key by key")
    # -- a cloud bucket for datasets, LoRAs and outputs: the [storage] table (file or SIDECAR_STORAGE JSON)
    storage: StorageSettings = Field(
        default_factory=StorageSettings,
        description="[storage] url (gs://bucket/prefix, s3://bucket/prefix or file:///path) and endpoint_url (S3-"
                    "compatible stores): where `sidecar sync` keeps datasets, LoRAs and outputs and remote runs "
                    "train from; credentials only from the store's own environment")
    # -- assistants through a local Ollama (prompt refinement, caption proposals: sidecar/assist/)
    ollama_url: str = Field("http://127.0.0.1:11434",
                            description="Ollama's address, for prompt refinement and caption proposals")
    prompt_model: str = Field("llama3.1:8b", description="Ollama model that turns feedback into prompt changes "
                                                         "(`ollama pull` it first)")
    vision_model: str = Field("llava:7b", description="Ollama vision model that looks at a picked image "
                                                      "(refine --look) and proposes captions (dataset caption "
                                                      "--auto --proposer ollama)")
    ollama_timeout: float = Field(120.0, gt=0, le=3600, description="seconds to wait for an Ollama answer "
                                                                    "(a first call also loads the model)")
    # The concept builder's three stages (sidecar/concepts/): each its own model, the ones above when unset.
    concept_compose_model: str | None = Field(None, description="Ollama model of the concept builder's prompt "
                                                                "engineer (fields -> prompt); prompt_model when unset")
    concept_interpret_model: str | None = Field(None, description="Ollama model of the concept builder's feedback "
                                                                  "interpreter (picks, rejections, words -> field "
                                                                  "changes); prompt_model when unset")
    concept_vision_model: str | None = Field(None, description="Ollama vision model that describes a picked image "
                                                               "for a concept's next round (\"more like this\"); "
                                                               "vision_model when unset")

    # -- live previews
    previews: bool = Field(True, description="send live previews of running jobs (job.preview events, GET "
                                             "/jobs/{id}/preview); false: none are made or sent")
    preview_interval: float = Field(1.0, ge=0, le=3600, description="seconds between two previews of one job "
                                                                    "(at most one per interval gets through)")
    upscale_tile: int = Field(256, ge=0, le=4096, description="the embedded engine's print upscale runs the model "
                                                             "on tiles of this many pixels a side (memory stays "
                                                             "bounded); 0: the whole image at once")
    upscale_tile_overlap: int = Field(32, ge=0, le=512, description="pixels neighbouring upscale tiles share, "
                                                                    "blended so no seam shows")

    # -- likeness (is the image the character? `sidecar models fetch ccip`)
    likeness_model: str = Field("ccip-caformer-24-randaug-pruned", pattern=r"^[A-Za-z0-9._-]{1,100}$",
                                description="the likeness model: a folder in likeness/ of the models dir (CCIP's "
                                            "ONNX files); ccip-tiny is make-tiny's random one")
    likeness_threshold: float | None = Field(None, gt=0, le=2,
                                             description="CCIP difference at or under which an image is the same "
                                                         "character [default: the model's published threshold]")

    @field_validator("data_dir", "models_dir", "comfyui_dir", "kohya_dir", "ai_toolkit_dir", "workflows_dir",
                     "project_root",
                     mode="after")
    @classmethod
    def _expand(cls, v: Path | None) -> Path | None:
        return v.expanduser().resolve() if v is not None else None

    @field_validator("comfyui_python", "kohya_python", "ai_toolkit_python", mode="after")
    @classmethod
    def _absolute_interpreter(cls, v: Path | None) -> Path | None:
        # Absolute but not resolved: a venv's python is a symlink to the base interpreter, and
        # following it would run outside the venv (without its site-packages).
        return Path(os.path.abspath(v.expanduser())) if v is not None else None

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("comfyui_extra_args")
    @classmethod
    def _shell_words(cls, v: str) -> str:
        try:
            shlex.split(v)
        except ValueError as exc:  # an unclosed quote
            raise ValueError(f"cannot split {v!r} like a command line: {exc}") from None
        return v

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, v: str) -> str:
        return known_profile(v)

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _host_names(cls, v: Any) -> Any:
        names = _comma_list(v)
        if not isinstance(names, list):
            return names
        for name in names:
            if name != "*" and (not name or any(c in name for c in "/ @") or name.count(":") == 1):
                raise ValueError(f"{name!r} is not a host name (give names like 'studio.local', no scheme or port)")
        return [n.lower().removeprefix("[").removesuffix("]") for n in names]

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, v: Any) -> Any:
        origins = _comma_list(v)
        if not isinstance(origins, list):
            return origins
        out = []
        for origin in origins:
            if origin in ("*", "null"):
                out.append(origin)
                continue
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") \
                    or parts.query or parts.fragment:
                raise ValueError(f"{origin!r} is not an origin (give scheme://host[:port], e.g. http://localhost:5173)")
            out.append(normalize_origin(origin))
        return out

    @field_validator("token", mode="before")
    @classmethod
    def _token(cls, v: Any) -> Any:
        if isinstance(v, SecretStr):
            v = v.get_secret_value()
        if v is None or v == "":
            return None
        if not isinstance(v, str):
            return v
        if len(v) < MIN_TOKEN_LENGTH or not v.isascii() or not v.isprintable() or " " in v:
            raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without spaces; "
                             f"make one with: {TOKEN_RECIPE}")
        return v

    @field_validator("ollama_url")
    @classmethod
    def _ollama_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @field_validator("comfyui_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _coherent(self) -> "Settings":
        if not self.allow_remote and not is_loopback(self.host):
            raise ValueError(
                f"host: {self.host!r} is not a loopback address; pass --allow-remote "
                "(SIDECAR_ALLOW_REMOTE=1) to expose the daemon to the network"
            )
        if self.allow_remote and self.token is None:
            raise ValueError(
                "token: allow_remote exposes the daemon to the network, so it needs a token (--token, "
                f"SIDECAR_TOKEN or `token` in the config file); make one with: {TOKEN_RECIPE}"
            )
        if self.engine == "comfyui" and not (self.comfyui_url or self.comfyui_dir):
            raise ValueError("engine: 'comfyui' needs comfyui_url (attach) or comfyui_dir (managed)")
        if self.comfyui_dir is not None and self.comfyui_url is None and self.comfyui_python is None:
            raise ValueError("comfyui_python: managed mode (comfyui_dir) needs the python of ComfyUI's venv")
        try:
            check_tables(self.backends)
        except ValueError as exc:
            raise ValueError(f"backends: {exc}") from None
        known = {"local", "any", *(b.name for b in self.backends), *(t for b in self.backends for t in b.tags)}
        if self.default_where not in known:
            raise ValueError(f"default_where: {self.default_where!r} names no backend or tag; known: "
                             f"{', '.join(sorted(known))}")
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings, env_settings)

    # -- derived paths
    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "sidecar.db"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None

    @property
    def resolved_engine(self) -> Literal["embedded", "comfyui"]:
        if self.engine == "auto":
            return "comfyui" if (self.comfyui_url or self.comfyui_dir) else "embedded"
        return self.engine

    @property
    def daemon_url(self) -> str:
        """Where the tools reach this daemon (a wildcard bind address is reached on loopback)."""
        return http_url(self.host, self.port)

    @property
    def comfyui_base_url(self) -> str:
        return self.comfyui_url or http_url("127.0.0.1", self.comfyui_port)

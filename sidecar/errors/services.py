"""The services the daemon drives, when they are not there or answer wrong: ComfyUI, the embedded engine, the
remote provider, Ollama and the assistants' answers."""

from __future__ import annotations

from sidecar.errors.base import EXIT_INPUT, EXIT_UNAVAILABLE, SidecarError


class ComfyUnavailable(SidecarError):
    http_status = 503
    code = "comfyui_unavailable"


class EngineUnavailable(SidecarError):
    http_status = 503
    code = "engine_unavailable"


class RemoteUnavailable(SidecarError):
    """The remote provider could not be asked (network, refused key, SDK missing)."""

    http_status = 503
    code = "remote_unavailable"


class OllamaUnavailable(SidecarError):
    """Nothing answers at `ollama_url` (Ollama is not running, or another URL is configured)."""

    http_status = 503
    code = "ollama_unavailable"
    exit_code = EXIT_UNAVAILABLE


class OllamaModelMissing(SidecarError):
    """Ollama runs but has not got the model a setting names; `details.fix` is the `ollama pull` line."""

    http_status = 503
    code = "ollama_model_missing"
    exit_code = EXIT_INPUT


class LikenessUnavailable(SidecarError):
    """The likeness model's weights are not in the models folder (or do not load); `details.fix` is the
    command that gets them. Everything but likeness keeps working."""

    http_status = 503
    code = "likeness_unavailable"
    exit_code = EXIT_INPUT


class OllamaTimeout(SidecarError):
    http_status = 504
    code = "ollama_timeout"


class OllamaFailed(SidecarError):
    """Ollama answered with an error of its own (a 500, an error line in a stream)."""

    http_status = 502
    code = "ollama_error"


class AssistantAnswerInvalid(SidecarError):
    """The model's answer did not match the schema asked for, twice (the first is retried once)."""

    http_status = 502
    code = "assistant_answer_invalid"

"""What the HTTP edge refuses before a handler runs: a body that is not JSON, too large, or of another type, a
method or a plain GET the path does not serve, a missing token, a foreign Host or Origin."""

from __future__ import annotations

from sidecar.errors.base import BadRequest, EXIT_INPUT, Forbidden, SidecarError


class InvalidJson(BadRequest):
    code = "invalid_json"


class UnknownField(BadRequest):
    code = "unknown_field"


class WebSocketRequired(SidecarError):
    """A plain GET of /events: it only answers a WebSocket upgrade."""

    http_status = 426
    code = "websocket_required"
    exit_code = EXIT_INPUT


class MethodNotAllowed(SidecarError):
    """A method the path does not serve; the answer's `Allow` header lists those it does."""

    http_status = 405
    code = "method_not_allowed"
    exit_code = EXIT_INPUT


class PayloadTooLarge(SidecarError):
    http_status = 413
    code = "payload_too_large"
    exit_code = EXIT_INPUT


class UnsupportedMediaType(SidecarError):
    http_status = 415
    code = "unsupported_media_type"
    exit_code = EXIT_INPUT


class Unauthorized(SidecarError):
    http_status = 401
    code = "unauthorized"
    exit_code = EXIT_INPUT


class HostNotAllowed(Forbidden):
    code = "host_not_allowed"


class OriginNotAllowed(Forbidden):
    code = "origin_not_allowed"


class ProjectPathOutside(Forbidden):
    """A project file (a log entry's path, a symlink in raw/) that leads out of the project root."""

    code = "project_path_outside"

"""The browser-proof edge: one middleware that every request meets first, whatever its route (the API,
`/openapi.json`, images, run logs, the `/events` WebSocket upgrade, and a 404).

A page the artist visits in a browser can send requests to 127.0.0.1 (a `fetch` with `text/plain` or
an HTML form needs no CORS preflight, and a WebSocket is never subject to CORS), and a DNS-rebinding page
can even read the answers. The checks, in order, each with its stable code (sidecar/errors.py):

1. `Host` must name the daemon as reached on loopback (`127.0.0.1`, `localhost`, `[::1]`, any port), the
   bound host, or a name in `allowed_hosts`; else 403 `host_not_allowed` (a rebinding page sends its own
   name).
2. An `Origin`, when sent (browsers send it on every cross-origin request, every POST and every
   WebSocket), must be the daemon's own (the studio is served at `/`) or in `allowed_origins`; else 403
   `origin_not_allowed`, for every method. CORS preflights are answered here, for allowed origins only.
3. With a `token` set, `Authorization: Bearer <token>` (compared in constant time), or an open studio
   session's cookie (`sidecar.studio.session`) on a request the browser marks as same-origin
   (`Sec-Fetch-Site`), or, from a browser that sends no fetch metadata, with the daemon's own `Origin`;
   else 401 `unauthorized`. The studio's static files and its one-time login path need neither (they hold
   no data).
4. A request with a body (Content-Length > 0 or chunked) must be `application/json`; else 415
   `unsupported_media_type`, so no form or `text/plain` fetch reaches a handler. A POST without a body
   (`/jobs/{id}/cancel`) needs no Content-Type.

Answers to an allowed cross origin carry `Access-Control-Allow-Origin`. This module owns only these
rules; error bodies come from `SidecarError.to_body`, like every other error.

Clients outside a browser pass by sending `Host: 127.0.0.1:<port>` (any HTTP client does when given
`http://127.0.0.1:<port>`), no `Origin` (or the daemon's own), `Content-Type: application/json` on a body,
and `Authorization: Bearer <token>` when a token is set. aiohttp's test client does all of that by
itself (it talks to `http://127.0.0.1:<port>`).
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass

from aiohttp import web

from sidecar.config import Settings, normalize_origin
from sidecar.errors import HostNotAllowed, OriginNotAllowed, SidecarError, Unauthorized, UnsupportedMediaType
from sidecar.studio.session import COOKIE_NAME, LOGIN_PATH, STATIC_PATH, Sessions

log = logging.getLogger("sidecar.http")

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
# What a page may send cross-origin once allowed: our JSON bodies, the token, the submit's idempotency key.
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key"
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_MAX_AGE = "600"
JSON_TYPE = "application/json"
SESSION_ID = web.RequestKey("studio_session", str)  # set on a request the studio's session let in


@dataclass(frozen=True)
class EdgeRules:
    """The settings the edge checks against, read once when the app is built."""

    hosts: frozenset[str]
    any_host: bool
    origins: frozenset[str]
    any_origin: bool
    token: bytes | None
    port: int
    sessions: Sessions  # the studio's open sessions (shared with its login and sign-out routes)

    @classmethod
    def from_settings(cls, settings: Settings, sessions: Sessions) -> EdgeRules:
        hosts = set(LOOPBACK_NAMES) | {h for h in settings.allowed_hosts if h != "*"}
        bound = settings.host.lower().strip("[]")
        if bound not in WILDCARD_BINDS:
            hosts.add(bound)  # reached by the address it listens on (allow_remote on a LAN address)
        token = settings.token_value
        return cls(hosts=frozenset(hosts), any_host="*" in settings.allowed_hosts,
                   origins=frozenset(o for o in settings.allowed_origins if o != "*"),
                   any_origin="*" in settings.allowed_origins,
                   token=token.encode() if token else None, port=settings.port, sessions=sessions)


def host_name(header: str) -> str | None:
    """The name in a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`), lowercased; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, sep, rest = header[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return name
    name, sep, port = header.partition(":")
    if sep and not port.isdigit():
        return None
    return name or None


def local_port(request: web.Request, default: int) -> int:
    """The port this connection reached (the test server's random one, or the configured one)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        return sockname[1]
    return default


def own_origins(request: web.Request, rules: EdgeRules) -> set[str]:
    """The daemon's own origins: the one the request addressed (scheme + Host, already checked) and the
    three loopback spellings of its port (a studio page opened at localhost calling 127.0.0.1)."""
    port = local_port(request, rules.port)
    own = {f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"}
    host = request.headers.get("Host")
    if host:
        own.add(normalize_origin(f"{request.scheme}://{host}"))
    return own


def check_host(request: web.Request, rules: EdgeRules) -> None:
    header = request.headers.get("Host")
    name = host_name(header) if header else None
    if rules.any_host and name:
        return
    if name is None or name not in rules.hosts:
        raise HostNotAllowed(
            f"This daemon answers only requests addressed to it on loopback (127.0.0.1, localhost, [::1]) or to "
            f"a name in the allowed_hosts setting; Host {header!r} is none of them.",
            {"host": header, "allowedHosts": sorted(rules.hosts)},
        )


def origin_allowed(origin: str, request: web.Request, rules: EdgeRules) -> bool:
    if rules.any_origin:
        return True
    if origin == "null":  # sandboxed frames and file:// pages: never the daemon's own
        return "null" in rules.origins
    normalized = normalize_origin(origin)
    return normalized in rules.origins or normalized in own_origins(request, rules)


# Fetch metadata (`Sec-Fetch-Site`) of a request the page at the daemon's own origin made, or the artist
# typed; a cookie on anything else (an <img> or a link on another page) does not count.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})


def token_exempt(request: web.Request) -> bool:
    """The studio's page, its static files and its one-time login path: no data, no token needed."""
    return request.method in ("GET", "HEAD") and (
        request.path == "/" or request.path.startswith((STATIC_PATH, LOGIN_PATH)))


def studio_session(request: web.Request, rules: EdgeRules) -> bool:
    """Whether the request carries an open studio session's cookie, from the daemon's own page."""
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie or rules.token is None:
        return False
    site = request.headers.get("Sec-Fetch-Site")
    if site is None:
        # A browser without fetch metadata: only the daemon's own Origin (checked already when sent) says
        # the page is ours; an <img> or a link elsewhere sends none, and the cookie alone never counts.
        origin = request.headers.get("Origin")
        if origin is None or normalize_origin(origin) not in own_origins(request, rules):
            return False
    elif site.lower() not in OWN_FETCH_SITES:
        return False
    if not rules.sessions.valid(cookie, rules.token):
        return False
    request[SESSION_ID] = cookie
    return True


def check_token(request: web.Request, rules: EdgeRules) -> None:
    if rules.token is None or token_exempt(request):
        return
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    given = value.strip().encode() if scheme.lower() == "bearer" else b""
    if not given and studio_session(request, rules):
        return
    if not hmac.compare_digest(given, rules.token):
        raise Unauthorized(
            "This daemon needs its token: send `Authorization: Bearer <token>` (the project's own tools read it "
            "from SIDECAR_TOKEN or `token` in the config file; a browser opens the studio with `sidecar studio`)."
            + (" The token sent is not the daemon's." if given else ""),
            {"scheme": "Bearer"},
        )


def check_body_type(request: web.Request) -> None:
    # body_exists is true for Content-Length > 0 and for a chunked body; a POST without one passes.
    if request.body_exists and request.content_type != JSON_TYPE:
        raise UnsupportedMediaType(
            f"Request bodies must be JSON sent as Content-Type: {JSON_TYPE}; this one is "
            f"{request.headers.get('Content-Type') or 'untyped'} (curl: -H 'content-type: {JSON_TYPE}').",
            {"contentType": request.headers.get("Content-Type"), "expected": JSON_TYPE},
        )


def cors_headers(origin: str) -> dict[str, str]:
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Expose-Headers": "Allow, WWW-Authenticate"}


def preflight_response(origin: str) -> web.Response:
    return web.Response(status=204, headers={
        **cors_headers(origin), "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
        "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS, "Access-Control-Max-Age": CORS_MAX_AGE,
    })


def refusal(request: web.Request, exc: SidecarError) -> web.Response:
    log.warning("refused %s %s: %d %s (Host %r, Origin %r)", request.method, request.path, exc.http_status,
                exc.code, request.headers.get("Host"), request.headers.get("Origin"))
    response = web.json_response(exc.to_body(), status=exc.http_status)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="sidecar"'
    return response


def edge_middleware(settings: Settings, sessions: Sessions):
    """The middleware for an app built from `settings` (outermost: it runs before the error mapping), taking
    the studio's cookie for the `sessions` its login route opens."""
    rules = EdgeRules.from_settings(settings, sessions)

    @web.middleware
    async def edge(request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        try:
            check_host(request, rules)
            if origin is not None and not origin_allowed(origin, request, rules):
                raise OriginNotAllowed(
                    f"Requests from web pages on {origin} are refused: only the daemon's own pages and the "
                    "origins in the allowed_origins setting (SIDECAR_ALLOWED_ORIGINS) may call it.",
                    {"origin": origin},
                )
        except SidecarError as exc:
            return refusal(request, exc)
        cross = origin is not None and normalize_origin(origin) != normalize_origin(
            f"{request.scheme}://{request.headers.get('Host', '')}")
        if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
            return preflight_response(origin)  # a preflight carries no token: browsers never send one
        try:
            check_token(request, rules)
            check_body_type(request)
        except SidecarError as exc:
            response: web.StreamResponse = refusal(request, exc)
        else:
            response = await handler(request)
        if cross and not response.prepared:  # a WebSocket is already prepared; CORS does not apply to it
            response.headers.update(cors_headers(origin))  # type: ignore[arg-type]
        return response

    return edge

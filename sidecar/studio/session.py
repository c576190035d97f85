"""How a browser carries the daemon's token: a browser cannot set `Authorization` on a navigation, an
`<img>` or a WebSocket, so `sidecar studio` asks the daemon (with the token) for a one-time login path,
opens it, and the daemon answers with an HttpOnly, SameSite=Strict cookie and a redirect to `/`.

The cookie holds a value derived from the token (HMAC), not the token itself: it opens the HTTP API to
the studio only, and changing the token ends every studio session. The edge still applies the Host and
Origin rules to a request carrying the cookie (a page on another port of 127.0.0.1 is the same *site*,
so the browser sends it the cookie: only the Origin check stops it), and refuses a cookie on a request
the browser marks as coming from another origin (`Sec-Fetch-Site`), such as an `<img>` on another page.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE_NAME = "sidecar_studio"
LOGIN_TTL = 120.0  # seconds a login path stays valid: long enough for a browser to start
LOGIN_PATH = "/studio/login/"
STATIC_PATH = "/studio/static/"
MAX_PENDING = 64  # codes issued and not yet used; the oldest go first


def session_value(token: bytes) -> str:
    """The cookie's value for this token."""
    return hmac.new(token, b"plasma-sidecar studio session v1", hashlib.sha256).hexdigest()


def cookie_header(token: bytes) -> str:
    """The Set-Cookie value: HttpOnly (no script reads it), SameSite=Strict (no cross-site request
    carries it), for the whole daemon, until the browser closes."""
    return f"{COOKIE_NAME}={session_value(token)}; Path=/; HttpOnly; SameSite=Strict"


@dataclass
class LoginCodes:
    """One-time login codes, each valid `ttl` seconds and for one use. Kept in memory on the app: a
    restarted daemon forgets them, and `sidecar studio` asks again."""

    ttl: float = LOGIN_TTL
    _pending: dict[str, float] = field(default_factory=dict)

    def issue(self) -> str:
        now = time.monotonic()
        self._pending = {c: t for c, t in self._pending.items() if t > now}
        while len(self._pending) >= MAX_PENDING:
            self._pending.pop(next(iter(self._pending)))
        code = secrets.token_urlsafe(24)
        self._pending[code] = now + self.ttl
        return code

    def redeem(self, code: str) -> bool:
        """True once for a code issued less than `ttl` seconds ago."""
        expires = self._pending.pop(code, None)
        return expires is not None and expires > time.monotonic()

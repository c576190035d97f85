"""How a browser carries the daemon's token: a browser cannot set `Authorization` on a navigation, an
`<img>` or a WebSocket, so `sidecar studio` asks the daemon (with the token) for a one-time login path,
opens it, and the daemon answers with an HttpOnly, SameSite=Strict session cookie and a redirect to `/`.

The cookie holds a random session id, not the token nor anything derived from it: each session expires
(`SESSION_TTL`), ends on sign-out (`POST /studio/logout`, the studio's Sign out button), and is bound to
the token it was opened under (a digest of it), so a changed token ends every session. Sessions outlive a
restart of the daemon (a studio left open reconnects and goes on, as its offline banner promises): they
are kept in `<data_dir>/studio-sessions.json` (owner-only), which holds only digests of the ids and of the
token, so a copy of the data dir opens nothing; a restart with another token still ends them all.

The edge still applies the Host and Origin rules to a request carrying the cookie (a page on another port
of 127.0.0.1 is the same *site*, so the browser sends it the cookie: only the Origin check stops it). It
takes the cookie only on a request the browser marks as the daemon's own (`Sec-Fetch-Site` same-origin or
none); a browser that sends no fetch metadata must send the daemon's own `Origin` instead, so an `<img>`
or a link on another page never counts.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.atomic import write_with

log = logging.getLogger(__name__)

COOKIE_NAME = "sidecar_studio"
LOGIN_TTL = 120.0  # seconds a login path stays valid: long enough for a browser to start
LOGIN_PATH = "/studio/login/"
STATIC_PATH = "/studio/static/"
LOGOUT_PATH = "/studio/logout"
MAX_PENDING = 64  # codes issued and not yet used; the oldest go first
SESSION_TTL = 12 * 3600.0  # seconds a studio session lasts: a working day, then `sidecar studio` again
MAX_SESSIONS = 64  # open sessions; the oldest is ended first


def token_digest(token: bytes) -> str:
    """What a session remembers of the token it was opened under (never the token itself)."""
    return hashlib.sha256(b"plasma-sidecar studio session v2\0" + token).hexdigest()


def cookie_header(session_id: str, max_age: float = SESSION_TTL) -> str:
    """The Set-Cookie value: HttpOnly (no script reads it), SameSite=Strict (no cross-site request
    carries it), for the whole daemon, gone from the browser when the session expires."""
    return f"{COOKIE_NAME}={session_id}; Path=/; Max-Age={int(max_age)}; HttpOnly; SameSite=Strict"


def clear_cookie_header() -> str:
    return f"{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"


def _id_digest(session_id: str) -> str:
    """What is kept of a session id: its digest (the cookie holds the id; the file never does)."""
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass
class Sessions:
    """The studio's open sessions: random ids, each expiring `ttl` seconds after sign-in (wall clock, so
    the deadline holds across restarts), ended by sign-out, and valid only under the token they were
    opened with. Kept in `path` when given (see the module's doc), else in memory only."""

    ttl: float = SESSION_TTL
    clock: Callable[[], float] = time.time
    path: Path | None = None
    _open: dict[str, tuple[float, str]] = field(default_factory=dict)  # id digest -> (expires, token digest)

    def __post_init__(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        try:
            kept = json.loads(self.path.read_text(encoding="utf-8"))
            now = self.clock()
            self._open = {str(k): (float(v[0]), str(v[1])) for k, v in kept.items() if float(v[0]) > now}
        except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
            # Unreadable: every session is over, which only means signing in again.
            log.warning("studio sessions in %s are unreadable (%s): the studio signs in again", self.path, exc)
            self._open = {}

    def _keep(self) -> None:
        if self.path is None:
            return
        data = json.dumps({k: list(v) for k, v in self._open.items()}).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_with(self.path, lambda f: (os.fchmod(f.fileno(), 0o600), f.write(data)))
        except OSError as exc:  # a session not kept ends at the next restart: not worth failing a sign-in
            log.warning("could not keep the studio's sessions in %s: %s", self.path, exc)

    def open(self, token: bytes) -> str:
        now = self.clock()
        self._open = {s: v for s, v in self._open.items() if v[0] > now}
        while len(self._open) >= MAX_SESSIONS:
            self._open.pop(next(iter(self._open)))
        session_id = secrets.token_urlsafe(32)
        self._open[_id_digest(session_id)] = (now + self.ttl, token_digest(token))
        self._keep()
        return session_id

    def valid(self, session_id: str, token: bytes) -> bool:
        """True for an open, unexpired session opened under this token."""
        key = _id_digest(session_id)
        found = self._open.get(key)
        if found is None:
            return False
        expires, digest = found
        if expires <= self.clock() or not hmac.compare_digest(digest, token_digest(token)):
            self._open.pop(key, None)
            self._keep()
            return False
        return True

    def close(self, session_id: str) -> bool:
        """End a session (sign-out); True if it was open."""
        closed = self._open.pop(_id_digest(session_id), None) is not None
        if closed:
            self._keep()
        return closed


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

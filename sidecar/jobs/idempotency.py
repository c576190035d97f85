"""`Idempotency-Key` on `POST /jobs`: a client that retries a submit (its connection dropped, the
daemon was killed mid-burst) gets the job its first try made, not a second one.

A key is claimed together with the job it made, in one SQLite transaction (see `JobStore.insert`), so
the claim survives a restart exactly when the job does. The same key with the same body (compared as
parsed JSON, key order aside) answers the first job; with a different body it is refused
`idempotency_key_reused`. Keys expire after `KEY_TTL` (as Stripe's do). Submits carrying the same
key are serialized here, so two racing retries cannot both create a job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sidecar.errors import IdempotencyKeyReused
from sidecar.jobs.store import IdempotencyClaim, JobStore

KEY_TTL = dt.timedelta(days=1)
MAX_KEY_LENGTH = 255


def body_digest(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _iso(moment: dt.datetime) -> str:
    # The store's timestamp format (sqlite_store.now_iso), so claims compare as strings.
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class IdempotencyKeys:
    def __init__(self, store: JobStore, ttl: dt.timedelta = KEY_TTL):
        self.store = store
        self.ttl = ttl
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, holders + waiters)

    def claim(self, key: str, body: Any) -> IdempotencyClaim:
        cutoff = _iso(dt.datetime.now(dt.timezone.utc) - self.ttl)
        return IdempotencyClaim(key=key, body_sha256=body_digest(body), expired_before=cutoff)

    @asynccontextmanager
    async def holding(self, key: str) -> AsyncIterator[None]:
        """One submit per key at a time (the lock is dropped once nobody waits on it)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def previous(self, claim: IdempotencyClaim) -> str | None:
        """The id of the job this key already made with this body; None for a fresh (or expired) key."""
        found = await self.store.claimed(claim.key, claim.expired_before)
        if found is None:
            return None
        digest, job_id = found
        if digest != claim.body_sha256:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {claim.key!r} was used for job {job_id} with a different body; send a new "
                "key for a new job.", {"idempotencyKey": claim.key, "jobId": job_id})
        return job_id

"""Prompts to interrupt on a backend when it answers again, kept in the job database.

A job taken away from a backend (it stopped answering while it ran the job, or it stayed away after a
daemon restart) re-runs elsewhere; its prompt may still sit in that server's queue, or resume there
after a network blip. So the prompt id is remembered per backend and, when the backend answers again,
deleted from its queue and interrupted before it takes new work: the page never renders twice. The list
outlives a daemon restart (a table next to the jobs, sharing their connection), or a daemon stopped
between the hand-over and the backend's return would leave that server rendering a prompt nobody
collects, holding the GPU before the next page.

An entry is written before the job's own change (re-queued without a prompt id), so a crash between the
two leaves the job still holding that prompt id: `load` then skips it (the job reconciles it instead).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sidecar.sqlite_store import SqliteStore, now_iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS abandoned_prompts (  -- prompts to interrupt on a backend when it answers again
    backend TEXT NOT NULL,
    prompt_id TEXT NOT NULL,
    job_id TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (backend, prompt_id)
);
"""


@dataclass(frozen=True)
class Abandoned:
    backend: str
    prompt_id: str
    job_id: str | None


class AbandonedStore(SqliteStore):
    schema = SCHEMA

    async def add(self, item: Abandoned) -> None:
        await self._call(self._exec, "INSERT OR REPLACE INTO abandoned_prompts (backend, prompt_id, job_id, "
                                     "created_at) VALUES (?, ?, ?, ?)",
                         (item.backend, item.prompt_id, item.job_id, now_iso()))

    async def remove(self, backend: str, prompt_id: str) -> None:
        await self._call(self._exec, "DELETE FROM abandoned_prompts WHERE backend = ? AND prompt_id = ?",
                         (backend, prompt_id))

    async def load(self) -> dict[str, list[str]]:
        """Backend name -> prompt ids, oldest first; without those a queued or running job still holds."""
        rows = await self._call(
            self._exec,
            "SELECT a.backend, a.prompt_id FROM abandoned_prompts a WHERE NOT EXISTS (SELECT 1 FROM jobs j "
            "WHERE j.prompt_id = a.prompt_id AND j.status IN ('queued', 'running')) ORDER BY a.created_at")
        out: dict[str, list[str]] = defaultdict(list)
        for row in rows:
            out[row["backend"]].append(row["prompt_id"])
        return dict(out)

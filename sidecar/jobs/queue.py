"""Which queued job runs next, and whether anything may start at all (pause).

The order, one rule for the live queue and for a restart:

1. a job the backend lost and that is re-queued once (`requeue_head`) runs first;
2. then jobs submitted with `front`: the latest fronted submission first (a newer `front` jumps ahead
   of an older one), the jobs of one submission (a group) in their own order;
3. then everything else, first in first out.

Each job's place is a `Place`, persisted with the job (`front_rank` column, the store's `seq`), so a
restart rebuilds the same order from the rows. While the queue is paused `take` returns only a job of
the first band (one that was already running: it finishes) and nothing new starts; the pause itself
is persisted by the runner.

`next_job(eligible)` is the one function that decides: a dispatcher over several backends asks it for
the first job a given backend may take. This module owns no I/O and no jobs, only ids and places.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

HEAD, FRONT, FIFO = 0, 1, 2  # bands, in the order they run
ORDER_SHOWN = 100  # waiting job ids a queue snapshot names (GET /queue, queue.* events)


@dataclass(frozen=True)
class QueueChanged:
    """Published on the event bus when the queue is paused or resumed (`queue.paused`, `queue.resumed`):
    the queue as it was at that moment, so a listener needs no second request."""

    type: str
    paused: bool
    paused_at: str | None
    depth: int
    running_job: str | None
    order: tuple[str, ...]


@dataclass(frozen=True, order=True)
class Place:
    """Where a job sits: compared as (band, rank, seq). `rank` orders fronted submissions (more negative
    = fronted later = runs earlier); `seq` is insertion order (the store's row number)."""

    band: int
    rank: int
    seq: int

    @classmethod
    def of(cls, seq: int, front_rank: int | None) -> Place:
        """A stored job's place: fronted (`front_rank` set) or FIFO by its row number."""
        return cls(FRONT, front_rank, seq) if front_rank is not None else cls(FIFO, 0, seq)


class JobQueue:
    def __init__(self) -> None:
        self._places: dict[str, Place] = {}
        self.paused = False
        self.paused_at: str | None = None

    # -- contents
    def __len__(self) -> int:
        return len(self._places)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._places

    def __iter__(self) -> Iterator[str]:
        """Job ids in the order they would run."""
        return iter(sorted(self._places, key=self._places.__getitem__))

    def add(self, job_id: str, place: Place) -> None:
        self._places[job_id] = place

    def next_front_rank(self) -> int:
        """The rank for a new fronted submission: ahead of every fronted job still waiting."""
        ranks = [p.rank for p in self._places.values() if p.band == FRONT]
        return min(ranks, default=0) - 1

    def requeue_head(self, job_id: str) -> None:
        """A job the backend lost: it runs again before anything else (it was already running)."""
        heads = [p.seq for p in self._places.values() if p.band == HEAD]
        self._places[job_id] = Place(HEAD, 0, min(heads, default=0) - 1)

    def remove(self, job_id: str) -> bool:
        return self._places.pop(job_id, None) is not None

    def remove_all(self, job_ids: Iterable[str]) -> list[str]:
        return [j for j in job_ids if self.remove(j)]

    # -- what runs next
    def next_job(self, eligible: Callable[[str], bool] | None = None) -> str | None:
        """The id of the job that runs next (the first in order that `eligible` accepts), without
        taking it; None when none waits, or when paused and none was already running."""
        for job_id in self:
            if self.paused and self._places[job_id].band != HEAD:
                return None
            if eligible is None or eligible(job_id):
                return job_id
        return None

    def runnable(self) -> list[str]:
        """The ids that may start now, in order: all of them, or while paused only those already running
        (a dispatcher over several backends plans over these)."""
        ids = list(self)
        return [j for j in ids if self._places[j].band == HEAD] if self.paused else ids

    def take(self, eligible: Callable[[str], bool] | None = None) -> str | None:
        job_id = self.next_job(eligible)
        if job_id is not None:
            del self._places[job_id]
        return job_id

    def pause(self, at: str) -> None:
        if not self.paused:
            self.paused, self.paused_at = True, at

    def resume(self) -> None:
        self.paused, self.paused_at = False, None

    def changed(self, kind: str, running_job: str | None) -> QueueChanged:
        """A snapshot of the queue now, as the event of `kind` carries it."""
        return QueueChanged(kind, self.paused, self.paused_at, len(self), running_job,
                            tuple(list(self)[:ORDER_SHOWN]))

"""Routing: which backends a job may use (`where`), which of those admit it, and which one runs it.

`where` is `local` (this machine's backends), `any`, a tag or a backend name. Among the backends it
allows, only those whose profile, models and node types admit the job count (`admission.py`); a job
none admits is refused at submit with each backend's reason.

The choice is made when a backend is free to take work, over the queue in its order: every queued
job is planned onto the backend where it would end soonest (the time until that backend is free, its
queue so far included, plus the job's steps times the backend's measured seconds per step, plus a
checkpoint switch where another checkpoint is loaded), so a loaded checkpoint and a short queue both
count, and a slow backend does not take the chapter's last page from a fast one about to be free.
A free backend takes the first job planned onto it. The reason recorded with the job says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.backends.admission import Needs, Verdict
from sidecar.backends.member import CHECKPOINT_SWITCH_SECONDS, PRIOR_SECONDS_PER_STEP, Member
from sidecar.errors import FamilyNotSupported, InvalidField, NoBackendAdmits

SPECIAL = {"local": "this machine's backends", "any": "every backend"}


def resolve_where(where: str, members: Iterable[Member]) -> list[Member]:
    members = list(members)
    if where == "any":
        return members
    if where == "local":
        return [m for m in members if m.local]
    named = [m for m in members if m.name == where]
    if named:
        return named
    tagged = [m for m in members if where in m.tags]
    if tagged:
        return tagged
    known = sorted({*SPECIAL, *(m.name for m in members), *(t for m in members for t in m.tags)})
    raise InvalidField(f"where: {where!r} names no backend or tag; known: {', '.join(known)}.",
                       {"field": "where", "value": where, "allowed": known})


def admit(where: str, needs: Needs, members: Iterable[Member],
          local_models: dict[str, frozenset[str]]) -> list[Verdict]:
    """Every allowed backend's verdict; `no_backend_admits` (400) when none admits the job, and
    `family_not_supported` when none of them runs its family."""
    members = list(members)
    allowed = resolve_where(where, members)
    verdicts = [m.judge(needs, local_models) for m in allowed]
    if not allowed:
        raise NoBackendAdmits(f"where {where!r}: no backend is configured there (no local backend in "
                              "[[backends]]); name another with `where`.", {"where": where, "backends": {}})
    if not any(v.admitted for v in verdicts):
        reasons = {v.backend: v.reason for v in verdicts}
        _refuse_family(where, needs, allowed, members, reasons)
        listed = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        raise NoBackendAdmits(f"No backend admits this job (where {where!r}): {listed}.",
                              {"where": where, "backends": reasons})
    return verdicts


def _runs_family(member: Member, family: str) -> bool:
    engine = getattr(member.backend, "families", None)  # the embedded engine: SD 1.5 and SDXL
    return member.profile.allows(family) and (engine is None or family in engine)


def _refuse_family(where: str, needs: Needs, allowed: list[Member], members: list[Member],
                   reasons: dict[str, str | None]) -> None:
    """When no backend `where` allows runs the job's family at all: `family_not_supported`, naming the
    backends that do (another `where`), rather than each one's reason alone."""
    family = needs.family
    if family is None or any(_runs_family(m, family) for m in allowed):
        return
    elsewhere = [m.name for m in members if _runs_family(m, family)]
    hint = (f"backends that run it: {', '.join(elsewhere)} (name one with `where`)" if elsewhere
            else "no configured backend runs it")
    raise FamilyNotSupported(f"No backend where {where!r} allows runs {family} models; {hint}.",
                             {"family": family, "where": where, "backends": elsewhere, "reasons": reasons})


@dataclass(frozen=True)
class Queued:
    """A queued job as the planner sees it. `pinned`: only this backend may take it (a job it was
    running when the daemon stopped is reconciled there)."""

    job_id: str
    where: str
    needs: Needs
    pinned: str | None = None


@dataclass(frozen=True)
class Pick:
    job_id: str
    reason: str
    verdict: Verdict


@dataclass(frozen=True)
class Plan:
    picks: dict[str, Pick]  # backend name -> the first job planned onto it
    queued: dict[str, int]  # backend name -> jobs planned onto it
    stuck: dict[str, dict[str, str]]  # job id -> reasons, for a job no backend (up or down) admits any more


def plan(queue: Iterable[Queued], members: list[Member], local_models: dict[str, frozenset[str]],
         now: float | None = None) -> Plan:
    now = time.monotonic() if now is None else now
    measured = [m.seconds_per_step for m in members if m.seconds_per_step is not None]
    for m in members:  # a backend that has run nothing yet is guessed as fast as the others on average
        m.prior_speed = sum(measured) / len(measured) if measured else PRIOR_SECONDS_PER_STEP
    free_at = {m.name: now + m.busy_for(now) for m in members if m.available}
    loaded = {m.name: m.loaded_checkpoint for m in members}
    picks: dict[str, Pick] = {}
    counts: dict[str, int] = {m.name: 0 for m in members}
    stuck: dict[str, dict[str, str]] = {}
    for item in queue:
        try:
            allowed = resolve_where(item.where, members)
        except InvalidField as exc:  # a backend or tag removed from the configuration since
            stuck[item.job_id] = {"where": exc.message}
            continue
        if item.pinned is not None:
            allowed = [m for m in allowed if m.name == item.pinned] or [m for m in members if m.name == item.pinned]
        verdicts = {m.name: m.judge(item.needs, local_models) for m in allowed}
        admitting = [m for m in allowed if verdicts[m.name].admitted]
        if not admitting:
            if not any(m.caps is None for m in allowed):  # all known, none admits: it never will
                stuck[item.job_id] = {name: v.reason or "" for name, v in verdicts.items()}
            continue
        options = []
        for m in admitting:
            if m.name not in free_at:
                continue
            switch = loaded[m.name] == item.needs.checkpoint
            cost = item.needs.steps * m.speed + (0.0 if switch else CHECKPOINT_SWITCH_SECONDS)
            options.append((free_at[m.name] + cost, not switch, m.name, cost, m))
        if not options:
            continue  # every backend that admits it is down or busy with training: it waits
        options.sort(key=lambda o: o[:3])
        finish, _, name, cost, chosen = options[0]
        free_at[name] = finish
        counts[name] += 1
        if name not in picks:
            picks[name] = Pick(item.job_id, _reason(chosen, options, now, item.needs, item.pinned),
                               verdicts[name])
        loaded[name] = item.needs.checkpoint
    return Plan(picks, counts, stuck)


def _reason(chosen: Member, options: list[tuple], now: float, needs: Needs, pinned: str | None) -> str:
    if pinned is not None:
        return "it was running this job when the daemon stopped: reconciled there"
    finish = options[0][0] - now
    speed = f"{chosen.speed:.2f} s/step" + ("" if chosen.seconds_per_step is not None else " (not yet measured)")
    loaded = "checkpoint loaded" if chosen.loaded_checkpoint == needs.checkpoint else "checkpoint not loaded"
    head = f"soonest end, in ~{finish:.0f} s ({needs.steps} steps x {speed}, {loaded})"
    others = [f"{o[2]} ~{o[0] - now:.0f} s" for o in options[1:4]]
    return head + (f"; then {', '.join(others)}" if others else "; the only free backend that admits it")

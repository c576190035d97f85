"""What one sync moves, decided from three states of each file: the source's, the target's, and both sides'
at the last sync (the local record). Pure: no store, no disk.

A push has the local folder as source and the store as target; a pull the other way round. For each file:

- the same on both sides: nothing to do;
- changed at the source only (the target is as last synced): sent; deleted at the source: deleted at the
  target with `--delete`, else kept there;
- changed at the target only: left alone (a push never undoes what another machine pushed; pull it);
  only at the target and never synced: deleted with `--delete` (the target then mirrors the source), else kept;
- changed on both sides since the last sync (or on both sides, different, with no sync recorded): a
  conflict: neither side is touched, and the sync ends non-zero naming it. Where one side's change is a
  deletion nothing can be lost: a file deleted at the target is sent again, a file deleted at the source
  but changed at the target is left there (even with `--delete`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.storage.manifest import Entry


@dataclass
class Plan:
    send: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # only at the target: needs --delete to go
    newer_there: list[str] = field(default_factory=list)  # changed at the target only: not overwritten
    conflicts: list[str] = field(default_factory=list)
    same: list[str] = field(default_factory=list)

    @property
    def moves(self) -> bool:
        return bool(self.send or self.delete)


def _sha(entry: Entry | None) -> str | None:
    return entry.sha256 if entry is not None else None


def plan_sync(source: dict[str, Entry], target: dict[str, Entry], base: dict[str, Entry], *,
              delete: bool, only: set[str] | None = None) -> Plan:
    plan = Plan()
    for path in sorted(set(source) | set(target) | set(base)):
        if only is not None and path not in only:
            continue
        s, t, b = _sha(source.get(path)), _sha(target.get(path)), _sha(base.get(path))
        if s == t:
            if s is not None:
                plan.same.append(path)
            continue
        source_changed, target_changed = s != b, t != b
        if source_changed and target_changed:
            if t is None:
                plan.send.append(path)  # deleted there, changed here: sending it back loses nothing
            elif s is None:
                plan.newer_there.append(path)  # deleted here, changed there: never deleted, even with --delete
            else:
                plan.conflicts.append(path)
        elif source_changed:
            if s is not None:
                plan.send.append(path)
            else:
                (plan.delete if delete else plan.kept).append(path)
        elif s is None and b is None:
            (plan.delete if delete else plan.kept).append(path)
        else:
            plan.newer_there.append(path)
    return plan


def next_base(base: dict[str, Entry], source: dict[str, Entry], plan: Plan, done: set[str]) -> dict[str, Entry]:
    """The record after the sync: what now agrees on both sides. Files not done (conflicts, left alone, an
    interrupted move) keep their old record, so the next sync decides about them the same way."""
    out = dict(base)
    for path in plan.same:
        out[path] = source[path]
    for path in plan.send:
        if path in done:
            out[path] = source[path]
    for path in plan.delete:
        if path in done:
            out.pop(path, None)
    return out

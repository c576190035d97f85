"""One line of the doctor's report: what was checked, how it stands, and the fix when it is not ok. Every
check module (the stack's, the assistants', remote training's) returns these; `sidecar doctor` prints
them and `GET /doctor` answers them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = False


def needed(required: bool, ok: bool, name: str, detail_ok: str, detail_bad: str, fix: str) -> Check:
    """ok, or (when not) `fail` for what the stack requires and `warn` for what it can do without."""
    if ok:
        return Check(name, "ok", detail_ok, required=required)
    return Check(name, "fail" if required else "warn", detail_bad, fix, required)

"""The rented backends' start-up reaper: nothing a killed daemon rented is left billing.

From `rented-backends.json` (`rentals.py`): every rental that had not ended is destroyed by its instance
id, and every instance on the vast.ai account carrying one of the labels recorded there (rented a moment
before the daemon died, its id never recorded) is destroyed too. An instance labelled like ours but not
recorded here belongs to another daemon (another data dir) and is left alone. Each is logged and its
record says so, with its cost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from sidecar.backends.rentals import LABEL_PREFIX, RentalRecord
from sidecar.errors import SidecarError
from sidecar.remote.state import RemoteState

if TYPE_CHECKING:  # the provider layer brings asyncssh: imported when something is rented or reaped
    from sidecar.remote.provider import Provider

log = logging.getLogger("sidecar.backends")

DESTROY_TRIES = 3


def unfinished(st: RemoteState) -> bool:
    return st.live or st.state in ("searching", "creating")


async def destroy(provider: Provider, instance_id: str) -> str | None:
    """None when destroyed (or already gone); else the last error, after a few tries."""
    error = None
    for attempt in range(DESTROY_TRIES):
        try:
            await provider.destroy(instance_id)
            return None
        except SidecarError as exc:
            error = exc.message
        except OSError as exc:
            error = str(exc)
        await asyncio.sleep(0.5 * (attempt + 1))
    return error


async def reap(provider: Provider, records: list[RentalRecord], active: set[str]) -> list[dict[str, Any]]:
    """Destroy the instances `records` left; `active`: names this daemon rents now (never touched)."""
    reaped: list[dict[str, Any]] = []
    labels = {r.st.label: r for r in records if r.st.label}
    for r in records:
        if unfinished(r.st) and r.st.instance_id and r.spec.name not in active:
            if await _reap_one(provider, r, r.st.instance_id):
                reaped.append({"backend": r.spec.name, "instance": r.st.instance_id})
    try:
        instances = await provider.list_instances()
    except (SidecarError, OSError) as exc:
        log.warning("reaper: cannot list vast.ai instances (%s)", getattr(exc, "message", exc))
        instances = []
    for inst in instances:
        r = labels.get(inst.label)
        if r is None:
            if inst.label and inst.label.startswith(LABEL_PREFIX):
                log.info("reaper: instance %s (%s) is not one this daemon recorded: left alone", inst.id, inst.label)
            continue
        if inst.state == "gone" or r.spec.name in active or (r.st.instance_id == inst.id and not unfinished(r.st)):
            continue
        if await _reap_one(provider, r, inst.id):
            reaped.append({"backend": r.spec.name, "instance": inst.id})
    for r in records:  # a record that never got an instance: nothing was rented
        if r.st.state in ("searching", "creating") and r.spec.name not in active:
            r.st.state, r.st.message = "failed", "the daemon stopped before an instance was rented"
    return reaped


async def _reap_one(provider: Provider, r: RentalRecord, instance_id: str) -> bool:
    error = await destroy(provider, instance_id)
    if error is not None:
        log.error("reaper: destroying instance %s of rented backend %s failed (%s); tried again at the next "
                  "start", instance_id, r.spec.name, error)
        return False
    if r.st.instance_id in (None, instance_id):
        r.st.instance_id = instance_id
        r.st.released()
    r.st.message = (f"destroyed by the reaper at daemon start: the daemon stopped while it was rented "
                    f"(cost ${r.st.cost():.4f})")
    log.warning("reaper: instance %s of rented backend %s was left by a daemon that stopped: destroyed",
                instance_id, r.spec.name)
    return True

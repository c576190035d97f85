"""The reaper: at daemon start, no machine of ours is left billing for a run that is no longer active.

Two sweeps, both by the runs in this daemon's database (an instance labelled with a run id we do not know
belongs to another daemon and is left alone):
1. runs whose recorded remote state is still live (the daemon was killed, or a destroy failed) but that are
   not queued or running now: their instance is destroyed;
2. the providers' own lists (vast.ai's instances, the SSH host's run folders with a live trainer): every
   instance labelled with one of our runs that is not the instance an active run uses is destroyed. This
   catches an instance rented a moment before the daemon died, before it was recorded.
Each one is logged and added to its run's warnings, with its cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sidecar.config import Settings
from sidecar.errors import SidecarError
from sidecar.remote.provider import Provider, run_of
from sidecar.remote.providers import provider_for
from sidecar.remote.shell import ConnectionLost
from sidecar.remote.state import RemoteState
from sidecar.training.spec import TrainSpec
from sidecar.training.store import RunRecord, TrainingStore

log = logging.getLogger("sidecar.training.reaper")

KeepFn = Callable[[], dict[str, tuple[str | None, str | None]]]  # run id -> (instance id, remote state)


async def reap(settings: Settings, store: TrainingStore, keep: KeepFn) -> list[dict[str, Any]]:
    runs = {r.id: r for r in await store.list(None, limit=5000) if r.engine == "remote"}
    reaped: list[dict[str, Any]] = []
    providers: dict[tuple, Provider] = {}
    for run in runs.values():
        st = RemoteState.from_dict(run.remote)
        if st is None or not st.live or run.id in keep():
            continue
        provider = _provider(settings, run, providers)
        if provider is not None and await _destroy(provider, st.instance_id or "", run.id):
            st.released()
            st.message = f"destroyed by the reaper at daemon start (cost ${st.cost():.2f})"
            await _report(store, run, st, provider.name)
            reaped.append({"runId": run.id, "instance": run.remote and run.remote.get("instance_id")})
    for provider in _listing_providers(settings, runs, providers):
        try:
            instances = await provider.list_instances()
        except (SidecarError, ConnectionLost) as exc:
            log.warning("reaper: cannot list %s instances: %s", provider.name, exc)
            continue
        for inst in instances:
            run_id = run_of(inst.label)
            if run_id is None or inst.state == "gone":
                continue
            if run_id not in runs:
                log.info("reaper: %s instance %s is labelled for run %s, not one of this daemon's: left alone",
                         provider.name, inst.id, run_id)
                continue
            kept = keep().get(run_id)
            if kept is not None and (kept[0] == inst.id or kept[1] in (None, "searching", "creating", "queued")):
                continue  # the instance an active run uses, or one it is renting right now
            if await _destroy(provider, inst.id, run_id):
                run = runs[run_id]
                st = RemoteState.from_dict(run.remote) or RemoteState(provider=provider.name)
                if st.instance_id == inst.id:
                    st.released()
                st.message = f"instance {inst.id} destroyed by the reaper at daemon start"
                await _report(store, run, st, provider.name)
                reaped.append({"runId": run_id, "instance": inst.id})
    return reaped


def _provider(settings: Settings, run: RunRecord, cache: dict[tuple, Provider]) -> Provider | None:
    resolved = TrainSpec.from_dict(run.spec).remote or {}
    key = (resolved.get("provider"), resolved.get("host"), resolved.get("port"), resolved.get("server_url"))
    if key not in cache:
        try:
            cache[key] = provider_for(settings.remote, resolved)
        except (SidecarError, ValueError) as exc:
            log.warning("reaper: cannot reach the %s provider of run %s: %s", resolved.get("provider"), run.id,
                        getattr(exc, "message", exc))
            return None
    return cache[key]


def _listing_providers(settings: Settings, runs: dict[str, RunRecord], cache: dict[tuple, Provider]):
    """One provider per place our runs trained: the configured vast.ai account and every SSH host used."""
    seen: set[tuple] = set()
    for run in runs.values():
        resolved = TrainSpec.from_dict(run.spec).remote or {}
        key = (resolved.get("provider"), resolved.get("host"), resolved.get("port"), resolved.get("server_url"))
        if key in seen:
            continue
        seen.add(key)
        provider = _provider(settings, run, cache)
        if provider is not None:
            yield provider


async def _destroy(provider: Provider, instance_id: str, run_id: str) -> bool:
    try:
        await provider.destroy(instance_id)
    except (SidecarError, ConnectionLost) as exc:
        log.warning("reaper: destroying %s instance %s of run %s failed: %s (tried again at the next start)",
                    provider.name, instance_id, run_id, getattr(exc, "message", exc))
        return False
    log.warning("reaper: %s instance %s of run %s was still there with the run no longer active: destroyed",
                provider.name, instance_id, run_id)
    return True


async def _report(store: TrainingStore, run: RunRecord, st: RemoteState, provider: str) -> None:
    run.remote = st.to_dict()
    await store.set_remote(run.id, run.remote)
    note = f"{time.strftime('%Y-%m-%d %H:%M')}: {st.message} ({provider})"
    if note not in run.warnings:
        run.warnings.append(note)
        await store.update(run.id, warnings=list(run.warnings))

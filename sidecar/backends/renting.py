"""Rented ComfyUIs: a GPU on vast.ai that runs ComfyUI, joins the pool while it is wanted, and is destroyed.

`Renter.rent(spec)` (a `[[backends]] kind = "vast"` table, or the flags of `sidecar backends rent`) runs,
in the background: search offers under the limits and choose the cheapest fitting (`remote/plan.py`);
record the rental with the label it is created under (`rentals.py`: a daemon killed from here on leaves
what the reaper needs); create the instance from vast.ai's ComfyUI image; wait until it runs; open an SSH
local port forward to its ComfyUI (`tunnel.py`; no port of the instance is ever published) and wait until
ComfyUI answers through it; then it joins the pool as a `comfyui rented` member (profile from its
table, device from its `/system_stats` at each probe; models it lacks are copied to it over SFTP, checked
by hash, as for any backend with an SSH target). The whole start is bounded by `start_timeout`: an
instance that is not answering by then is destroyed, so the money it can cost is bounded too.

While it serves, every `rent_check_interval` seconds: idle for `idle_minutes`, its cost at
`max_total_cost` or its time at `max_hours`, or vast.ai no longer having it, release it. Releasing takes
it out of routing first (a job it runs then is re-queued once elsewhere, or fails with the reason),
closes the tunnel and destroys the instance (a destroy that fails is left `destroy_failed` for the reaper).
`sidecar backends release NAME` and a graceful daemon stop release too; the start-up reaper
(`reap`) destroys what a killed daemon left, by id and by label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import aiohttp

from sidecar.backends.bucket_models import fetcher, onstart_with_libraries
from sidecar.backends.member import Member
from sidecar.backends.pool import BackendPool
from sidecar.backends.rent_reaper import destroy, reap, unfinished
from sidecar.backends.rent_limits import RentFailed, comfy_env, in_time, limit_hit, limits_for
from sidecar.backends.rentals import RentalRecord, RentalStore, new_label, summary
from sidecar.backends.tunnel import Tunnel, TunnelError, open_tunnel, write_known_hosts
from sidecar.config import Settings
from sidecar.config.backends import VAST_COMFY_PYTHON, BackendSpec, SshTarget
from sidecar.errors import BackendNotFound, InvalidState, RemoteUnavailable, SidecarError
from sidecar.profiles import get_profile
from sidecar.remote.state import RemoteState

if TYPE_CHECKING:  # the provider layer brings asyncssh: imported when something is rented
    from sidecar.remote.provider import Provider

log = logging.getLogger("sidecar.backends")

# vast.ai's template for its ComfyUI image starts the image's services with this on-start command.
ONSTART = "entrypoint.sh"
GONE = ("gone", "exited", "offline", "stopped")
CREATE_WAIT = 60.0  # a release while vast.ai is creating the instance waits this long for its id
ANSWER_TIMEOUT = 5.0  # one /system_stats through the tunnel while waiting for ComfyUI to start


@dataclass(eq=False)
class Rental:
    record: RentalRecord
    provider: Provider
    task: asyncio.Task[None] | None = None
    tunnel: Tunnel | None = None
    member: Member | None = None
    last_busy: float = field(default_factory=time.monotonic)
    released: bool = False
    code: str = "remote_unavailable"  # the stable code of why renting failed (jobs waiting for it fail with it)

    @property
    def spec(self) -> BackendSpec:
        return self.record.spec

    @property
    def st(self) -> RemoteState:
        return self.record.st


class Renter:
    def __init__(self, settings: Settings, pool: BackendPool, provider_factory=None):
        self.settings = settings
        self.pool = pool
        self.store = RentalStore(settings.data_dir)
        self.records: list[RentalRecord] = []
        self.active: dict[str, Rental] = {}
        self.reaped: list[dict[str, Any]] = []
        self._provider_factory = provider_factory or self._vast
        self._reaper: asyncio.Task[None] | None = None
        # (name, code, reason) of a rental that ended before it joined: the runner fails the jobs waiting for it.
        self.on_never_joined: Callable[[str, str, str], Awaitable[None]] | None = None

    def _vast(self) -> Provider:
        from sidecar.remote.vast import VastProvider

        return VastProvider(self.settings.remote.vast)

    # -- lifecycle
    async def start(self) -> None:
        self.records = await asyncio.to_thread(self.store.load)
        if any(unfinished(r.st) for r in self.records):
            self._reaper = asyncio.create_task(self.reap(), name="rented-backend-reaper")

    async def stop(self) -> None:
        """A graceful stop destroys what it rented: nobody would use it until the next start, yet it bills."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        await asyncio.gather(*(self.release(name, "the daemon stopped") for name in list(self.active)),
                             return_exceptions=True)

    # -- renting
    def rent(self, spec: BackendSpec) -> RentalRecord:
        """Start renting `spec` in the background; its record (GET /backends) says how it goes."""
        if spec.name in self.active or spec.name in self.pool.by_name:
            raise InvalidState(f"A backend named {spec.name!r} is already in the pool or being rented; release it "
                               "first or rent under another name.", {"backend": spec.name})
        provider = self._provider_factory()  # no key, no SDK: refused before anything is rented
        limits = limits_for(self.settings, spec)
        st = RemoteState(provider=provider.name, max_total_cost=limits.max_total_cost, max_hours=limits.max_hours)
        record = RentalRecord(spec, st)
        self.records.append(record)
        rental = Rental(record, provider)
        self.active[spec.name] = rental
        self._save()
        rental.task = asyncio.create_task(self._run(rental), name=f"rent-{spec.name}")
        return record

    async def _run(self, rental: Rental) -> None:
        try:
            await self._start(rental)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(rental, "the daemon stopped while it was renting"))
            raise
        except (SidecarError, RentFailed, TunnelError, OSError) as exc:
            reason = getattr(exc, "message", None) or str(exc)
            if isinstance(exc, SidecarError):
                rental.code = exc.code
            log.warning("renting backend %s failed: %s", rental.spec.name, reason)
            await self._release(rental, f"renting failed: {reason}", failed=True)
            return
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the instance must not be left billing
            log.exception("renting backend %s failed", rental.spec.name)
            await self._release(rental, f"renting failed: {type(exc).__name__}: {exc}", failed=True)
            return
        try:
            reason = await self._watch(rental)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("watching backend %s failed", rental.spec.name)
            reason = f"its watch failed: {type(exc).__name__}: {exc}"
        await self._release(rental, reason)

    async def _start(self, rental: Rental) -> None:
        spec, st, provider = rental.spec, rental.st, rental.provider
        from sidecar.remote.plan import choose

        limits = limits_for(self.settings, spec)
        started = time.monotonic()
        deadline = started + spec.start_timeout
        st.state = "searching"
        offers = await provider.search(limits)
        # What a rental costs depends on how long it is used, not on a step count: the offer is chosen by
        # price and hardware, and the guard (`_watch`) holds it to max_total_cost and max_hours.
        plan = choose(offers, replace(limits, max_total_cost=math.inf, max_hours=math.inf), 0)
        st.offer, st.gpu = plan.offer.describe(), plan.offer.gpu_name
        st.why = (f"the cheapest of {len(offers)} offer(s) under ${limits.max_price_per_hour:g}/h with at least "
                  f"{limits.min_gpu_memory_gb:g} GB" + (f" ({limits.gpu_name})" if limits.gpu_name else ""))
        # Recorded with its label before it exists: a daemon killed during `create` leaves the label for the reaper.
        st.label, st.state = new_label(spec.name), "creating"
        self._save()
        onstart = onstart_with_libraries(self.settings, _python(spec), ONSTART)
        inst = await provider.create(plan.offer, st.label, onstart, image=spec.image, env=comfy_env(spec),
                                     disk_gb=spec.disk_gb)
        st.rented(inst.id, inst.price_per_hour or plan.offer.price_per_hour)
        st.state = "starting"
        self._save()
        log.info("backend %s: %s instance %s rented (%s): %s", spec.name, provider.name, inst.id, st.offer, st.why)
        poll = self.settings.remote.poll_interval
        while True:
            self._check_limits(rental)
            inst = await provider.status(st.instance_id or "")
            if inst.running and inst.ssh_host:
                break
            if inst.state in GONE:
                raise RentFailed(f"instance {inst.id} is {inst.state} before it ran"
                                 + (f": {inst.message}" if inst.message else ""))
            in_time(spec, deadline, f"the instance is still {inst.state}"
                     + (f" ({inst.message})" if inst.message else ""))
            await asyncio.sleep(poll)
        st.billed(inst.started_at, inst.price_per_hour)
        st.ssh_host, st.ssh_port, st.ssh_user = inst.ssh_host, inst.ssh_port or 22, inst.ssh_user or "root"
        self._save()
        rental.tunnel = await self._connect(rental, deadline)
        stats = await self._wait_answering(rental, deadline)
        rental.member = self._member(rental, stats)
        await self.pool.join(rental.member)
        rental.last_busy = time.monotonic()
        st.state = "serving"
        st.message = None
        self._save()
        log.info("backend %s: ComfyUI on instance %s answers through %s after %.0f s; in routing", spec.name,
                 st.instance_id, rental.tunnel.url, time.monotonic() - started)

    async def _connect(self, rental: Rental, deadline: float) -> Tunnel:
        """SSH comes up a little after vast.ai says `running`: tried until the start deadline."""
        st, spec = rental.st, rental.spec
        key = self.settings.remote.vast.identity_file
        while True:
            self._check_limits(rental)
            try:
                tunnel = await open_tunnel(st.ssh_host or "", st.ssh_port or 22, st.ssh_user or "root", key,
                                           spec.instance_port)
            except TunnelError as exc:
                in_time(spec, deadline, f"SSH does not answer: {exc}")
                await asyncio.sleep(self.settings.remote.poll_interval)
                continue
            st.host_key = tunnel.host_key
            await asyncio.to_thread(write_known_hosts, self._known_hosts(spec.name), st.ssh_host or "",
                                    st.ssh_port or 22, tunnel.host_key)
            return tunnel

    async def _wait_answering(self, rental: Rental, deadline: float) -> dict[str, Any]:
        """ComfyUI's `/system_stats` through the tunnel, once it answers (the image installs and starts it)."""
        assert rental.tunnel is not None
        url = rental.tunnel.url + "/system_stats"
        timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                self._check_limits(rental)
                why = "ComfyUI does not answer yet"
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return await resp.json()
                        why = f"ComfyUI answers HTTP {resp.status}"
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    why = f"ComfyUI does not answer yet ({type(exc).__name__})"
                in_time(rental.spec, deadline, why)
                await asyncio.sleep(self.settings.remote.poll_interval)

    def _member(self, rental: Rental, stats: dict[str, Any]) -> Member:
        from sidecar.comfyui.backend import ComfyBackend

        spec, st, tunnel = rental.spec, rental.st, rental.tunnel
        assert tunnel is not None
        devices = stats.get("devices") or [{}]
        log.info("backend %s: ComfyUI %s on %s", spec.name, (stats.get("system") or {}).get("comfyui_version"),
                 devices[0].get("name") or devices[0].get("type") or "an unknown device")
        backend = ComfyBackend(self.settings.model_copy(update={
            "comfyui_url": tunnel.url, "comfyui_dir": None, "comfyui_python": None, "engine": "comfyui"}))
        return Member(
            name=spec.name, backend=backend, profile=get_profile(spec.profile), kind="comfyui rented", local=False,
            lock=asyncio.Lock(), tags=spec.tags, url=tunnel.url,
            ssh=SshTarget(st.ssh_user or "root", st.ssh_host or "", st.ssh_port or 22, spec.comfyui_dir),
            ssh_key=str(self.settings.remote.vast.identity_file.expanduser()),
            ssh_known_hosts=str(self._known_hosts(spec.name)), rental=lambda: self.summary(rental.record),
            fetch=fetcher(self.settings, lambda: rental.member, self._known_hosts(spec.name), _python(spec)))

    def _known_hosts(self, name: str):
        return self.settings.data_dir / "rented-backends" / f"{name}.known_hosts"

    # -- while it serves
    async def _watch(self, rental: Rental) -> str:
        """Until a reason to release it: idle, a limit, or vast.ai no longer having it."""
        spec, st = rental.spec, rental.st
        status_at = time.monotonic()
        while True:
            await asyncio.sleep(self.settings.rent_check_interval)
            m = rental.member
            now = time.monotonic()
            # Its lane holds it while copying a model for a job, before the job itself runs: busy too.
            if m is not None and (m.running is not None or m.holding):
                rental.last_busy = now
            hit = limit_hit(st)
            if hit is not None:
                return hit
            if now - rental.last_busy >= spec.idle_minutes * 60:
                return f"idle for {spec.idle_minutes:g} min (idle_minutes)"
            if now - status_at >= self.settings.remote.status_interval:
                status_at = now
                try:
                    inst = await rental.provider.status(st.instance_id or "")
                except RemoteUnavailable as exc:
                    log.info("backend %s: no status for instance %s (%s)", spec.name, st.instance_id, exc.message)
                    continue
                if inst.state in GONE:
                    return f"vast.ai reports instance {inst.id} {inst.state}"
                st.billed(inst.started_at, inst.price_per_hour)
            if rental.tunnel is not None and rental.tunnel.closed:
                await self._reopen(rental)

    async def _reopen(self, rental: Rental) -> None:
        """A dropped SSH connection: reconnected with the pinned host key, on the same local port, so the
        member's client (pointed at that port) carries on."""
        st, spec, old = rental.st, rental.spec, rental.tunnel
        assert old is not None
        try:
            tunnel = await open_tunnel(st.ssh_host or "", st.ssh_port or 22, st.ssh_user or "root",
                                       self.settings.remote.vast.identity_file, spec.instance_port,
                                       known_hosts=self._known_hosts(spec.name), local_port=old.local_port)
        except TunnelError as exc:
            log.warning("backend %s: the tunnel dropped and does not come back yet (%s)", spec.name, exc)
            return
        rental.tunnel = tunnel
        log.info("backend %s: tunnel open again at %s", spec.name, tunnel.url)

    def _check_limits(self, rental: Rental) -> None:
        hit = limit_hit(rental.st)
        if hit is not None:
            raise RentFailed(hit)

    # -- releasing
    async def release(self, name: str, reason: str) -> RentalRecord:
        rental = self.active.get(name)
        if rental is None:
            raise BackendNotFound(f"{name!r} is not a rented backend of this daemon now (rented: "
                                  f"{', '.join(sorted(self.active)) or 'none'}).",
                                  {"backend": name, "rented": sorted(self.active)})
        await self._release(rental, reason)
        return rental.record

    async def _release(self, rental: Rental, reason: str, *, failed: bool = False) -> None:
        if rental.released:
            return
        rental.released = True
        task = rental.task
        if task is not None and task is not asyncio.current_task():
            # vast.ai's answer to a create in flight is waited for (its id is what is destroyed); the SDK call
            # cannot be stopped anyway, and an instance created after we stopped listening would bill unseen.
            until = time.monotonic() + CREATE_WAIT
            while rental.st.state == "creating" and not task.done() and time.monotonic() < until:
                await asyncio.sleep(0.05)
            task.cancel()
        st, spec = rental.st, rental.spec
        self.active.pop(spec.name, None)
        if st.instance_id is not None:
            st.state = "destroying"
        st.message = reason
        self._save()
        if rental.member is not None:
            await self.pool.leave(rental.member, f"released: {reason}")
        if rental.tunnel is not None:
            await rental.tunnel.close()
        if rental.member is None and self.on_never_joined is not None:
            await self.on_never_joined(spec.name, rental.code, reason)  # never raises: jobs end in the ledger
        if st.instance_id is None:
            st.state = "failed" if failed else "destroyed"
            self._save()
            return
        error = await destroy(rental.provider, st.instance_id)
        if error is None:
            st.released()
            st.message = f"{reason}; destroyed (cost ${st.cost():.4f})"
            if failed:
                st.state = "failed"
            log.warning("backend %s: instance %s destroyed: %s (cost $%.4f)", spec.name, st.instance_id, reason,
                        st.cost())
        else:
            st.state = "destroy_failed"
            st.message = f"{reason}; destroying instance {st.instance_id} failed ({error}): the reaper tries again " \
                         "at the next start; check console.vast.ai"
            log.error("backend %s: %s", spec.name, st.message)
        self._save()

    # -- the start-up reaper
    async def reap(self) -> None:
        """Destroy what a daemon that died left (`rent_reaper.py`)."""
        try:
            provider = self._provider_factory()
        except SidecarError as exc:
            log.warning("reaper: rented backends were left by the last run but vast.ai cannot be asked (%s); "
                        "tried again at the next start", exc.message)
            return
        self.reaped.extend(await reap(provider, self.records, set(self.active)))
        self._save()

    # -- what the API shows
    def summaries(self) -> list[dict[str, Any]]:
        return [self.summary(r) for r in self.records]

    def summary(self, r: RentalRecord) -> dict[str, Any]:
        rental = self.active.get(r.spec.name)
        idle = None
        if rental is not None and rental.record is r and r.st.state == "serving":
            idle = round(time.monotonic() - rental.last_busy, 1)
        return summary(r, idle)

    def _save(self) -> None:
        try:
            self.store.save(self.records)
        except OSError as exc:
            log.error("cannot record rented backends in %s (%s): a daemon killed now leaves them to be found by "
                      "label only", self.store.path, exc)


def _python(spec: BackendSpec) -> str:
    return str(spec.python) if spec.python is not None else VAST_COMFY_PYTHON

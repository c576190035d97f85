"""The backends of the `[[backends]]` tables, built, started, probed and stopped as one pool.

`build_pool` makes one `Member` per table (an attached ComfyUI gets its own `ComfyBackend`, hence
its own persistent WebSocket; a managed one its own supervisor), plus the daemon's one configured
backend as `local` when no table is local. `BackendPool` owns their health: every
`backend_probe_interval` seconds each is asked `system_stats` (through its backend's `health()`),
then its model listings and node types (on joining, then every `CAPS_REFRESH` seconds). A backend
that fails two probes in a row (or loses the job it runs) is out of routing (`Member.mark_down` also ends
the job it runs, which the runner re-queues once elsewhere); it rejoins when it answers again, and the prompts of jobs taken away from
it meanwhile are interrupted there first, so none finishes twice. Those prompts are kept in the job
database (`abandoned.py`), so a daemon restarted meanwhile still interrupts them. State changes are
published on the event bus as `backend.up` / `backend.down` (`BackendChanged`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.backend import GenerationBackend
from sidecar.backends.abandoned import Abandoned, AbandonedStore
from sidecar.backends.admission import Capabilities
from sidecar.backends.member import Member
from sidecar.config.backends import BackendSpec
from sidecar.config import Settings
from sidecar.device import Device
from sidecar.errors import SidecarError
from sidecar.events import EventBus
from sidecar.profiles import get_profile

log = logging.getLogger("sidecar.backends")

FOLDERS = ("checkpoints", "loras", "controlnet", "diffusion_models")
CAPS_REFRESH = 60.0  # node types and model listings of a backend that stays up
# Probes a backend in routing must fail in a row before it is taken out (one slow answer while it renders
# is not a dead server; a killed one is noticed at once anyway, by the job it was running).
FAILS_TO_TAKE_OUT = 2
LOCAL_NAME = "local"


@dataclass(frozen=True)
class BackendChanged:
    """Published when a backend joins or leaves routing: `type` is backend.up | backend.down; `backend` is
    its entry of `BackendPool.status()` at that moment (the API layer's encoder makes it the wire event)."""

    type: str
    backend: dict[str, Any]


def comfy_settings(settings: Settings, spec: BackendSpec) -> Settings:
    """The settings one ComfyUI member runs with: the daemon's, pointed at that server."""
    if spec.managed:
        update = {"comfyui_url": None, "comfyui_dir": spec.dir.resolve() if spec.dir else None,
                  "comfyui_python": spec.python, "comfyui_port": spec.port, "engine": "comfyui"}
    else:
        update = {"comfyui_url": spec.url, "comfyui_dir": None, "comfyui_python": None, "engine": "comfyui"}
    return settings.model_copy(update=update)


def build_pool(settings: Settings, device: Device, default_backend: Callable[[], GenerationBackend],
               backends: dict[str, GenerationBackend] | None = None) -> BackendPool:
    """`backends`: ready-made backend objects by name (tests); the rest are built from the tables."""
    given = backends or {}
    members: list[Member] = []
    for spec in settings.backends:
        if spec.rented:
            continue  # joins when rented (`renting.py`), leaves when destroyed
        backend = given.get(spec.name) or _make(settings, spec)
        kind = "embedded" if spec.kind == "embedded" else ("comfyui managed" if spec.managed else "comfyui attached")
        target = spec.ssh_target
        members.append(Member(
            name=spec.name, backend=backend, profile=get_profile(spec.profile), kind=kind, local=spec.is_local,
            lock=device.lock if spec.is_local else asyncio.Lock(), tags=spec.tags,
            url=spec.url or (f"http://127.0.0.1:{spec.port}" if spec.managed else None), ssh=target,
            ssh_key=str(spec.ssh_key) if spec.ssh_key else None,
            ssh_known_hosts=str(spec.ssh_known_hosts) if spec.ssh_known_hosts else None))
    if not any(m.local for m in members):
        backend = given.get(LOCAL_NAME) or default_backend()
        kind = backend.name if backend.name != "comfyui" else (
            "comfyui managed" if settings.comfyui_url is None else "comfyui attached")
        members.insert(0, Member(name=LOCAL_NAME, backend=backend, profile=get_profile(settings.profile), kind=kind,
                                 local=True, lock=device.lock,
                                 url=settings.comfyui_base_url if backend.name == "comfyui" else None))
    pool = BackendPool(members, settings.backend_probe_interval)
    pool.rentable = frozenset(s.name for s in settings.backends if s.rented)
    pool.on_demand = {s.name: s for s in settings.backends if s.rented and s.rent == "on-demand"}
    return pool


def _make(settings: Settings, spec: BackendSpec) -> GenerationBackend:
    if spec.kind == "embedded":
        from sidecar.engine.backend import EmbeddedBackend

        return EmbeddedBackend(settings)
    from sidecar.comfyui.backend import ComfyBackend

    return ComfyBackend(comfy_settings(settings, spec))


class BackendPool:
    def __init__(self, members: list[Member], probe_interval: float):
        self.members = members
        self.by_name = {m.name: m for m in members}
        self.probe_interval = probe_interval
        self.local_models: dict[str, frozenset[str]] = {}
        self.on_change: Callable[[], None] = lambda: None  # the runner wakes its lanes
        self.on_join: Callable[[Member], None] = lambda m: None  # the runner gives a joining member its lane
        self.on_members: Callable[[], None] = lambda: None  # the app widens or narrows what it admits
        self.events: EventBus | None = None  # backend.up / backend.down go here (the app sets it)
        self.store: AbandonedStore | None = None  # the prompts to interrupt, kept across restarts
        self.rentable: frozenset[str] = frozenset()  # kind = "vast" tables: members only while rented
        self.on_demand: dict[str, BackendSpec] = {}  # of those, the tables rented when a job needs them
        self.departed: dict[str, str] = {}  # name -> why, of members that left the pool (rented, released)
        self._caps_at: dict[str, float] = {}
        self._fails: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def home(self) -> Member:
        """The backend the daemon's own API answers for (/health's top level, LoRAs, training's unload)."""
        return next((m for m in self.members if m.local), self.members[0])

    # -- lifecycle
    async def start(self, already_started: GenerationBackend | None = None) -> None:
        if self.store is not None:  # before the first probe: a backend that answers is cleaned up at once
            for name, prompts in (await self.store.load()).items():
                m = self.by_name.get(name)
                if m is None:
                    log.warning("backend %s is no longer configured: prompts %s of jobs re-run elsewhere are "
                                "not interrupted there", name, ", ".join(prompts))
                    continue
                m.abandoned.extend(p for p in prompts if p not in m.abandoned)
        for m in self.members:
            if m.backend is not already_started:
                await m.backend.start()
        await self.probe_all()
        self._task = asyncio.create_task(self._probe_forever(), name="backend-probes")

    async def stop(self, already_stopping: GenerationBackend | None = None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for m in self.members:
            if m.backend is not already_stopping:
                with contextlib.suppress(Exception):
                    await m.backend.stop()

    # -- members that come and go (rented backends)
    async def join(self, m: Member) -> None:
        """Add a backend while the daemon runs: started, probed at once (it is in routing when it answers),
        and given its lane."""
        if m.name in self.by_name:
            raise ValueError(f"a backend named {m.name!r} is already in the pool")
        await m.backend.start()
        self.members.append(m)
        self.by_name[m.name] = m
        self.departed.pop(m.name, None)
        self.on_join(m)
        self.on_members()
        await self.probe(m)

    async def leave(self, m: Member, reason: str, *, drain: float = 10.0) -> None:
        """Take a backend out for good: out of routing (a job it runs is lost there and re-queued once
        elsewhere by the runner), then out of the pool once that job has left it (at most `drain` s)."""
        self.take_out(m, reason)
        until = time.monotonic() + drain
        while m.running is not None and time.monotonic() < until:
            await asyncio.sleep(0.05)
        if self.by_name.get(m.name) is m:
            self.members.remove(m)
            del self.by_name[m.name]
            self.departed[m.name] = reason
        m.wakeup.set()  # its lane sees it gone and ends
        self.on_members()
        self.on_change()
        with contextlib.suppress(Exception):
            await m.backend.stop()
        if self.store is not None:  # its prompts went with the machine: nothing to interrupt any more
            for prompt_id in m.abandoned:
                with contextlib.suppress(Exception):
                    await self.store.remove(m.name, prompt_id)
        m.abandoned.clear()

    # -- probing
    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                await self.probe_all()
            except Exception:  # noqa: BLE001 - a probe bug must not end probing
                log.exception("backend probe round failed")

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(m) for m in self.members), self._scan_local_models())

    async def probe(self, m: Member) -> None:
        try:
            health = await m.backend.health()
        except (SidecarError, OSError) as exc:
            await self._caps_from_disk(m)
            self._failed(m, f"its health probe failed: {exc}")
            return
        if not health.available:
            await self._caps_from_disk(m)
            self._failed(m, "; ".join(health.warnings) or "it does not answer")
            return
        self._fails[m.name] = 0
        m.device = health.device
        if health.loaded is not None:
            m.loaded_checkpoint = health.loaded.get("checkpoint")
        joining = m.state != "up"
        if joining or m.caps is None or time.monotonic() - self._caps_at.get(m.name, 0.0) > CAPS_REFRESH:
            try:
                await self.refresh_caps(m)
            except (SidecarError, OSError) as exc:
                self._failed(m, f"it answered system_stats but not its model listings: {exc}")
                return
        if joining and m.abandoned and not await self._interrupt_abandoned(m):
            # Not back in routing while a prompt taken from it may still run there (it would finish twice).
            self._failed(m, f"it answers, but prompts {', '.join(m.abandoned)} of jobs re-run elsewhere could "
                            "not be interrupted there yet")
            return
        if m.mark_up():
            log.info("backend %s is up (%s, %s)%s", m.name, m.kind, m.device or "device unknown",
                     " and rejoins routing" if m.jobs_run or m.abandoned else "")
            self._publish("backend.up", m)
            self.on_change()

    async def refresh_caps(self, m: Member) -> None:
        listings = await asyncio.gather(*(m.backend.list_models(f) for f in FOLDERS))  # type: ignore[arg-type]
        types = await m.backend.known_node_types()
        m.caps = Capabilities(models={f: frozenset(names) for f, names in zip(FOLDERS, listings, strict=True)
                                      if names is not None},
                              node_types=frozenset(types) if types is not None else None)
        self._caps_at[m.name] = time.monotonic()

    async def _caps_from_disk(self, m: Member) -> None:
        """A backend whose model folders are on this machine (a managed ComfyUI still starting) admits
        jobs by what is there, so they queue for it as with one backend; its node types stay unknown."""
        if m.caps is not None:
            return
        dirs = {f: [d] for f in FOLDERS if (d := m.backend.models_dir(f)) is not None}  # type: ignore[arg-type]
        if dirs:
            m.caps = Capabilities(models=await asyncio.to_thread(_scan, dirs), node_types=None)

    def _failed(self, m: Member, reason: str) -> None:
        self._fails[m.name] = self._fails.get(m.name, 0) + 1
        if m.state != "up" or self._fails[m.name] >= FAILS_TO_TAKE_OUT:
            self.take_out(m, reason)

    def take_out(self, m: Member, reason: str) -> None:
        if m.mark_down(reason):
            log.warning("backend %s is out of routing: %s", m.name, reason)
            self._publish("backend.down", m)
            self.on_change()

    def _publish(self, kind: str, m: Member) -> None:
        if self.events is not None:
            self.events.publish(BackendChanged(kind, self._status_of(m)))

    async def abandon(self, m: Member, prompt_id: str, job_id: str | None) -> None:
        """Remember to interrupt `prompt_id` on `m` when it answers again (its job re-runs elsewhere)."""
        if prompt_id not in m.abandoned:
            m.abandoned.append(prompt_id)
        if self.store is not None:
            try:
                await self.store.add(Abandoned(m.name, prompt_id, job_id))
            except Exception as exc:  # noqa: BLE001 - a full disk: still interrupted if this daemon lives
                log.error("backend %s: cannot record prompt %s to interrupt (%s); it is interrupted only if "
                          "this daemon is still running when the backend answers again", m.name, prompt_id, exc)

    async def _interrupt_abandoned(self, m: Member) -> bool:
        """Before it takes new work: each prompt taken away from it leaves its queue and is interrupted if
        it runs (ComfyUI answers 200 for an id it does not know: a restarted server simply forgets it).
        One it could not be told about stays on the list (False: try again at the next probe)."""
        client = getattr(m.backend, "client", None)
        prompts, m.abandoned = m.abandoned, []
        for prompt_id in prompts:
            if client is not None:
                try:
                    await client.delete_from_queue([prompt_id])
                    await client.interrupt(prompt_id)
                except (SidecarError, OSError) as exc:
                    log.warning("backend %s: could not interrupt prompt %s (%s); trying again when it answers",
                                m.name, prompt_id, exc)
                    m.abandoned.append(prompt_id)
                    continue
                log.info("backend %s: interrupted prompt %s of a job that re-ran elsewhere", m.name, prompt_id)
            if self.store is not None:
                with contextlib.suppress(Exception):
                    await self.store.remove(m.name, prompt_id)
        return not m.abandoned

    async def _scan_local_models(self) -> None:
        """The model files this machine has (what can be copied to a backend with an SSH target)."""
        dirs: dict[str, list[Path]] = {f: [] for f in FOLDERS}
        for m in self.members:
            if m.local:
                for f in FOLDERS:
                    d = m.backend.models_dir(f)  # type: ignore[arg-type]
                    if d is not None:
                        dirs[f].append(d)
        self.local_models = await asyncio.to_thread(_scan, dirs)

    def local_file(self, folder: str, name: str) -> Path | None:
        for m in self.members:
            if m.local:
                d = m.backend.models_dir(folder)  # type: ignore[arg-type]
                if d is not None and (d / name).is_file():
                    return d / name
        return None

    def status(self) -> list[dict[str, Any]]:
        return [self._status_of(m) for m in self.members]

    @staticmethod
    def _status_of(m: Member) -> dict[str, Any]:
        return {"name": m.name, "kind": m.kind, "state": m.state, "reason": m.down_reason, "local": m.local,
                "url": m.url, "device": m.device, "profile": m.profile.name, "tags": list(m.tags),
                "running": m.running, "secondsPerStep": m.seconds_per_step, "loadedCheckpoint": m.loaded_checkpoint,
                "jobsRun": m.jobs_run, "ssh": str(m.ssh) if m.ssh else None,
                "rental": m.rental() if m.rental is not None else None}


def _scan(dirs: dict[str, list[Path]]) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for folder, paths in dirs.items():
        names: set[str] = set()
        for d in paths:
            if d.is_dir():
                names.update(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
        out[folder] = frozenset(names)
    return out

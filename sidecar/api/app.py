"""The app factory: builds the aiohttp application with its typed state and background lifecycle.

Tests call `create_app(settings, backend)` with their own settings and (fake-backed) backend; `sidecar
serve` calls it with the effective configuration. Every background resource (store, backend, template
watcher, job runner) is started and stopped by `cleanup_ctx`, in that order, after the data dir's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from sidecar.api import backends as backends_api  # not `backends`: create_app's parameter has that name
from sidecar.api import (
    captions, chapter, concepts, dataset, dataset_build, doctor, events, explorer, health, jobs, likeness, loras,
    maintenance, model_files, openapi, page_refine, project, prompts, queue, run_files, studio, sweep, tasks,
    training,
)
from sidecar.api.edge import edge_middleware
from sidecar.api.errors import error_middleware
from sidecar.likeness.judge import service_for
from sidecar.api.keys import (
    BACKEND,
    BUILDER,
    CAPTIONS_LOCK,
    CONCEPT_LOCKS,
    FULL_LISTING_LOCK,
    DATADIR_LOCK,
    DEVICE,
    EVENTS,
    IDEMPOTENCY,
    LIKENESS,
    POOL,
    PROFILE,
    RENTER,
    RUNNER,
    SESSIONS,
    SETTINGS,
    SOCKETS,
    STARTUP_WARNINGS,
    STORE,
    TEMPLATES,
    TRAINING_STORE,
)
from sidecar.backend import GenerationBackend
from sidecar.backends.catalog import PoolCatalog, profiles_by_name, widest_profile
from sidecar.backends.abandoned import AbandonedStore
from sidecar.backends.pool import build_pool
from sidecar.backends.on_demand import OnDemand
from sidecar.backends.renting import Renter
from sidecar.config import Settings
from sidecar.datadir_lock import DataDirLock
from sidecar.errors import SidecarError
from sidecar.studio.session import Sessions
from sidecar.listen import REQUEST_LIMITS
from sidecar.events import EventBus
from sidecar.jobs.build import JobBuilder
from sidecar.jobs.previews import Previews
from sidecar.device import Device
from sidecar.jobs.idempotency import IdempotencyKeys
from sidecar.jobs.runner import JobRunner
from sidecar.jobs.store import JobStore
from sidecar.profiles import get_profile
from sidecar.sqlite_store import check_database
from sidecar.training.store import TrainingStore
from sidecar.workflows import TemplateStore

log = logging.getLogger("sidecar")


def make_backend(settings: Settings) -> GenerationBackend:
    """The backend the settings ask for. Imported lazily: the embedded engine pulls in torch."""
    if settings.resolved_engine == "comfyui":
        from sidecar.comfyui.backend import ComfyBackend

        return ComfyBackend(settings)
    from sidecar.engine.backend import EmbeddedBackend

    return EmbeddedBackend(settings)


def create_app(settings: Settings, backend: GenerationBackend | None = None, *,
               datadir_lock: DataDirLock | None = None,
               backends: dict[str, GenerationBackend] | None = None) -> web.Application:
    """`datadir_lock`: the data dir's lock when the caller (`sidecar serve`) already holds it; otherwise
    the app takes it at start-up, before anything else (a locked data dir fails the start-up).
    With `[[backends]]` tables the app drives a pool of backends (`backends`: ready-made ones by name,
    for tests; `backend` then stands for the implicit `local` one)."""
    # The edge (Host, Origin, token, JSON bodies) comes first, for every route and the /events upgrade.
    # The request limits go with the app (Application's `handler_args`), so every runner serving it
    # applies them. Not `run_app(handler_args=...)`: there it reaches each connection's handler as an
    # unknown keyword, and aiohttp then drops all the settings, logging a warning per connection.
    sessions = Sessions(path=settings.data_dir / "studio-sessions.json")
    app = web.Application(middlewares=[edge_middleware(settings, sessions), error_middleware],
                          client_max_size=settings.max_body_bytes, handler_args=REQUEST_LIMITS)
    app[SESSIONS] = sessions
    profile = get_profile(settings.profile)
    store = JobStore(settings.db_path)
    device = Device()
    pool = None
    if settings.backends:
        given = backend
        pool = build_pool(settings, device, lambda: given or make_backend(settings), backends)
        backend = pool.home.backend  # what /health's top level, LoRAs and training's unload talk to
        app[POOL] = pool
    backend = backend or make_backend(settings)
    bus = EventBus(settings.events_buffer, events.encode)  # events leave as the wire models /openapi.json shows

    async def known_types() -> set[str] | None:
        try:
            return await backend.known_node_types()
        except (SidecarError, OSError) as exc:
            log.warning("cannot ask the backend for its node types yet (%s); validating templates without", exc)
            return None

    templates = TemplateStore(settings.workflows_dir, known_types)
    app[SETTINGS] = settings
    app[DATADIR_LOCK] = datadir_lock or DataDirLock(settings.data_dir)
    app[PROFILE] = profile
    app[STORE] = store
    app[TRAINING_STORE] = TrainingStore(settings.db_path, share=store)  # one writer thread per database file
    app[BACKEND] = backend
    app[DEVICE] = device
    app[EVENTS] = bus
    if pool is not None:
        pool.events = bus  # backend.up / backend.down
        pool.store = AbandonedStore(settings.db_path, share=store)  # prompts to interrupt, across restarts
    app[TEMPLATES] = templates
    previews = Previews(bus, enabled=settings.previews, interval=settings.preview_interval)
    app[RUNNER] = JobRunner(store, backend, device, bus, settings.jobs_dir, max_queue=settings.max_queue,
                            pool=pool, default_where=settings.default_where, previews=previews,
                            recovery_timeout=settings.backend_recovery_timeout,
                            judge=lambda image: likeness.likeness_for_log(app[LIKENESS], image))
    find_job = app[RUNNER].get
    app[BUILDER] = (JobBuilder(settings, profile, templates, PoolCatalog(pool), limits=widest_profile(pool),  # type: ignore[arg-type]
                               find_job=find_job, backend_profiles=profiles_by_name(pool))
                    if pool is not None else JobBuilder(settings, profile, templates, backend, find_job=find_job))
    if pool is not None:
        app[RENTER] = renter = Renter(settings, pool)
        runner = app[RUNNER]
        runner.on_demand = OnDemand(pool, renter.rent, lambda name: name in renter.active)
        renter.on_never_joined = runner.rent_failed
        builder = app[BUILDER]

        def members_changed() -> None:  # a rented backend joined or left: what the API admits follows
            builder.limits = widest_profile(pool)
            builder.backend_profiles = profiles_by_name(pool)

        pool.on_members = members_changed
    app[IDEMPOTENCY] = IdempotencyKeys(store)
    app[STARTUP_WARNINGS] = []
    app[SOCKETS] = events.new_socket_set()
    app[CAPTIONS_LOCK] = asyncio.Lock()
    app[CONCEPT_LOCKS] = {}
    app[FULL_LISTING_LOCK] = asyncio.Lock()
    app[LIKENESS] = service_for(settings, settings.project_root)
    app.on_shutdown.append(events.close_all)

    app.cleanup_ctx.append(_lock_ctx)  # first: nothing below may touch a data dir another daemon owns
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_backend_ctx)
    if pool is not None:
        app.cleanup_ctx.append(_pool_ctx)
        app.cleanup_ctx.append(_renter_ctx)
    app.cleanup_ctx.append(_templates_ctx)
    app.cleanup_ctx.append(_runner_ctx)
    for module in (health, backends_api, jobs, loras, model_files, events, openapi, project, chapter, dataset,
                   dataset_build, doctor, queue, prompts, page_refine, captions, likeness, concepts, explorer):
        app.router.add_routes(module.routes)
    training.setup_routes(app)
    tasks.setup(app, settings)
    app.router.add_routes(sweep.routes)
    app.router.add_routes(run_files.routes)
    maintenance.setup_routes(app)
    studio.setup_routes(app)
    return app


async def _lock_ctx(app: web.Application) -> AsyncIterator[None]:
    lock, settings = app[DATADIR_LOCK], app[SETTINGS]
    taken_here = not lock.held
    lock.acquire(settings.host, settings.port)  # raises DataDirLocked, naming the owner
    yield
    if taken_here:
        lock.release()


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # A damaged or foreign file raises DatabaseUnusable before anything uses it (`serve` exits 1).
    existed = await asyncio.to_thread(check_database, settings.db_path)
    if not existed:
        orphans = await asyncio.to_thread(_count_images, settings.jobs_dir)
        if orphans:
            warning = (f"no job database at {settings.db_path}, yet {orphans} job image(s) in "
                       f"{settings.jobs_dir}: the job history was deleted or moved, and no job refers to "
                       "those images any more (restore the database file to get it back)")
            log.warning("%s", warning)
            app[STARTUP_WARNINGS].append(warning)
    await app[STORE].open()
    yield
    await app[STORE].close()


def _count_images(directory: Path) -> int:
    return sum(1 for _ in directory.glob("*.png")) if directory.is_dir() else 0


async def _backend_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[BACKEND].start()
    yield
    await app[BACKEND].stop()


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    pool = app[POOL]
    if pool.store is not None:
        await pool.store.open()
    await pool.start(already_started=app[BACKEND])  # the others, then a first probe of each
    yield
    await pool.stop(already_stopping=app[BACKEND])
    if pool.store is not None:
        await pool.store.close()


async def _renter_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the pool: the reaper of what a killed daemon rented; at stop, what this one rented is destroyed."""
    await app[RENTER].start()
    yield
    await app[RENTER].stop()


async def _templates_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[TEMPLATES]
    await store.load()  # a broken template set at start-up is fatal: nothing could run
    stop = asyncio.Event()
    watcher = asyncio.create_task(store.watch(stop), name="template-watcher")
    yield
    stop.set()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(watcher, 2)


async def _runner_ctx(app: web.Application) -> AsyncIterator[None]:
    await app[RUNNER].start()
    yield
    await app[RUNNER].stop()

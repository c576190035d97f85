"""Typed app keys: every app-wide object lives here, built by the app factory (no module singletons)."""

from __future__ import annotations

import asyncio
import weakref

from aiohttp import web

from sidecar.backend import GenerationBackend
from sidecar.backends.pool import BackendPool
from sidecar.backends.renting import Renter
from sidecar.config import Settings
from sidecar.datadir_lock import DataDirLock
from sidecar.device import Device
from sidecar.jobs.idempotency import IdempotencyKeys
from sidecar.events import EventBus
from sidecar.jobs.build import JobBuilder
from sidecar.jobs.runner import JobRunner
from sidecar.jobs.store import JobStore
from sidecar.likeness.judge import LikenessService
from sidecar.profiles import Profile
from sidecar.studio.session import Sessions
from sidecar.training.store import TrainingStore
from sidecar.workflows import TemplateStore

SETTINGS = web.AppKey("settings", Settings)
DATADIR_LOCK = web.AppKey("datadir_lock", DataDirLock)
PROFILE = web.AppKey("profile", Profile)
STORE = web.AppKey("store", JobStore)
TRAINING_STORE = web.AppKey("training_store", TrainingStore)  # shares STORE's connection and writer thread
RUNNER = web.AppKey("runner", JobRunner)
SESSIONS = web.AppKey("studio_sessions", Sessions)  # the studio's cookie sessions: the edge checks, its routes open
BUILDER = web.AppKey("builder", JobBuilder)
BACKEND = web.AppKey("backend", GenerationBackend)
EVENTS = web.AppKey("events", EventBus)
DEVICE = web.AppKey("device", Device)
TEMPLATES = web.AppKey("templates", TemplateStore)
# What start-up found worth telling the user (an orphaned jobs folder): logged and in /health's warnings.
STARTUP_WARNINGS = web.AppKey("startup_warnings", list)
# Open /events sockets, closed on shutdown.
SOCKETS = web.AppKey("sockets", weakref.WeakSet)
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyKeys)
POOL = web.AppKey("pool", BackendPool)  # only with [[backends]] tables
RENTER = web.AppKey("renter", Renter)  # rented ComfyUIs (kind = "vast"), with the pool
# One writer at a time for the studio's edits of a training folder's captions.csv (confirm, reject, proposals).
CAPTIONS_LOCK = web.AppKey("captions_lock", asyncio.Lock)
# One GET /jobs?full=1 page built at a time: each is megabytes of Python work holding the GIL in a thread,
# and several at once starve the event loop's thread of it (/health waited 0.5 s behind four).
FULL_LISTING_LOCK = web.AppKey("full_listing_lock", asyncio.Lock)
# The likeness judge of the daemon's project (`--project`) and models folder: scorer opened on first use.
LIKENESS = web.AppKey("likeness", LikenessService)
# One change at a time per concept (its TOML and intent document): a round and its feedback read, then write.
CONCEPT_LOCKS = web.AppKey("concept_locks", dict)

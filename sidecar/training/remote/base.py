"""A remote run's session, its base: what it knows (the run, its `RemoteState`, the shell), how it
reports (every change of the state is persisted through the `remote` hook), the connection to the
machine, and destroying the instance, which every ending but a daemon shutdown does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from sidecar.config import Settings
from sidecar.errors import JobCancelled, JobFailed, RemoteUnavailable
from sidecar.remote.provider import Instance, Provider
from sidecar.remote.shell import ConnectionLost, Shell
from sidecar.remote.state import RemoteState
from sidecar.training.kohya import KohyaRelay
from sidecar.training.adapters import adapter_for
from sidecar.training.parser import CheckpointSaved
from sidecar.training.remote.bucket import RunBucket
from sidecar.training.spec import ResumePoint, TrainerHooks, TrainJob

log = logging.getLogger("sidecar.training.remote")

DESTROY_ATTEMPTS = 3


class InstanceLost(Exception):
    pass


def remote_failed(message: str, reason: str, **details: Any) -> JobFailed:
    return JobFailed(message, {"reason": reason, **details}, code="remote_failed")


class SessionBase(KohyaRelay):
    def __init__(self, settings: Settings, job: TrainJob, hooks: TrainerHooks, provider: Provider,
                 st: RemoteState, resolved: dict[str, Any]):
        self.settings, self.job, self.hooks, self.provider, self.st = settings, job, hooks, provider, st
        self.resolved = resolved
        self.poll = settings.remote.poll_interval
        self.shell: Shell | None = None
        self.instance: Instance | None = None
        self.adapter = adapter_for(job.spec.trainer)
        self.parser = self.adapter.parser(0, job.spec.output_name)
        self.gpu_memory_gb: float | None = None
        self.pending: list[CheckpointSaved] = []
        self.device_reported = False
        self.resume: ResumePoint | None = job.resume
        self.alive_at = 0.0
        self.status_at = time.monotonic()
        self.bucket: RunBucket | None = None  # the [storage] bucket this run's files travel through (bucket.py)

    # -- reporting
    def publish(self, state: str | None = None) -> None:
        if state is not None:
            self.st.state = state
        if self.hooks.remote is not None:
            self.hooks.remote(self.st.to_dict())

    async def sleep(self, seconds: float) -> None:
        """Wait, or raise JobCancelled as soon as the run is cancelled (or the daemon stops)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # not wait_for: on 3.11 it can drop a cancel
                await self.hooks.cancel.wait()
        if self.hooks.cancel.is_set():
            raise JobCancelled()

    @property
    def stopping(self) -> bool:
        return self.hooks.stopping is not None and self.hooks.stopping()

    def deadline(self) -> float:
        return time.monotonic() + float(self.resolved.get("start_timeout", 1200))

    async def connect(self, once: bool = False) -> Shell:
        """Open the shell (retrying until the start timeout, or one attempt with `once`)."""
        until = self.deadline()
        while True:
            try:
                inst = self.instance or await self.provider.status(self.st.instance_id or "")
                shell = await self.provider.shell(inst, self.st.host_key)
                break
            except ConnectionLost as exc:
                if once:
                    raise
                if time.monotonic() > until:
                    raise remote_failed(f"Cannot reach the machine over SSH: {exc}", "ssh_unreachable") from None
                await self.sleep(self.poll)
        self.shell, self.instance = shell, inst
        st = self.st
        st.host_key = st.host_key or shell.host_key()
        st.ssh_host, st.ssh_port, st.ssh_user = inst.ssh_host, inst.ssh_port, inst.ssh_user
        return shell

    async def close_shell(self) -> None:
        if self.shell is not None:
            shell, self.shell = self.shell, None
            with contextlib.suppress(Exception):
                await shell.close()

    def _shell(self) -> Shell:
        if self.shell is None:
            raise ConnectionLost("not connected")
        return self.shell

    @property
    def step(self) -> int:
        last = self.parser.last
        return last.step if last else (self.resume.step if self.resume else self.parser.offset)

    # -- never left running
    async def destroy(self) -> None:
        st = self.st
        if st.instance_id is None or st.state == "destroyed":
            return
        self.publish("destroying")
        for attempt in range(DESTROY_ATTEMPTS):
            try:
                await self.provider.destroy(st.instance_id)
                break
            except (RemoteUnavailable, ConnectionLost) as exc:
                log.warning("run %s: destroying %s failed (%s)", self.job.run_id, st.instance_id, exc)
                if attempt == DESTROY_ATTEMPTS - 1:
                    st.message = f"destroying instance {st.instance_id} failed: {exc}; the reaper retries at start"
                    self.publish("destroy_failed")
                    return
                await asyncio.sleep(min(5.0, self.poll * (attempt + 1)))
        log.info("run %s: %s instance %s destroyed (cost $%.4f)", self.job.run_id, self.provider.name,
                 st.instance_id, st.cost())
        st.released()
        self.publish()


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)

"""Following one ComfyUI prompt to its end: WebSocket messages first, `/queue` + `/history` always.

ComfyUI drops messages for a client with no socket and forgets every prompt when it restarts, so the
WebSocket alone could hang a job. Messages give fast progress and completion; a reconcile (`/queue`,
then `/history`) after every (dis)connect and every `poll_interval` seconds makes a missed message
harmless; an inactivity deadline ends a stuck prompt. Cancelling a prompt lives here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.comfyui.client import ComfyClient, ComfyRefused, PromptWatch, WsEvent
from sidecar.errors import ComfyUnavailable, JobCancelled, JobFailed, PromptLost

log = logging.getLogger("sidecar.comfyui")

Outputs = dict[str, Any]  # history/`executed` outputs: {node_id: {"images": [{filename, subfolder, type}]}}


@dataclass(frozen=True)
class FollowOptions:
    poll_interval: float  # seconds between reconcile polls while the prompt is live
    inactivity_timeout: float  # no sign of life this long: interrupt and fail as `timeout`
    unavailable_deadline: float  # ComfyUI unreachable (but not refusing) this long: comfyui_unavailable


class PromptFollower:
    def __init__(
        self,
        client: ComfyClient,
        watch: PromptWatch,
        *,
        on_progress: Callable[[int, int], None],
        cancel_event: asyncio.Event,
        options: FollowOptions,
        progress_nodes: set[str] | None = None,
        on_queued: Callable[[int | None], None] | None = None,
        on_preview: Callable[[int, int, bytes], None] | None = None,
        steps: int = 0,
    ):
        self.client = client
        # Only the sampler's steps make the job's progress bar; other nodes (SaveImageWebsocket, tiled
        # VAE decode) report their own 0..1 that would reset it.
        self.progress_nodes = progress_nodes or None
        self.watch = watch
        self.prompt_id = watch.prompt_id
        self.on_progress = on_progress
        self.on_queued = on_queued
        self.on_preview = on_preview
        self._step = (0, steps)  # the last progress (value, max): what a preview belongs to
        self.cancel_event = cancel_event
        self.options = options
        self.where: str = "posted"  # "posted" | "pending" | "running"
        self.outputs: Outputs = {}
        self.cancel_sent = False
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self._unreachable_since: float | None = None

    async def run(self, *, reconcile_first: bool = False) -> Outputs:
        """Wait for the prompt to finish and return its outputs; raise JobFailed / JobCancelled /
        PromptLost / ComfyUnavailable otherwise."""
        if reconcile_first:
            done = await self._reconcile()
            if done is not None:
                return done
        opts = self.options
        next_poll = self._loop.time() + opts.poll_interval
        cancel_wait = asyncio.ensure_future(self.cancel_event.wait())
        try:
            while True:
                if self.cancel_event.is_set() and not self.cancel_sent:
                    done = await self._cancel()
                    if done is not None:
                        return done
                now = self._loop.time()
                if now >= next_poll:
                    done = await self._reconcile()
                    if done is not None:
                        return done
                    next_poll = self._loop.time() + opts.poll_interval
                deadline = self.last_activity + opts.inactivity_timeout
                if now >= deadline:
                    await self._give_up()
                waiters: set[asyncio.Future[Any]] = {get := asyncio.ensure_future(self.watch.events.get())}
                if not self.cancel_sent:
                    waiters.add(cancel_wait)
                timeout = max(0.0, min(next_poll, deadline) - now)
                finished, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if get in finished:
                    done = await self._handle(get.result())
                    if done is not None:
                        return done
                else:
                    get.cancel()
        finally:
            cancel_wait.cancel()

    def _touch(self) -> None:
        self.last_activity = self._loop.time()

    def _set_where(self, where: str, ahead: int | None = None) -> None:
        if where == "pending":
            # Waiting behind other prompts (the artist's own, in ComfyUI's UI) is not inactivity: the
            # job says how many are ahead instead, and the inactivity clock starts when it runs.
            self._touch()
        elif where != self.where:
            self._touch()
        if self.on_queued is not None and (where == "pending" or self.where == "pending"):
            self.on_queued(ahead if where == "pending" else None)
        self.where = where

    async def _handle(self, event: WsEvent) -> Outputs | None:
        if event.kind in ("connected", "disconnected"):
            # Whatever happened while no socket was open is only in /queue and /history now.
            return await self._reconcile()
        kind, data = event.type, event.data
        if event.kind == "preview":
            self._touch()
            step, total = self._step
            if self.on_preview is not None:
                # The metadata form comes before its step's `progress`, the legacy one after it.
                self.on_preview(min(step + 1, total) if data.get("before_progress") else step, total, data["image"])
            return None
        if kind == "executing" and "prompt_id" not in data:
            if self.where == "running":
                self._touch()
            return None
        self._touch()
        if kind == "progress":
            self._set_where("running")
            if self.progress_nodes is None or str(data.get("node")) in self.progress_nodes:
                self._step = (int(data.get("value", 0)), int(data.get("max", 0)))
                self.on_progress(*self._step)
        elif kind in ("execution_start", "execution_cached", "progress_state"):
            self._set_where("running")
        elif kind == "executed":
            self.outputs[str(data.get("node"))] = data.get("output") or {}
        elif kind == "execution_success":
            if has_images(self.outputs):
                # The image is on disk once `executed` was sent; no need to wait for `executing null`.
                return dict(self.outputs)
        elif kind == "executing" and data.get("node") is None:
            # The prompt is completely finished and its history entry written.
            entry = await self._history()
            if entry is not None:
                return self._from_history(entry)
            if has_images(self.outputs):
                return dict(self.outputs)
            return await self._reconcile()
        elif kind == "execution_error":
            raise execution_failed(self.prompt_id, data)
        elif kind == "execution_interrupted":
            raise self._interrupted(data)
        return None

    async def _history(self) -> dict[str, Any] | None:
        try:
            return await self.client.history(self.prompt_id)
        except ComfyRefused as exc:
            raise self._lost_with_process(exc) from None
        except ComfyUnavailable:
            self._unreachable()
            return None

    async def _reconcile(self) -> Outputs | None:
        """Where is the prompt? Queue first, then history: a prompt leaves the queue only after its
        history entry is written, so this order cannot miss one that finished in between."""
        try:
            queue = await self.client.queue()
            where = queue.where(self.prompt_id)
            entry = None if where else await self.client.history(self.prompt_id)
        except ComfyRefused as exc:
            raise self._lost_with_process(exc) from None
        except ComfyUnavailable:
            self._unreachable()
            return None
        self._unreachable_since = None
        if where is not None:
            self._set_where(where, queue.ahead_of(self.prompt_id))
            return None
        if entry is not None:
            return self._from_history(entry)
        raise PromptLost(
            f"ComfyUI has no record of prompt {self.prompt_id}: it is neither queued, running nor in its "
            "history (ComfyUI restarted, or its queue was cleared).",
            {"prompt_id": self.prompt_id, "reason": "unknown_to_comfyui"},
        )

    def _lost_with_process(self, exc: ComfyUnavailable) -> PromptLost:
        return PromptLost(
            f"ComfyUI stopped while it held prompt {self.prompt_id}; a restarted ComfyUI forgets its queue "
            "and history.",
            {"prompt_id": self.prompt_id, "reason": "comfyui_stopped", "cause": exc.message, **exc.details},
        )

    def _unreachable(self) -> None:
        now = self._loop.time()
        if self._unreachable_since is None:
            self._unreachable_since = now
        elif now - self._unreachable_since > self.options.unavailable_deadline:
            raise ComfyUnavailable(
                f"ComfyUI at {self.client.base_url} has not answered for "
                f"{self.options.unavailable_deadline:g} s while running prompt {self.prompt_id}.",
                {"url": self.client.base_url, "prompt_id": self.prompt_id},
            )

    def _from_history(self, entry: dict[str, Any]) -> Outputs:
        status = entry.get("status") or {}
        for item in status.get("messages") or []:
            if not (isinstance(item, list) and len(item) == 2):
                continue
            name, data = item
            if name == "execution_error":
                raise execution_failed(self.prompt_id, data)
            if name == "execution_interrupted":
                raise self._interrupted(data)
        if status.get("status_str") == "success" or status.get("completed"):
            return entry.get("outputs") or {}
        raise JobFailed(
            f"ComfyUI ended prompt {self.prompt_id} with status {status.get('status_str')!r} and no error message.",
            {"prompt_id": self.prompt_id, "status": status}, code="execution_error",
        )

    def _interrupted(self, data: dict[str, Any]) -> JobCancelled:
        if self.cancel_sent:
            return JobCancelled()
        # Someone pressed Cancel in ComfyUI's own UI (or another client interrupted): the user stopped
        # it, so it ends cancelled like a cancel through our API, with a message saying where it came from.
        return JobCancelled(
            f"ComfyUI interrupted prompt {self.prompt_id} at node {data.get('node_id')} ({data.get('node_type')}): "
            "it was interrupted in ComfyUI (its Cancel button or another client), not by this daemon."
        )

    async def _cancel(self) -> Outputs | None:
        """Stop the prompt the way ComfyUI allows: delete it while pending, interrupt it while running.
        Returns outputs if it had already finished; raises JobCancelled once ComfyUI confirms."""
        self.cancel_sent = True
        try:
            queue = await self.client.queue()
            where = queue.where(self.prompt_id)
            if where == "pending":
                await self.client.delete_from_queue([self.prompt_id])
                queue = await self.client.queue()
                where = queue.where(self.prompt_id)
                if where is None:
                    log.info("prompt %s deleted from ComfyUI's queue", self.prompt_id)
                    raise JobCancelled()
            if where == "running":
                # Takes effect at the next sampler step; `execution_interrupted` confirms it.
                await self.client.interrupt(self.prompt_id)
                log.info("prompt %s: interrupt sent", self.prompt_id)
                self._touch()
                return None
            if where == "pending":
                return None  # delete did not take yet; the next poll or the deadline settles it
            entry = await self.client.history(self.prompt_id)
        except ComfyUnavailable:
            # Unreachable or gone: nothing of ours runs there any more that we could stop.
            raise JobCancelled() from None
        if entry is not None:
            return self._from_history(entry)
        raise JobCancelled()

    async def _give_up(self) -> None:
        seconds = self.options.inactivity_timeout
        try:
            where = (await self.client.queue()).where(self.prompt_id)
            if where == "running":
                await self.client.interrupt(self.prompt_id)
            elif where == "pending":
                await self.client.delete_from_queue([self.prompt_id])
        except ComfyUnavailable:
            where = None
        raise JobFailed(
            f"ComfyUI showed no progress on prompt {self.prompt_id} for {seconds:g} s; the daemon stopped it.",
            {"prompt_id": self.prompt_id, "inactivity_timeout": seconds, "where": where or self.where},
            code="timeout",
        )


def has_images(outputs: Outputs) -> bool:
    return any((o or {}).get("images") for o in outputs.values())


def execution_failed(prompt_id: str, data: dict[str, Any]) -> JobFailed:
    node_id, node_type = data.get("node_id"), data.get("node_type")
    exc_type = data.get("exception_type") or "error"
    exc_message = str(data.get("exception_message") or "").strip()
    return JobFailed(
        f"ComfyUI failed at node {node_id} ({node_type}): {exc_type}: {exc_message}",
        {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": node_type,
            "exception_type": data.get("exception_type"),
            "exception_message": data.get("exception_message"),
            "traceback": data.get("traceback") or [],
        },
        code="execution_error",
    )

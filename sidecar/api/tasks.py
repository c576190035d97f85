"""Commands the daemon runs for the studio: a run's checkpoint sweep (`sidecar loras sweep`) and a
training folder built from reference images (`sidecar dataset crop|flip|caption|reg`). Each is the very
command a terminal would run, in a child process the daemon starts (and stops at shutdown), talking
back to this daemon over HTTP like any client, so the studio and the terminal cannot disagree: they run
the same code. The renders such a command queues are ordinary jobs (`source` sweep, dataset).

`GET /tasks/{id}` says how one goes: each step's command line, the step running, the state, the exit
code and the last lines of its output. Tasks are kept in memory (the files they write are the record);
a daemon restarted mid-task reports it no more, and the command can be run again (both resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sys
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import Field

from sidecar.api.operations import Query, operation
from sidecar.api.responses import Out, json_response
from sidecar.config import Settings
from sidecar.errors import InvalidField, NotFound
from sidecar.sqlite_store import now_iso

log = logging.getLogger("sidecar.tasks")
routes = web.RouteTableDef()
OUTPUT_LINES = 40
KEPT = 50  # finished tasks remembered (the oldest are forgotten)
# The daemon's settings a child needs that it may have had from flags rather than the environment.
PASSED_SETTINGS = ("token", "models_dir", "ollama_url", "ollama_timeout", "prompt_model", "vision_model",
                   "trigger_word")

TaskStatus = Literal["running", "succeeded", "failed", "cancelled"]


@dataclass
class Task:
    id: str
    kind: str  # sweep | dataset
    subject: str  # what it works on: the run id, the output folder
    steps: list[list[str]]  # the `sidecar ...` arguments of each command, run in order
    status: TaskStatus = "running"
    step: int = 0  # the command running (or the last that ran)
    exit_code: int | None = None
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_LINES))
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


class TaskRunner:
    """Runs tasks' commands one after another in child processes; at most one task per subject."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.tasks: dict[str, Task] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def active(self, kind: str, subject: str) -> Task | None:
        return next((t for t in self.tasks.values() if t.kind == kind and t.subject == subject
                     and t.status == "running"), None)

    def start(self, kind: str, subject: str, steps: Sequence[list[str]],
              result: dict[str, Any] | None = None) -> Task:
        """Run `steps` (each a `sidecar ...` command's arguments; pass the daemon's own URL with --url)."""
        task = Task(uuid.uuid4().hex, kind, subject, [list(s) for s in steps], result=result or {})
        self.tasks[task.id] = task
        self._forget_old()
        self._running[task.id] = asyncio.create_task(self._run(task), name=f"task-{kind}-{task.id}")
        log.info("task %s (%s %s) started: %d command(s)", task.id, kind, subject, len(task.steps))
        return task

    def _forget_old(self) -> None:
        done = [t for t in self.tasks.values() if t.status != "running"]
        for old in done[:max(0, len(done) - KEPT)]:
            self.tasks.pop(old.id, None)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for name in PASSED_SETTINGS:
            value = self.settings.token_value if name == "token" else getattr(self.settings, name)
            if value is not None:
                env[f"SIDECAR_{name.upper()}"] = str(value)
        return env

    async def _run(self, task: Task) -> None:
        try:
            for index, argv in enumerate(task.steps):
                task.step = index
                task.output.append(f"$ sidecar {shlex.join(argv)}")
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "sidecar.cli", *argv, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self._env())
                self._procs[task.id] = proc
                assert proc.stdout is not None
                async for line in proc.stdout:
                    task.output.append(line.decode("utf-8", "replace").rstrip())
                task.exit_code = await proc.wait()
                self._procs.pop(task.id, None)
                if task.exit_code != 0:
                    task.status = "failed"
                    log.warning("task %s: `sidecar %s` exited %d", task.id, shlex.join(argv), task.exit_code)
                    return
            task.status = "succeeded"
        except asyncio.CancelledError:
            task.status = "cancelled"
            raise
        except OSError as exc:  # the interpreter could not be started
            task.status = "failed"
            task.output.append(f"could not start the command: {exc}")
        finally:
            task.finished_at = now_iso()
            self._running.pop(task.id, None)
            log.info("task %s %s", task.id, task.status)

    async def stop(self) -> None:
        for proc in list(self._procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in list(self._procs.values()):
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for running in list(self._running.values()):
            running.cancel()
            with contextlib.suppress(BaseException):
                await running


TASKS = web.AppKey("tasks", TaskRunner)


def setup(app: web.Application, settings: Settings) -> None:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[TASKS] = TaskRunner(settings)
        yield
        await app[TASKS].stop()

    app.cleanup_ctx.append(ctx)
    app.router.add_routes(routes)


def own_url(request: web.Request) -> str:
    """This daemon as the child reaches it: the address the request came in on (loopback: the edge rules)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if sockname:
        host = sockname[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{sockname[1]}"
    return f"http://{request.host}"


class TaskInfo(Out):
    id: str
    kind: str = Field(description="sweep | dataset")
    subject: str = Field(description="what it works on: a training run's id, a training folder")
    status: TaskStatus
    commands: list[str] = Field(description="the commands it runs, in order, as a terminal would type them")
    step: int = Field(description="the index of the command running (or the last that ran)")
    exit_code: int | None = Field(description="the last command's exit code once it ended")
    output: list[str] = Field(description=f"the last {OUTPUT_LINES} lines of the commands' output")
    started_at: str
    finished_at: str | None
    result: dict[str, Any] = Field(description="where to find what it makes (a URL, a folder)")

    @classmethod
    def of(cls, task: Task) -> TaskInfo:
        return cls(id=task.id, kind=task.kind, subject=task.subject, status=task.status,
                   commands=[f"sidecar {shlex.join(s)}" for s in task.steps], step=task.step,
                   exit_code=task.exit_code, output=list(task.output), started_at=task.started_at,
                   finished_at=task.finished_at, result=task.result)


class TaskList(Out):
    tasks: list[TaskInfo] = Field(description="newest first")


@routes.get("/tasks")
@operation("The commands the daemon runs (or ran) for the studio: sweeps, dataset builds", {200: TaskList},
           query=(Query("kind", {"enum": ["sweep", "dataset"]}, "only this kind"),))
async def list_tasks(request: web.Request) -> web.Response:
    kind = request.query.get("kind")
    if kind is not None and kind not in ("sweep", "dataset"):
        raise InvalidField("kind must be sweep or dataset.", {"field": "kind", "value": kind[:32]})
    tasks = [t for t in reversed(request.app[TASKS].tasks.values()) if kind is None or t.kind == kind]
    return json_response(TaskList(tasks=[TaskInfo.of(t) for t in tasks]))


@routes.get("/tasks/{id}")
@operation("One task: its commands, state, exit code and output", {200: TaskInfo}, errors=(NotFound,))
async def get_task(request: web.Request) -> web.Response:
    task = request.app[TASKS].tasks.get(request.match_info["id"])
    if task is None:
        raise NotFound(f"No task with id {request.match_info['id']!r} (tasks are kept until the daemon restarts).",
                       {"taskId": request.match_info["id"]})
    return json_response(TaskInfo.of(task))

"""Managed mode: the daemon runs ComfyUI itself, keeps it alive and stops it with the daemon.

Starts `<comfyui_python> main.py [--force-fp16] --fp32-vae --listen 127.0.0.1 --port P [--cpu] [extra]`
in the install dir (`launch.py`: `--fp32-vae` wins over `--force-fp16` for the VAE, the MPS fp16 VAE
gives black images; `--cpu` where ComfyUI's torch sees no GPU), logs its output to
`<data_dir>/logs/comfyui.log`, waits until `/system_stats` answers, and restarts it with backoff when
it dies. A ComfyUI that exits during start-up CRASH_LOOP_EXITS times in a row (a missing driver, a
broken venv: restarting cannot help) is not started again: `failure` says why (exit code, the end of
its log) to `/health` and to the jobs waiting for it. It does not talk to ComfyUI beyond the
`/system_stats` check (see `client.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import IO

import aiohttp

from sidecar.comfyui.launch import (
    STOPPED_MARK,
    StartupFailure,
    chosen_by_user,
    device_flags,
    extra_args,
    last_run,
    launch_command,
    preview_flags,
    probe_accelerators,
)
from sidecar.config import Settings, http_url

log = logging.getLogger("sidecar.comfyui.supervisor")

STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL on shutdown
STABLE_AFTER = 60.0  # a process that ran this long resets the restart backoff
CRASH_LOOP_EXITS = 3  # start-up exits in a row after which restarting stops


COMFY_LOG_BYTES, COMFY_LOG_BACKUPS = 10 * 1024 * 1024, 3


def rotate(path: Path, limit: int = COMFY_LOG_BYTES, backups: int = COMFY_LOG_BACKUPS) -> None:
    """At a (re)start, a log past `limit` becomes `.1` (`.1` becomes `.2`, ...): the child writes to its
    own descriptor, so a log can only be rotated between runs."""
    try:
        if path.stat().st_size < limit:
            return
    except FileNotFoundError:
        return
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))


class ComfySupervisor:
    def __init__(self, settings: Settings, *, backoff_initial: float = 1.0, backoff_max: float = 30.0,
                 check_interval: float = 0.25):
        if settings.comfyui_dir is None or settings.comfyui_python is None:
            raise ValueError("managed mode needs comfyui_dir and comfyui_python")
        self.comfyui_dir: Path = settings.comfyui_dir
        self.python: Path = settings.comfyui_python
        self.port = settings.comfyui_port
        self.device_setting = settings.device
        self.extra = extra_args(settings.comfyui_extra_args)
        self.previews = settings.previews
        self.command: list[str] | None = None  # decided before the first launch (the device probe)
        self.url = http_url("127.0.0.1", self.port)
        self.start_timeout = settings.comfyui_start_timeout
        self.log_path = settings.logs_dir / "comfyui.log"
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.check_interval = check_interval
        self.ready = asyncio.Event()  # set while our ComfyUI answers /system_stats
        self.starts = 0  # processes launched so far (1 + restarts)
        self.last_exit: int | None = None
        self.failure: StartupFailure | None = None  # set by a start-up exit, cleared once it answers
        self.gave_up = asyncio.Event()  # set when restarting stopped (a crash loop)
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def start(self) -> None:
        self._stopping = False
        self._session = aiohttp.ClientSession()
        self._task = asyncio.create_task(self._keep_alive(), name="comfyui-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self._terminate()
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.ready.clear()

    async def wait_ready(self, timeout: float) -> bool:
        """Whether ComfyUI answers within `timeout`; returns early (False) once restarting stopped."""
        if self.ready.is_set():
            return True
        waits = {asyncio.ensure_future(self.ready.wait()), asyncio.ensure_future(self.gave_up.wait())}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self.ready.is_set()

    async def decide_command(self) -> list[str]:
        """The launch command; asks ComfyUI's python which devices it sees when that decides `--cpu`."""
        if self.command is None:
            found = None
            if self.device_setting == "auto" and not chosen_by_user(self.extra):
                found = await probe_accelerators(self.python)
                log.info("ComfyUI's torch sees %s", ", ".join(k for k, v in (found or {}).items() if v) or
                         ("no GPU" if found is not None else "nothing it could tell"))
            self.command = launch_command(self.python, self.port, device_flags(self.device_setting, self.extra, found),
                                          self.extra, preview_flags(self.previews, self.extra))
        return self.command

    async def _answers(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(self.url + "/system_stats", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _keep_alive(self) -> None:
        delay = self.backoff_initial
        crashes = 0
        while not self._stopping:
            if self._proc is None and await self._answers():
                # Someone else's ComfyUI (a launchd agent, an orphan of a killed daemon) holds the port:
                # a second one could not bind it. Use it while it answers; take over when it goes away.
                log.warning("a ComfyUI already answers on port %d; using it instead of starting one", self.port)
                self.failure = None
                self.ready.set()
                while await self._answers():
                    await asyncio.sleep(max(self.check_interval, 1.0))
                self.ready.clear()
                continue
            started = time.monotonic()
            await self._launch()
            if await self._wait_until_answering():
                log.info("ComfyUI answers on %s (pid %s, %.1f s after launch)", self.url, self.pid,
                         time.monotonic() - started)
                crashes, self.failure = 0, None
                self.ready.set()
                assert self._proc is not None
                code = await self._proc.wait()
                self.ready.clear()
                if self._stopping:
                    return
                await asyncio.to_thread(self._mark_exit, self._proc.pid, code)
                log.warning("ComfyUI (pid %s) exited with code %s; restarting", self._proc.pid, code)
            elif self._proc is not None and self._proc.returncode is None:
                log.warning("ComfyUI did not answer within %g s; killing it and trying again", self.start_timeout)
                await self._terminate()
            else:
                crashes += 1
                if self._proc is not None:
                    await asyncio.to_thread(self._mark_exit, self._proc.pid, self.last_exit)
                run = await asyncio.to_thread(last_run, self.log_path)
                self.failure = StartupFailure(
                    exit_code=self.last_exit, exits=crashes, log_tail=run.tail if run else [],
                    command=self.command or [], log_path=self.log_path, gave_up=crashes >= CRASH_LOOP_EXITS)
                log.warning("%s", self.failure.message())
                if self.failure.gave_up:
                    self._proc = None
                    self.gave_up.set()  # jobs waiting for ComfyUI fail now, with this reason
                    return
            self.last_exit = self._proc.returncode if self._proc is not None else None
            self._proc = None
            if time.monotonic() - started > STABLE_AFTER:
                delay = self.backoff_initial
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    def _mark_exit(self, pid: int, code: int | None, stopped: bool = False) -> None:
        """A line after the run in the log: the exit code, for the daemon and `sidecar doctor` to read.
        It starts a line of its own: a ComfyUI killed mid-sampling last printed a progress bar, which
        tqdm redraws with `\\r` and never ends with a newline."""
        try:
            with open(self.log_path, "a+b") as fh:
                newline = b""
                if fh.seek(0, os.SEEK_END) > 0:
                    fh.seek(-1, os.SEEK_END)
                    newline = b"" if fh.read(1) == b"\n" else b"\n"
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                fh.write(newline + f"=== {stamp} ComfyUI (pid {pid}) exited with code {code}{STOPPED_MARK if stopped else ''}\n".encode())
        except OSError as exc:
            log.warning("cannot write to %s: %s", self.log_path, exc)

    async def _launch(self) -> None:
        cmd = await self.decide_command()
        logfile = await asyncio.to_thread(self._open_log, cmd)
        try:
            # Its own session: a Ctrl-C in the daemon's terminal reaches the daemon, which then stops
            # ComfyUI in order, instead of both dying at once.
            self._proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=self.comfyui_dir, stdin=asyncio.subprocess.DEVNULL, stdout=logfile,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTORCH_ENABLE_MPS_FALLBACK": "1"},
            )
        except OSError as exc:
            log.error("cannot start ComfyUI (%s): %s", " ".join(cmd), exc)
            with contextlib.suppress(OSError):
                with open(self.log_path, "a", encoding="utf-8") as fh:
                    fh.write(f"cannot start {cmd[0]}: {exc}\n")
            self._proc = None
            self.last_exit = None
            return
        finally:
            logfile.close()  # the child holds its own descriptor
        self.starts += 1
        log.info("started ComfyUI: %s (pid %d, cwd %s, log %s)", " ".join(cmd), self._proc.pid,
                 self.comfyui_dir, self.log_path)

    def _open_log(self, cmd: list[str]) -> IO[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        rotate(self.log_path)
        fh = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child, closed by _launch)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        fh.write(f"\n=== {stamp} sidecar starts ComfyUI: {' '.join(cmd)} (cwd {self.comfyui_dir})\n".encode())
        fh.flush()
        return fh

    async def _wait_until_answering(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.returncode is not None:
                if self._proc is not None:
                    self.last_exit = self._proc.returncode
                return False
            if await self._answers():
                return True
            await asyncio.sleep(self.check_interval)
        return False

    async def _terminate(self) -> None:
        """Stop our ComfyUI (SIGTERM, then SIGKILL after STOP_GRACE) and mark its exit in the log: a
        stop by the daemon ends a run as surely as a crash does."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await asyncio.to_thread(self._mark_exit, proc.pid, proc.returncode, True)
        log.info("ComfyUI (pid %d) stopped", proc.pid)

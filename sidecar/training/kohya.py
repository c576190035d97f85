"""Running a process trainer here: kohya's sd-scripts (`train_network.py`, `sdxl_train_network.py`,
`flux_train_network.py`) or ostris ai-toolkit's `run.py`, through its adapter (`adapter.py`: the command, the
output parser, the file names); `ProcessTrainer` is the same for all of them.

Follows `shared/kohya-sd-scripts.md`: the venv's python runs the script directly (exit codes stay
the script's own), in its own session so a cancel can signal the whole process group (signalling
only the leader orphans the trainer, which keeps writing checkpoints), with
`PYTHONUNBUFFERED=1` and stderr merged so `saving checkpoint:` lines arrive in order. "Exit 0 but
no final file" and `avr_loss=nan` are failures. The store and the device lock are the manager's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Settings
from sidecar.errors import InvalidField, JobCancelled
from sidecar.training.adapter import OutputParser, TrainerAdapter
from sidecar.training.checkpoints import safetensors_ok
from sidecar.training.dataset import stage_for_kohya
from sidecar.training.kohya_args import KohyaAdapter, build_args, precision
from sidecar.training.kohya_tokenizer import seed_tokenizer_cache
from sidecar.training.parser import BarUpdate, CheckpointSaved
from sidecar.training.spec import TrainerHooks, TrainJob, TrainResult, training_failed

__all__ = ["KohyaTrainer", "ProcessTrainer", "build_args", "locate", "precision", "require", "stop_orphan"]

log = logging.getLogger("sidecar.training.kohya")

SCRIPT = "train_network.py"
KILL_GRACE_S = 10.0  # SIGTERM to the group, then SIGKILL if anything is still alive
ORPHAN_MARKERS = ("train_network", "run.py")  # kohya's scripts (sd15, sdxl_, flux_), ai-toolkit's run.py


@dataclass(frozen=True)
class KohyaInstall:
    script: Path  # .../sd-scripts/train_network.py
    python: Path  # the kohya venv's python

    @property
    def cwd(self) -> Path:
        return self.script.parent  # the scripts import `library.*` relative to their folder


def locate(settings: Settings) -> KohyaInstall | None:
    """The configured kohya install, or None. `kohya_dir` may be sd-scripts itself or the kohya_ss
    GUI checkout that contains `sd-scripts/`; the python defaults to the venv beside them."""
    if settings.kohya_dir is None:
        return None
    root = settings.kohya_dir
    script = next((p for p in (root / SCRIPT, root / "sd-scripts" / SCRIPT) if p.is_file()), None)
    if script is None:
        return None
    if settings.kohya_python is not None:
        python = settings.kohya_python
    else:
        candidates = [d / "venv" / "bin" / "python" for d in (root, script.parent, root.parent)]
        python = next((p for p in candidates if p.exists()), None)
        if python is None:
            return None
    return KohyaInstall(script=script, python=python)


def require(settings: Settings) -> KohyaInstall:
    install = locate(settings)
    if install is None:
        where = settings.kohya_dir or "not set"
        raise InvalidField(
            f"engine 'kohya' needs kohya_ss: set kohya_dir to the sd-scripts folder (now: {where}) and "
            "kohya_python to its venv's python, or train with engine 'embedded'.",
            {"field": "engine", "kohyaDir": str(settings.kohya_dir) if settings.kohya_dir else None},
        )
    return install


def training_device(settings: Settings) -> str:
    """The device kohya's accelerate will pick: it chooses MPS by itself on Apple Silicon."""
    if settings.device != "auto":
        return settings.device
    if sys.platform == "darwin":
        return "mps"
    try:
        import torch  # the daemon's torch only stands in for kohya's when it is there

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


class ProcessTrainer:
    """A process trainer run here: started detached (its own process group), its output parsed by its adapter,
    stopped by signalling the group."""

    name = "kohya"

    def __init__(self, settings: Settings, install: KohyaInstall, adapter: TrainerAdapter):
        self.settings = settings
        self.install = install
        self.adapter = adapter

    @property
    def tokenizer_cache(self) -> Path:
        return self.settings.data_dir / "kohya-tokenizer"

    def label(self, job: TrainJob) -> str:
        return self.adapter.label(job.spec.family)

    def command(self, job: TrainJob) -> tuple[list[str], list[str]]:
        launch = self.launch(job)
        return [str(self.install.python), "-u", str(self.install.cwd / launch.script), *launch.args], launch.warnings

    def launch(self, job: TrainJob):
        device = training_device(self.settings)
        cache = self.tokenizer_cache if self.adapter.name == "kohya" else None
        return self.adapter.launch(job, device, cache)

    async def run(self, job: TrainJob, hooks: TrainerHooks) -> TrainResult:
        launch = self.launch(job)
        argv = [str(self.install.python), "-u", str(self.install.cwd / launch.script), *launch.args]
        for w in launch.warnings:
            hooks.warning(w)
        await asyncio.to_thread(self._prepare, job, launch.files)
        env = {**os.environ, "PYTORCH_ENABLE_MPS_FALLBACK": "1", "PYTHONUNBUFFERED": "1",
               "COLUMNS": "200"}  # rich wraps log records at 80 columns without a TTY
        log.info("run %s: starting %s: %s", job.run_id, self.adapter.name, " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.install.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: a cancel reaches every process of it
            )
        except OSError as exc:
            raise training_failed(f"Cannot start {self.adapter.name}'s python {argv[0]}: {exc.strerror or exc}.",
                                  "not_started", command=argv[:3]) from None
        if hooks.started is not None:
            hooks.started(proc.pid)
        parser = self.adapter.parser(job.resume.step if job.resume is not None else 0, job.spec.output_name)
        run = _Run(job, hooks, parser, self.adapter)
        log_path = job.work_dir / "train.log"
        cancel_wait = asyncio.ensure_future(hooks.cancel.wait())
        cancelled = False
        try:
            with open(log_path, "ab") as log_file:
                assert proc.stdout is not None
                while True:
                    read = asyncio.ensure_future(proc.stdout.read(65536))
                    await asyncio.wait({read, cancel_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        read.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await read
                    else:
                        chunk = read.result()
                        if not chunk:
                            break
                        await asyncio.to_thread(log_file.write, chunk)
                        await run.handle(parser.feed(chunk))
                    if (hooks.cancel.is_set() or parser.nan_seen) and not cancelled:
                        cancelled = True
                        await terminate_group(proc)
                await run.handle(parser.close())
            code = await proc.wait()
        finally:
            cancel_wait.cancel()
            if proc.returncode is None:  # the daemon is stopping, or a bug: never leave it training
                await terminate_group(proc)
        await run.flush()
        return self._outcome(job, hooks, parser, code)

    def _prepare(self, job: TrainJob, extra: dict[str, str]) -> None:
        job.work_dir.mkdir(parents=True, exist_ok=True)
        job.output_dir.mkdir(parents=True, exist_ok=True)
        stage_for_kohya(job.dataset, job.work_dir)
        for name, text in extra.items():
            (job.work_dir / name).write_text(text, encoding="utf-8")
        if self.adapter.name == "kohya":
            seed_tokenizer_cache(self.settings, self.tokenizer_cache)

    def _outcome(self, job: TrainJob, hooks: TrainerHooks, parser: OutputParser, code: int) -> TrainResult:
        tail = list(parser.tail)[-20:]
        last_step = parser.last.step if parser.last else (job.resume.step if job.resume else 0)
        if parser.nan_seen:
            raise training_failed(
                f"The loss became NaN by step {last_step}; training was stopped. The checkpoints saved before "
                "it are kept: lower the learning rate and train again.",
                "nan_loss", step=last_step, exitCode=code, logTail=tail)
        if hooks.cancel.is_set():
            raise JobCancelled()
        if code != 0:
            err = parser.error
            what = err.summary if err else f"exit status {code}"
            if err is not None and STATE_DICT_MISMATCH in err.message:
                # kohya's SD1 loader builds full-size SD 1.x modules and loads the file into them.
                what = (f"{base_model_hint(job)} ({what})")
            if code < 0:  # killed by a signal nobody here sent (the OOM killer, a user's kill)
                with contextlib.suppress(ValueError):
                    what = f"stopped by {signal.Signals(-code).name}" + (f" ({what})" if err else "")
            raise training_failed(
                f"{self.label(job)} failed at step {last_step}: {what}",
                "crash", exitCode=code, exception=err.type if err else None,
                exceptionMessage=err.message if err else None,
                exceptionDetails=err.continued if err else None, step=last_step, logTail=tail)
        if parser.no_data:
            raise training_failed(
                f"kohya found no training images in {job.work_dir / 'img'} and exited without training "
                "(it reads <repeats>_<class> folders under train_data_dir).",
                "no_data", exitCode=code, logTail=tail)
        if not job.final_file.is_file() or not safetensors_ok(job.final_file):
            raise training_failed(
                f"{self.adapter.name} exited normally but wrote no final LoRA ({job.final_file.name}).",
                "no_output", exitCode=code, step=last_step, logTail=tail)
        return TrainResult(final_file=job.final_file, step=max(last_step, job.spec.steps))


STATE_DICT_MISMATCH = "Error(s) in loading state_dict"


def base_model_hint(job: TrainJob) -> str:
    return (f"the base model {job.base_model.name} does not fit the full-size SD 1.x network kohya's "
            "train_network.py builds (an SDXL/SD2 file, or the tiny test models?)")


class KohyaTrainer(ProcessTrainer):
    """kohya's sd-scripts here: `train_network.py` and its SDXL and Flux siblings in the same folder."""

    name = "kohya"

    def __init__(self, settings: Settings, install: KohyaInstall | None = None):
        super().__init__(settings, install or require(settings), KohyaAdapter())


class KohyaRelay:
    """Turns kohya output parser events into hook calls, for a run here or on a remote machine (whose
    `flush` pulls the file first). The owner provides `parser`, `hooks`, `pending`, `device_reported`
    and `flush`: a `saving checkpoint:` line is printed *before* the file is written, so pending saves
    are flushed only once the next bar redraw (or the end of the process) shows the save is over."""

    parser: OutputParser
    hooks: TrainerHooks
    pending: list[CheckpointSaved]
    device_reported: bool

    async def handle(self, events: list[BarUpdate | CheckpointSaved]) -> None:
        for event in events:
            if isinstance(event, CheckpointSaved):
                self.pending.append(event)
            else:
                await self.flush()
                self.hooks.progress(event.step, event.total, event.loss)
        for line in self.parser.take_lines():
            self.hooks.log(line)
        if self.parser.device and not self.device_reported and self.hooks.device is not None:
            self.device_reported = True
            self.hooks.device(self.parser.device)

    async def flush(self) -> None:
        raise NotImplementedError


class _Run(KohyaRelay):
    """A local run's relay: a checkpoint is announced once its file and state folder are written."""

    def __init__(self, job: TrainJob, hooks: TrainerHooks, parser: OutputParser, adapter: TrainerAdapter):
        self.job = job
        self.adapter = adapter
        self.hooks = hooks
        self.parser = parser
        self.pending: list[CheckpointSaved] = []
        self.device_reported = False

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        for saved in pending:
            if saved.step is None:
                continue  # the final file is the run's result, not a checkpoint
            path = Path(saved.path)
            if not path.is_absolute():
                path = self.job.output_dir / path.name
            found = await asyncio.to_thread(self._complete, path)
            if found is not None:
                self.hooks.checkpoint(saved.step, path, found[0])

    def _complete(self, path: Path) -> tuple[Path | None] | None:
        if not (path.is_file() and safetensors_ok(path)):
            return None
        return (self.adapter.state_for(path),)


async def terminate_group(proc: asyncio.subprocess.Process, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the trainer's whole process group (launcher, trainer, data-loader workers), then
    SIGKILL whatever is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
            # The leader is gone; children of the group may linger a moment longer.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except asyncio.TimeoutError:
            continue


def stop_orphan(pid: int | None) -> bool:
    """Stop a trainer that outlived the daemon (it runs in its own process group, so it does). Only
    a process whose command line is a trainer's is signalled: a recycled pid is left alone."""
    if not pid:
        return False
    try:
        os.killpg(pid, 0)
        cmd = subprocess.run(["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True,
                             timeout=5).stdout
    except (ProcessLookupError, PermissionError, OSError, subprocess.SubprocessError):
        return False
    if not any(marker in cmd for marker in ORPHAN_MARKERS):
        return False
    log.warning("stopping orphaned trainer process group %d", pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for _ in range(50):
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            time.sleep(0.1)
    return True

"""The kohya_ss sd-scripts adapter: builds `train_network.py`'s argument list and runs it.

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
from sidecar.dataprep.kohya_layout import CAPTION_SUFFIX
from sidecar.errors import InvalidField, JobCancelled
from sidecar.training.checkpoints import safetensors_ok, state_dir_for
from sidecar.training.dataset import stage_for_kohya
from sidecar.training.kohya_tokenizer import seed_tokenizer_cache
from sidecar.training.parser import BarUpdate, CheckpointSaved, KohyaOutputParser
from sidecar.training.spec import TrainerHooks, TrainJob, TrainResult, training_failed

log = logging.getLogger("sidecar.training.kohya")

SCRIPT = "train_network.py"
KILL_GRACE_S = 10.0  # SIGTERM to the group, then SIGKILL if anything is still alive


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


def precision(device: str) -> tuple[str, str, list[str]]:
    """(--mixed_precision, --save_precision, warnings). The artist's config asks fp16; the
    accelerate kohya pins refuses fp16 (and bf16) mixed precision on MPS and fp16 on CPU fails at
    the first step, so only CUDA gets it; elsewhere fp32 compute, fp16 files."""
    if device == "cuda":
        return "fp16", "fp16", []
    return "no", "fp16", [
        f"fp16 mixed precision is not available on {device} with kohya's pinned accelerate: training with "
        "--mixed_precision=no (fp32 compute) and --save_precision=fp16 (fp16 LoRA files)."
    ]


def build_args(job: TrainJob, device: str, tokenizer_cache: Path) -> tuple[list[str], list[str]]:
    """The canonical `train_network.py` arguments for a job, and the warnings they imply. The data
    folders are the run's staging links (`stage_for_kohya`)."""
    s = job.spec
    mixed, save, warnings = precision(device)
    args = [
        f"--pretrained_model_name_or_path={job.base_model}",
        f"--train_data_dir={job.work_dir / 'img'}",
        f"--output_dir={job.output_dir}",
        f"--output_name={s.output_name}",
        f"--caption_extension={CAPTION_SUFFIX}",  # default `.caption` would ignore every .txt caption
        "--network_module=networks.lora",
        f"--network_dim={s.network_dim}",
        f"--network_alpha={s.network_alpha:g}",
        f"--resolution={s.resolution},{s.resolution}",
        "--train_batch_size=1",
        "--optimizer_type=AdamW",  # never AdamW8bit (bitsandbytes) or --xformers: neither exists on a Mac
        f"--learning_rate={s.learning_rate:g}",
        f"--max_train_steps={s.steps}",
        f"--save_every_n_steps={s.save_every}",
        "--save_model_as=safetensors",
        f"--mixed_precision={mixed}",
        f"--save_precision={save}",
        "--save_state",
        # Each state holds the optimizer (about 3x the LoRA): keep the last two step states, not all of
        # them. Resume takes the newest complete one; the LoRA checkpoints themselves are all kept.
        f"--save_last_n_steps_state={s.save_every}",
        "--cache_latents",
        # torch's scaled_dot_product_attention (CPU, MPS, CUDA alike). Without it sd-scripts' U-Net computes
        # attention naively: measured at 512 px on CPU, 19.4 s/step and 11.8 GiB peak against our embedded
        # trainer's 9.9 s and 7.6 GiB (bench/results/train-vs-kohya-cpu.json); never --xformers (no Mac build).
        "--sdpa",
        f"--seed={s.seed}",
        f"--metadata_title={s.output_name}",
        f"--metadata_trigger_phrase={s.trigger_word}",
        f"--tokenizer_cache_dir={tokenizer_cache}",  # later runs work offline
    ]
    if job.dataset.reg_subsets:
        args.append(f"--reg_data_dir={job.work_dir / 'reg'}")
    if job.resume is not None:
        # Without the skip the step counter restarts at 0 and trains a whole run more (§7).
        args += [f"--resume={job.resume.state_path}", "--skip_until_initial_step"]
    return args, warnings


class KohyaTrainer:
    name = "kohya"

    def __init__(self, settings: Settings, install: KohyaInstall | None = None):
        self.settings = settings
        self.install = install or require(settings)

    @property
    def tokenizer_cache(self) -> Path:
        return self.settings.data_dir / "kohya-tokenizer"

    def command(self, job: TrainJob) -> tuple[list[str], list[str]]:
        device = training_device(self.settings)
        args, warnings = build_args(job, device, self.tokenizer_cache)
        return [str(self.install.python), "-u", str(self.install.script), *args], warnings

    async def run(self, job: TrainJob, hooks: TrainerHooks) -> TrainResult:
        argv, warnings = self.command(job)
        for w in warnings:
            hooks.warning(w)
        await asyncio.to_thread(self._prepare, job)
        env = {**os.environ, "PYTORCH_ENABLE_MPS_FALLBACK": "1", "PYTHONUNBUFFERED": "1",
               "COLUMNS": "200"}  # rich wraps log records at 80 columns without a TTY
        log.info("run %s: starting kohya: %s", job.run_id, " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self.install.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: a cancel reaches every process of it
            )
        except OSError as exc:
            raise training_failed(f"Cannot start kohya's python {argv[0]}: {exc.strerror or exc}.", "not_started",
                                  command=argv[:3]) from None
        if hooks.started is not None:
            hooks.started(proc.pid)
        parser = KohyaOutputParser()
        if job.resume is not None:
            parser.offset = job.resume.step  # kohya's `skipping N steps` line confirms it
        run = _Run(job, hooks, parser)
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

    def _prepare(self, job: TrainJob) -> None:
        job.work_dir.mkdir(parents=True, exist_ok=True)
        job.output_dir.mkdir(parents=True, exist_ok=True)
        stage_for_kohya(job.dataset, job.work_dir)
        seed_tokenizer_cache(self.settings, self.tokenizer_cache)

    def _outcome(self, job: TrainJob, hooks: TrainerHooks, parser: KohyaOutputParser, code: int) -> TrainResult:
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
                f"kohya's train_network.py failed at step {last_step}: {what}",
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
                f"kohya exited normally but wrote no final LoRA ({job.final_file.name}).",
                "no_output", exitCode=code, step=last_step, logTail=tail)
        return TrainResult(final_file=job.final_file, step=max(last_step, job.spec.steps))


STATE_DICT_MISMATCH = "Error(s) in loading state_dict"


def base_model_hint(job: TrainJob) -> str:
    return (f"the base model {job.base_model.name} does not fit the full-size SD 1.x network kohya's "
            "train_network.py builds (an SDXL/SD2 file, or the tiny test models?)")


class KohyaRelay:
    """Turns kohya output parser events into hook calls, for a run here or on a remote machine (whose
    `flush` pulls the file first). The owner provides `parser`, `hooks`, `pending`, `device_reported`
    and `flush`: a `saving checkpoint:` line is printed *before* the file is written, so pending saves
    are flushed only once the next bar redraw (or the end of the process) shows the save is over."""

    parser: KohyaOutputParser
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

    def __init__(self, job: TrainJob, hooks: TrainerHooks, parser: KohyaOutputParser):
        self.job = job
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

    @staticmethod
    def _complete(path: Path) -> tuple[Path | None] | None:
        if not (path.is_file() and safetensors_ok(path)):
            return None
        state = state_dir_for(path)
        return (state if state.is_dir() else None,)


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
    if "train_network" not in cmd:
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

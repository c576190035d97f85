"""Pulling what the trainer wrote: each step checkpoint (and its state folder) as it is saved, the ones
it finished when a run is stopped (the newest first), and the final LoRA at its end, each checked whole
(`sidecar.training.remote_files`) and reported as a local run reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
from pathlib import Path

from sidecar.errors import JobFailed
from sidecar.remote.shell import CommandFailed, ConnectionLost
from sidecar.remote.ssh import stop_group_command
from sidecar.remote.state import PulledFile
from sidecar.training import checkpoints as files
from sidecar.training import remote_files as transfer
from sidecar.training.remote.bucket import BucketPathFailed, fetch_lora
from sidecar.training.remote.base import SessionBase
from sidecar.training.spec import TrainResult, training_failed

log = logging.getLogger("sidecar.training.remote")


class Pulling(SessionBase):
    # The trainer exited well and its files are being pulled: a daemon stop now must keep the machine (on
    # vast.ai the only copy of the final LoRA) for the next start to pull from.
    trainer_succeeded = False

    async def wind_down(self) -> None:
        """Cancel or limit: stop the trainer, then pull the checkpoints it finished (the last one first)."""
        if self.shell is None or not self.st.work_dir:
            return
        self.publish("pulling")
        with contextlib.suppress(ConnectionLost, CommandFailed, OSError):
            await self.shell.run(stop_group_command(f"{self.st.work_dir}/pid"), check=False)
        with contextlib.suppress(ConnectionLost, CommandFailed, OSError):
            await self.pull_finished()

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        for saved in pending:
            if saved.step is not None:
                await self.pull(saved.step, saved.path)

    async def pull(self, step: int, remote: str) -> PulledFile | None:
        """Download a step checkpoint and its state folder (checked), then report it as a local run does."""
        if any(p.step == step for p in self.st.pulled):
            return None
        shell = self._shell()
        local = self.job.output_dir / posixpath.basename(remote)
        got = await self.fetch_lora(remote, local)
        if got is None:
            return None
        state = await transfer.fetch_state(shell, remote, local) if self.adapter.name == "kohya" else None
        if state is not None:
            kept = await asyncio.to_thread(files.prune_states, self.job.output_dir, self.job.spec.output_name,
                                           files.STATE_FILES["remote"])
            state = state if kept == state else None  # pulled after a newer one (the wind-down goes newest first)
        pulled = PulledFile(step=step, path=str(local), size=got[0], sha256=got[1], state=str(state) if state else None)
        self.st.pulled.append(pulled)
        self.publish()
        await self.pull_samples()
        self.hooks.checkpoint(step, local, state)
        return pulled

    async def pull_samples(self) -> None:
        """The sample images the trainer wrote there and not pulled yet (kohya's before a save, ai-toolkit's
        after it: the next save or the end brings them), into the same folder here."""
        if not self.job.spec.sample_prompts:
            return
        there = str(self.adapter.samples_dir(Path(self.output_there)))
        here = self.adapter.samples_dir(self.job.output_dir)
        shell = self._shell()
        for name in await shell.listdir(there):
            if self.adapter.sample_step(name, self.job.spec.output_name) is None or (here / name).is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                await shell.get(f"{there}/{name}", here / name)

    async def fetch_lora(self, remote: str, local: Path) -> tuple[int, str] | None:
        """A LoRA file from the machine, checked: through the bucket when the run has one, else (or when
        that path fails) over SSH."""
        shell = self._shell()
        if self.bucket is not None:
            try:
                return await fetch_lora(self.bucket, shell, self.job.run_id, remote, local)
            except BucketPathFailed as exc:
                log.warning("run %s: %s through the bucket failed (%s); fetching it over SSH", self.job.run_id,
                            posixpath.basename(remote), exc)
        return await transfer.fetch(shell, remote, local)

    async def pull_finished(self) -> None:
        """Every step checkpoint on the machine not pulled yet, newest first (the last one matters most)."""
        out = self.output_there
        name = self.job.spec.output_name
        for step in await transfer.finished_steps(self._shell(), out, name, self.adapter):
            with contextlib.suppress(JobFailed):
                await self.pull(step, f"{out}/{self.adapter.step_file_name(name, step)}")

    @property
    def output_there(self) -> str:
        return str(self.adapter.output_dir(Path(self.st.work_dir or ""), self.job.spec.output_name))

    async def finish(self, code: int) -> TrainResult:
        job, parser = self.job, self.parser
        tail = list(parser.tail)[-20:]
        if code != 0:
            err = parser.error
            raise training_failed(
                f"{self.adapter.label(job.spec.family)} failed on the machine at step {self.step}: "
                f"{err.summary if err else f'exit status {code}'}", "crash", exitCode=code,
                exception=err.type if err else None, exceptionMessage=err.message if err else None,
                step=self.step, logTail=tail)
        if parser.no_data:
            raise training_failed("kohya found no training images on the machine and exited without training.",
                                  "no_data", exitCode=code, logTail=tail)
        self.trainer_succeeded = True
        self.publish("pulling")
        await self.pull_finished()  # a save the bar never redrew after
        final = f"{self.output_there}/{job.spec.output_name}.safetensors"
        got = await self.fetch_lora(final, job.final_file)
        if got is None:
            raise training_failed(f"{self.adapter.name} exited normally but wrote no final LoRA "
                                  f"({job.final_file.name}).",
                                  "no_output", exitCode=code, step=self.step, logTail=tail)
        log.info("run %s: final LoRA pulled (%d bytes, sha256 %s)", job.run_id, got[0], got[1][:12])
        await self.pull_samples()
        return TrainResult(final_file=job.final_file, step=max(self.step, job.spec.steps))

"""The remote trainer: the same kohya run, on a rented GPU (vast.ai) or an SSH host, reported exactly as a
local run is (the same output parser, hooks, checkpoints and final file).

1. Choose an offer under the limits and rent it, labelled with the run id (`sidecar.remote.plan`).
2. Wait until it runs and kohya is installed; connect (SSH, the host key pinned at first sight).
3. Upload the dataset, the base model, CLIP's tokenizer and the canonical `train.sh` (SFTP).
4. Start `train_network.py` detached (its own session), with the arguments a local kohya run gets.
5. Tail its log into `KohyaOutputParser`; pull each checkpoint (and its state) as it is saved, checking
   size and sha256; watch the cost and time limits.
6. Pull the final LoRA; destroy the instance on every ending: success, failure, cancel, limit. Only a
   daemon shutdown leaves it training (`detached`): the next start re-attaches to it.

A dropped connection is reconnected without touching the trainer; an instance that is gone is replaced
and the run resumes there from the last pulled state. The machine is a `Provider` (search, create,
status, destroy, list, shell); nothing here knows which.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sidecar.config import Settings
from sidecar.errors import JobCancelled, JobFailed, RemoteUnavailable, SidecarError
from sidecar.remote import machine
from sidecar.remote.plan import choose
from sidecar.remote.provider import Instance, Provider, label_for
from sidecar.remote.providers import limits_of, provider_for
from sidecar.remote.shell import CommandFailed, ConnectionLost, Shell, q
from sidecar.remote.ssh import stop_group_command
from sidecar.remote.state import PulledFile, RemoteState
from sidecar.training import checkpoints as files
from sidecar.training.kohya import KohyaRelay, build_args
from sidecar.training import remote_files as transfer
from sidecar.training.kohya_tokenizer import seed_tokenizer_cache
from sidecar.training.parser import BarUpdate, CheckpointSaved, KohyaOutputParser
from sidecar.training.spec import ResumePoint, TrainerHooks, TrainJob, TrainResult, training_failed

log = logging.getLogger("sidecar.training.remote")

MAX_INSTANCES = 3  # a run replaces a lost instance at most twice
DESTROY_ATTEMPTS = 3
ALIVE_EVERY = 1.0  # s between checks that the trainer's process group still lives (when its log is quiet)


class InstanceLost(Exception):
    pass


def remote_failed(message: str, reason: str, **details: Any) -> JobFailed:
    return JobFailed(message, {"reason": reason, **details}, code="remote_failed")


class RemoteTrainer:
    name = "remote"

    def __init__(self, settings: Settings, provider: Provider | None = None):
        self.settings = settings
        self.provider = provider

    async def run(self, job: TrainJob, hooks: TrainerHooks) -> TrainResult:
        resolved = job.spec.remote or {}
        provider = self.provider or provider_for(self.settings.remote, resolved)
        limits = limits_of(resolved)
        state = RemoteState.from_dict(job.remote) or RemoteState(provider=provider.name)
        if resolved.get("provider") == "vast":
            state.max_total_cost, state.max_hours = limits.max_total_cost, limits.max_hours
        return await _Session(self.settings, job, hooks, provider, state, resolved).go()


class _Session(KohyaRelay):
    def __init__(self, settings: Settings, job: TrainJob, hooks: TrainerHooks, provider: Provider,
                 st: RemoteState, resolved: dict[str, Any]):
        self.settings, self.job, self.hooks, self.provider, self.st = settings, job, hooks, provider, st
        self.resolved = resolved
        self.poll = settings.remote.poll_interval
        self.shell: Shell | None = None
        self.instance: Instance | None = None
        self.parser = KohyaOutputParser()
        self.pending: list[CheckpointSaved] = []
        self.device_reported = False
        self.resume: ResumePoint | None = job.resume
        self.alive_at = 0.0
        self.status_at = time.monotonic()

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

    # -- the whole run
    async def go(self) -> TrainResult:
        detach = False
        if not self.st.live:
            self.st.new_attempt()  # a re-attach continues the attempt (and its limits) it interrupted
        try:
            attached = await self.reattach() if self.st.live else False
            while True:
                try:
                    if not attached:
                        await self.rent_and_start()
                    return await self.follow()
                except InstanceLost as lost:
                    attached = False
                    await self.replace_lost(str(lost))
        except JobCancelled:
            if self.stopping and self.st.state in ("training", "detached") and self.st.pid:
                # The daemon stops: training goes on there and the next start re-attaches (or the reaper
                # destroys the instance if the run is no longer active then).
                detach = True
                self.publish("detached")
                log.info("run %s: daemon stopping; %s %s keeps training, re-attached at the next start",
                         self.job.run_id, self.provider.name, self.st.instance_id)
                raise
            await self.wind_down()
            raise
        except SidecarError:
            raise
        finally:
            await self.close_shell()
            if not detach:
                await self.destroy()

    async def wind_down(self) -> None:
        """Cancel or limit: stop the trainer, then pull the checkpoints it finished (the last one first)."""
        if self.shell is None or not self.st.work_dir:
            return
        self.publish("pulling")
        with contextlib.suppress(ConnectionLost, CommandFailed, OSError):
            await self.shell.run(stop_group_command(f"{self.st.work_dir}/pid"), check=False)
        with contextlib.suppress(ConnectionLost, CommandFailed, OSError):
            await self.pull_finished()

    # -- renting and starting
    async def rent_and_start(self) -> None:
        st, job = self.st, self.job
        if st.instances_this_attempt >= MAX_INSTANCES:
            raise remote_failed(f"This attempt already used {st.instances_this_attempt} instances; not renting "
                                "another (resume the run to try again).", "too_many_instances")
        self.publish("searching")
        limits = limits_of(self.resolved)
        offers = await self.provider.search(limits)
        remaining = job.spec.steps - (self.resume.step if self.resume else 0)
        plan = choose(offers, limits, remaining)
        st.offer, st.gpu = plan.offer.describe(), plan.offer.gpu_name
        st.why = plan.why if self.provider.name == "vast" else f"the configured SSH host {plan.offer.id}"
        log.info("run %s: %s chosen: %s", job.run_id, st.offer, st.why)
        self.publish("creating")
        onstart = machine.onstart_script(self.resolved.get("kohya_commit", "")) if self.provider.name == "vast" else None
        instance = await self.provider.create(plan.offer, label_for(job.run_id), onstart)
        st.rented(instance.id, instance.price_per_hour or plan.offer.price_per_hour)
        st.label = instance.label
        self.publish("starting")  # persisted at once: a daemon killed now still knows what it rented
        log.info("run %s: %s instance %s created ($%.3f/h)", job.run_id, self.provider.name, instance.id,
                 st.price_per_hour)
        self.instance = await self.wait_running(instance.id)
        st.billed(self.instance.started_at, self.instance.price_per_hour)
        await self.connect()
        python, kohya_dir = await self.wait_ready()
        self.publish("uploading")
        await self.upload_and_start(python, kohya_dir)

    def deadline(self) -> float:
        return time.monotonic() + float(self.resolved.get("start_timeout", 1200))

    async def wait_running(self, instance_id: str) -> Instance:
        until = self.deadline()
        while True:
            self.check_limits_offline()
            inst = await self.provider.status(instance_id)
            if inst.running and inst.ssh_host:
                return inst
            if inst.state in ("gone", "exited", "offline", "stopped"):
                raise InstanceLost(f"instance {instance_id} is {inst.state} before it ran"
                                   + (f": {inst.message}" if inst.message else ""))
            if time.monotonic() > until:
                raise remote_failed(f"Instance {instance_id} did not run within "
                                    f"{self.resolved.get('start_timeout')} s (still {inst.state}).", "start_timeout")
            await self.sleep(self.poll)

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

    async def wait_ready(self) -> tuple[str, str]:
        """(python, sd-scripts folder) on the machine, once kohya is there."""
        shell = self._shell()
        if self.provider.name != "vast":
            kohya, python = shell.path(self.resolved["kohya_dir"]), shell.path(self.resolved["python"])
            found = await shell.run(f"[ -f {q(kohya)}/train_network.py ] && echo script; [ -x {q(python)} ] && "
                                    "echo python; true")
            missing = [p for w, p in (("script", f"{kohya}/train_network.py"), ("python", python))
                       if w not in found.split()]
            if missing:
                raise remote_failed(f"kohya is not installed on {self.resolved.get('host')}: missing "
                                    f"{', '.join(missing)} (set kohyaDir and python).", "kohya_missing")
            return python, kohya
        until = self.deadline()
        while True:
            ready = await shell.read_text(machine.READY_MARKER.replace("~", shell.home, 1))
            if ready and ready.strip():
                return ready.strip(), shell.path(machine.KOHYA_HOME)
            failed = await shell.read_text(machine.FAILED_MARKER.replace("~", shell.home, 1))
            if failed:
                raise remote_failed(f"Installing kohya sd-scripts on the instance failed: {failed.strip()[-400:]}",
                                    "install_failed")
            if time.monotonic() > until:
                raise remote_failed("The instance did not finish installing kohya sd-scripts in time.",
                                    "install_timeout")
            await self.sleep(self.poll)

    def _shell(self) -> Shell:
        if self.shell is None:
            raise ConnectionLost("not connected")
        return self.shell

    def run_dir(self, shell: Shell) -> str:
        if self.provider.name == "ssh" and self.st.instance_id:
            return shell.path(self.st.instance_id)  # the ssh "instance" is the run's folder
        return shell.path(posixpath.join(machine.RUNS_ROOT, label_for(self.job.run_id)))

    async def upload_and_start(self, python: str, kohya_dir: str) -> None:
        shell, job, st = self._shell(), self.job, self.st
        rdir = self.run_dir(shell)
        root = posixpath.dirname(rdir)
        st.work_dir = rdir
        tokenizer = await asyncio.to_thread(seed_tokenizer_cache, self.settings,
                                            self.settings.data_dir / "kohya-tokenizer")
        uploads, model, remote_resume = await transfer.uploads(shell, job, rdir, tokenizer, self.resume)
        sent = await shell.put_files(uploads)
        log.info("run %s: uploaded %d files (%.1f MB) to %s", job.run_id, len(uploads), sent / 1e6, rdir)
        device = "cuda" if self.provider.name == "vast" else str(self.resolved.get("device") or "cuda")
        there = replace(job, work_dir=Path(rdir), output_dir=Path(f"{rdir}/output"), base_model=Path(model),
                        resume=remote_resume)
        args, warnings = build_args(there, device, Path(f"{root}/kohya-tokenizer"))
        for w in warnings:
            self.hooks.warning(w)
        script = machine.train_script(rdir, kohya_dir, python, args)
        local_script = job.work_dir / "train.sh"
        await asyncio.to_thread(local_script.write_text, script, encoding="utf-8")
        await shell.put_files([(local_script, f"{rdir}/train.sh")])
        await shell.run(f"mkdir -p {q(rdir)}/output")
        pid = (await shell.run(machine.launch_command(rdir))).strip()
        st.pid, st.log_offset = int(pid), 0
        self.parser = KohyaOutputParser()
        if self.resume is not None:
            self.parser.offset = self.resume.step
        self.publish("training")
        log.info("run %s: train_network.py started on the machine (process group %s)", job.run_id, pid)

    # -- re-attaching and replacing
    async def reattach(self) -> bool:
        """After a daemon restart: follow the trainer again if its instance still runs it."""
        st = self.st
        try:
            inst = await self.provider.status(st.instance_id or "")
        except (RemoteUnavailable, ConnectionLost) as exc:
            log.warning("run %s: cannot ask about instance %s (%s); replacing it", self.job.run_id,
                        st.instance_id, exc)
            await self.destroy()
            return False
        if not (inst.running and st.pid and st.work_dir and st.state in ("training", "detached", "pulling")):
            await self.destroy()
            return False
        self.instance = inst
        await self.connect()
        state = await self._shell().run(machine.alive_command(st.work_dir))
        finished = await self._shell().size(f"{st.work_dir}/exit_code")
        if "alive" not in state and finished is None:
            await self.destroy()
            return False
        # Read the log again from the start with a fresh parser (its state died with the daemon); the
        # checkpoints pulled before are not pulled again.
        st.log_offset, st.reattached = 0, st.reattached + 1
        self.parser = KohyaOutputParser()
        if self.resume is not None:
            self.parser.offset = self.resume.step
        with contextlib.suppress(OSError):
            (self.job.work_dir / "train.log").unlink()
        await self.catch_up()
        self.publish("training")
        log.info("run %s: re-attached to %s %s at step %d", self.job.run_id, self.provider.name, st.instance_id,
                 self.step)
        return True

    async def catch_up(self) -> None:
        """Read what the trainer printed while nobody followed, reporting only where it is now: replayed
        bar redraws would tell the ETA that hundreds of steps took no time."""
        shell, log_path = self._shell(), self.job.work_dir / "train.log"
        events: list[BarUpdate | CheckpointSaved] = []
        while chunk := await shell.read_from(f"{self.st.work_dir}/train.log", self.st.log_offset):
            await asyncio.to_thread(_append, log_path, chunk)
            self.st.log_offset += len(chunk)
            events += self.parser.feed(chunk)
        last = max((i for i, e in enumerate(events) if isinstance(e, BarUpdate)), default=-1)
        # A save with no redraw after it may still be writing its file: it waits for the next redraw.
        done = [e for e in events[:last] if isinstance(e, CheckpointSaved)]
        await self.handle(done + ([events[last]] if last >= 0 else []))
        self.pending += [e for e in events[last + 1:] if isinstance(e, CheckpointSaved)]

    async def replace_lost(self, why: str) -> None:
        log.warning("run %s: instance %s lost (%s); resuming from the last pulled state on a new one",
                    self.job.run_id, self.st.instance_id, why)
        self.hooks.warning(f"instance {self.st.instance_id} was lost ({why}); the run resumed on a new one from "
                           f"the last pulled checkpoint")
        await self.close_shell()
        await self.destroy()
        point = await asyncio.to_thread(files.latest_state, self.job.output_dir, self.job.spec.output_name,
                                        files.STATE_FILES["kohya"])
        self.resume = ResumePoint(point[0], point[1]) if point else None

    # -- following the trainer
    async def follow(self) -> TrainResult:
        st, job = self.st, self.job
        log_path = job.work_dir / "train.log"
        lost_since: float | None = None
        while True:
            if self.hooks.cancel.is_set():
                raise JobCancelled()
            try:
                if self.shell is None:
                    await self.reconnect(lost_since or time.monotonic())
                    lost_since = None
                await self.refresh_status()
                await self.check_limits()
                shell = self._shell()
                rdir = st.work_dir or ""
                chunk = await shell.read_from(f"{rdir}/train.log", st.log_offset)
                if chunk:
                    await asyncio.to_thread(_append, log_path, chunk)
                    st.log_offset += len(chunk)
                    await self.handle(self.parser.feed(chunk))
                    if self.parser.nan_seen:
                        await self.wind_down()
                        raise training_failed(
                            f"The loss became NaN by step {self.step}; training was stopped. The checkpoints "
                            "saved before it are kept: lower the learning rate and train again.", "nan_loss",
                            step=self.step, logTail=list(self.parser.tail)[-20:])
                    continue  # more may be waiting
                code = await shell.read_text(f"{rdir}/exit_code")
                if code is not None and code.strip():
                    rest = await shell.read_from(f"{rdir}/train.log", st.log_offset)
                    if rest:
                        continue
                    await self.handle(self.parser.close())
                    await self.flush()
                    return await self.finish(int(code.strip()))
                if time.monotonic() - self.alive_at < ALIVE_EVERY:
                    await self.sleep(self.poll)
                    continue
                self.alive_at = time.monotonic()
                if "alive" not in await shell.run(machine.alive_command(rdir)):
                    if await shell.size(f"{rdir}/exit_code") is None:
                        raise remote_failed(
                            f"train_network.py stopped on the machine without an exit status at step {self.step} "
                            "(killed, or the machine restarted).", "trainer_vanished", step=self.step,
                            logTail=list(self.parser.tail)[-20:])
                    continue
                await self.sleep(self.poll)
            except ConnectionLost as exc:
                await self.close_shell()
                lost_since = lost_since or time.monotonic()
                log.warning("run %s: connection to the machine lost (%s); reconnecting", job.run_id, exc)

    async def reconnect(self, since: float) -> None:
        st = self.st
        stale = self.settings.remote.stale_after
        while True:
            self.check_limits_offline()
            try:
                await self.connect(once=True)
                st.reattached += 1
                self.publish()
                log.info("run %s: reconnected to the machine; training went on meanwhile", self.job.run_id)
                return
            except (ConnectionLost, RemoteUnavailable):
                pass  # keep asking while the instance is worth it
            if time.monotonic() - since > stale:
                try:
                    inst = await self.provider.status(st.instance_id or "")
                except (RemoteUnavailable, ConnectionLost):
                    inst = None
                if inst is not None and not inst.running:
                    raise InstanceLost(f"instance {st.instance_id} is {inst.state}")
                since = time.monotonic()  # running (or unknown): keep trying another period
            await self.sleep(self.poll)

    @property
    def step(self) -> int:
        last = self.parser.last
        return last.step if last else (self.resume.step if self.resume else 0)

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
        got = await transfer.fetch(shell, remote, local)
        if got is None:
            return None
        state = await transfer.fetch_state(shell, remote, local)
        if state is not None:
            kept = await asyncio.to_thread(files.prune_states, self.job.output_dir, self.job.spec.output_name,
                                           files.STATE_FILES["remote"])
            state = state if kept == state else None  # pulled after a newer one (the wind-down goes newest first)
        pulled = PulledFile(step=step, path=str(local), size=got[0], sha256=got[1], state=str(state) if state else None)
        self.st.pulled.append(pulled)
        self.publish()
        self.hooks.checkpoint(step, local, state)
        return pulled

    async def pull_finished(self) -> None:
        """Every step checkpoint on the machine not pulled yet, newest first (the last one matters most)."""
        out = f"{self.st.work_dir}/output"
        name = self.job.spec.output_name
        for step in await transfer.finished_steps(self._shell(), out, name):
            with contextlib.suppress(JobFailed):
                await self.pull(step, f"{out}/{files.step_file_name(name, step)}")

    async def finish(self, code: int) -> TrainResult:
        job, parser = self.job, self.parser
        tail = list(parser.tail)[-20:]
        if code != 0:
            err = parser.error
            raise training_failed(
                f"kohya's train_network.py failed on the machine at step {self.step}: "
                f"{err.summary if err else f'exit status {code}'}", "crash", exitCode=code,
                exception=err.type if err else None, exceptionMessage=err.message if err else None,
                step=self.step, logTail=tail)
        if parser.no_data:
            raise training_failed("kohya found no training images on the machine and exited without training.",
                                  "no_data", exitCode=code, logTail=tail)
        self.publish("pulling")
        await self.pull_finished()  # a save the bar never redrew after
        final = f"{self.st.work_dir}/output/{job.spec.output_name}.safetensors"
        got = await transfer.fetch(self._shell(), final, job.final_file)
        if got is None:
            raise training_failed(f"kohya exited normally but wrote no final LoRA ({job.final_file.name}).",
                                  "no_output", exitCode=code, step=self.step, logTail=tail)
        log.info("run %s: final LoRA pulled (%d bytes, sha256 %s)", job.run_id, got[0], got[1][:12])
        return TrainResult(final_file=job.final_file, step=max(self.step, job.spec.steps))

    # -- the cost guard
    async def refresh_status(self) -> None:
        """Now and then, the provider's word on the instance: gone (replace it), and its billing figures."""
        if self.st.max_total_cost is None or time.monotonic() - self.status_at < self.settings.remote.status_interval:
            return
        self.status_at = time.monotonic()
        try:
            inst = await self.provider.status(self.st.instance_id or "")
        except (RemoteUnavailable, ConnectionLost) as exc:
            log.info("run %s: no status for instance %s (%s)", self.job.run_id, self.st.instance_id, exc)
            return
        if inst.state in ("gone", "exited", "offline", "stopped"):
            raise InstanceLost(f"instance {inst.id} is {inst.state}")
        self.st.billed(inst.started_at, inst.price_per_hour)
        self.publish()

    def _limit_hit(self) -> tuple[str, str] | None:
        st = self.st
        if st.max_total_cost is not None and st.attempt_cost() >= st.max_total_cost:
            return "remote_cost_limit", f"it has cost ${st.attempt_cost():.2f} of its ${st.max_total_cost:g} limit"
        if st.max_hours is not None and st.hours() >= st.max_hours:
            return "remote_time_limit", f"it has been rented {st.hours():.2f} h of its {st.max_hours:g} h limit"
        return None

    def check_limits_offline(self) -> None:
        hit = self._limit_hit()
        if hit is not None:
            raise self._limit_error(*hit)

    async def check_limits(self) -> None:
        hit = self._limit_hit()
        if hit is None:
            return
        await self.wind_down()
        raise self._limit_error(*hit)

    def _limit_error(self, code: str, why: str) -> JobFailed:
        last = max((p.step for p in self.st.pulled), default=None)
        kept = f"checkpoint step {last} was pulled and kept" if last else "no checkpoint had been saved"
        return JobFailed(f"The run was stopped at step {self.step}: {why}; {kept}. Raise the limit and resume it to "
                         "continue.", {"reason": code, "step": self.step, "lastCheckpointStep": last,
                                       "cost": self.st.cost()}, code=code)

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

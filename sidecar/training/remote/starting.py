"""Starting a run on a machine: choose an offer and rent it, wait until it runs and its trainer (kohya's
sd-scripts or ai-toolkit) is there, connect, upload the dataset, the base model (unless the request names one
on the machine or a hub id), the tokenizer, the trainer's files and `train.sh`, and start the trainer detached
(its own process group, its log in a file), with what its adapter builds for a run here.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from dataclasses import replace
from pathlib import Path

from sidecar.remote import machine
from sidecar.remote.plan import choose
from sidecar.remote.provider import Instance, label_for
from sidecar.remote.providers import limits_of
from sidecar.remote.shell import Shell, q
from sidecar.training import remote_files as transfer
from sidecar.training.kohya_tokenizer import seed_tokenizer_cache
from sidecar.training.remote.bucket import dataset_from_bucket, link, prepare
from sidecar.training.remote.base import InstanceLost, remote_failed
from sidecar.training.remote.guard import CostGuard

log = logging.getLogger("sidecar.training.remote")

MAX_INSTANCES = 3  # a run replaces a lost instance at most twice


class Starting(CostGuard):
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
        self.gpu_memory_gb = plan.offer.gpu_memory_gb or None  # Flux's block swap on a small card
        st.why = plan.why if self.provider.name == "vast" else f"the configured SSH host {plan.offer.id}"
        log.info("run %s: %s chosen: %s", job.run_id, st.offer, st.why)
        self.publish("creating")
        vast = self.provider.name == "vast"
        onstart = None
        storage = self.settings.storage.url is not None
        if vast and self.aitk:
            onstart = machine.ai_toolkit_onstart_script(self.resolved.get("ai_toolkit_commit", ""), storage=storage)
        elif vast:
            onstart = machine.onstart_script(self.resolved.get("kohya_commit", ""), storage=storage)
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

    @property
    def aitk(self) -> bool:
        return self.adapter.name == "ai-toolkit"

    async def wait_ready(self) -> tuple[str, str]:
        """(python, the trainer's folder) on the machine, once the trainer is there."""
        shell = self._shell()
        script = self.adapter.script(self.job.spec.family)
        what = "ai-toolkit" if self.aitk else "kohya"
        if self.provider.name != "vast":
            keys = ("ai_toolkit_dir", "ai_toolkit_python") if self.aitk else ("kohya_dir", "python")
            folder, python = shell.path(self.resolved[keys[0]]), shell.path(self.resolved[keys[1]])
            found = await shell.run(f"[ -f {q(folder)}/{script} ] && echo script; [ -x {q(python)} ] && "
                                    "echo python; true")
            missing = [p for w, p in (("script", f"{folder}/{script}"), ("python", python))
                       if w not in found.split()]
            if missing:
                names = "aiToolkitDir and aiToolkitPython" if self.aitk else "kohyaDir and python"
                raise remote_failed(f"{what} is not installed on {self.resolved.get('host')}: missing "
                                    f"{', '.join(missing)} (set {names}).", f"{what.replace('-', '_')}_missing")
            return python, folder
        ready_marker, failed_marker, home = ((machine.AI_TOOLKIT_READY, machine.AI_TOOLKIT_FAILED,
                                              machine.AI_TOOLKIT_HOME) if self.aitk else
                                             (machine.READY_MARKER, machine.FAILED_MARKER, machine.KOHYA_HOME))
        until = self.deadline()
        while True:
            ready = await shell.read_text(ready_marker.replace("~", shell.home, 1))
            if ready and ready.strip():
                return ready.strip(), shell.path(home)
            failed = await shell.read_text(failed_marker.replace("~", shell.home, 1))
            if failed:
                raise remote_failed(f"Installing {what} on the instance failed: {failed.strip()[-400:]}",
                                    "install_failed")
            if time.monotonic() > until:
                raise remote_failed(f"The instance did not finish installing {what} in time.", "install_timeout")
            await self.sleep(self.poll)

    def run_dir(self, shell: Shell) -> str:
        if self.provider.name == "ssh" and self.st.instance_id:
            return shell.path(self.st.instance_id)  # the ssh "instance" is the run's folder
        return shell.path(posixpath.join(machine.RUNS_ROOT, label_for(self.job.run_id)))

    async def upload_and_start(self, python: str, trainer_dir: str) -> None:
        shell, job, st = self._shell(), self.job, self.st
        rdir = self.run_dir(shell)
        root = posixpath.dirname(rdir)
        st.work_dir = rdir
        tokenizer = None if self.aitk else await asyncio.to_thread(seed_tokenizer_cache, self.settings,
                                                                   self.settings.data_dir / "kohya-tokenizer")
        out_there = self.adapter.output_dir(Path(rdir), job.spec.output_name)
        uploads, model, remote_resume = await transfer.uploads(shell, job, rdir, tokenizer, self.resume,
                                                               str(out_there))
        self.bucket = await prepare(self.settings, shell, rdir, python, self.hooks.warning)
        link(st, self.bucket)
        if self.bucket is not None:
            uploads = await dataset_from_bucket(self.bucket, shell, job, uploads, self.hooks.warning)
        sent = await shell.put_files(uploads)
        log.info("run %s: uploaded %d files (%.1f MB) to %s", job.run_id, len(uploads), sent / 1e6, rdir)
        device = "cuda" if self.provider.name == "vast" else str(self.resolved.get("device") or "cuda")
        there = replace(job, work_dir=Path(rdir), output_dir=out_there, base_model=Path(model), resume=remote_resume)
        launch = self.adapter.launch(there, device, None if self.aitk else Path(f"{root}/kohya-tokenizer"),
                                     gpu_memory_gb=self.gpu_memory_gb)
        for w in launch.warnings:
            self.hooks.warning(w)
        script = machine.train_script(rdir, trainer_dir, python, launch.args, launch.script)
        local_files = [(job.work_dir / "train.sh", script, f"{rdir}/train.sh")]
        local_files += [(job.work_dir / name, text, f"{rdir}/{name}") for name, text in launch.files.items()]
        for local, text, _ in local_files:
            await asyncio.to_thread(local.write_text, text, encoding="utf-8")
        await shell.put_files([(local, there_path) for local, _, there_path in local_files])
        await shell.run(f"mkdir -p {q(str(out_there))}")
        pid = (await shell.run(machine.launch_command(rdir))).strip()
        st.pid, st.log_offset = int(pid), 0
        st.start_step = self.resume.step if self.resume is not None else 0
        self.parser = self.adapter.parser(st.start_step, job.spec.output_name)
        self.publish("training")
        log.info("run %s: %s started on the machine (process group %s)", job.run_id, launch.script, pid)

"""Starting a run on a machine: choose an offer and rent it, wait until it runs and kohya is there,
connect, upload the dataset, the base model, the tokenizer and `train.sh`, and start `train_network.py`
detached (its own process group, its log in a file), with the arguments a local kohya run gets.
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
from sidecar.training.kohya import build_args
from sidecar.training.kohya_tokenizer import seed_tokenizer_cache
from sidecar.training.parser import KohyaOutputParser
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
        st.why = plan.why if self.provider.name == "vast" else f"the configured SSH host {plan.offer.id}"
        log.info("run %s: %s chosen: %s", job.run_id, st.offer, st.why)
        self.publish("creating")
        vast = self.provider.name == "vast"
        onstart = machine.onstart_script(self.resolved.get("kohya_commit", "")) if vast else None
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
        st.start_step = self.resume.step if self.resume is not None else 0
        self.parser = KohyaOutputParser()
        self.parser.offset = st.start_step
        self.publish("training")
        log.info("run %s: train_network.py started on the machine (process group %s)", job.run_id, pid)

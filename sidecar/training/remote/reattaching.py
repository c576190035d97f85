"""Following a trainer again without restarting it: after a daemon restart (re-attach to the instance
if it still runs the trainer, reading its log again from the start), after a dropped connection
(reconnect while the instance is worth it), and replacing an instance that is gone (the run resumes on
a new one from the last pulled state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sidecar.errors import RemoteUnavailable
from sidecar.remote import machine
from sidecar.remote.shell import ConnectionLost, is_login_refused
from sidecar.training.parser import BarUpdate, CheckpointSaved
from sidecar.training.remote.base import InstanceLost, _append
from sidecar.training.remote.bucket import reopen
from sidecar.training.remote.starting import Starting
from sidecar.training.spec import ResumePoint

log = logging.getLogger("sidecar.training.remote")


class Reattaching(Starting):
    async def reattach(self) -> bool:
        """After a daemon restart: follow the trainer again if its instance still runs it."""
        st = self.st
        try:
            inst = await self.provider.status(st.instance_id or "")
        except (RemoteUnavailable, ConnectionLost) as exc:
            if is_login_refused(exc):
                raise
            log.warning("run %s: cannot ask about instance %s (%s); replacing it", self.job.run_id,
                        st.instance_id, exc)
            await self.destroy()
            return False
        if not (inst.running and st.pid and st.work_dir and st.state in ("training", "detached", "pulling")):
            await self.destroy()
            return False
        self.instance = inst
        await self.connect()
        self.bucket = await reopen(self.settings, st, self.hooks.warning)  # checkpoints still come through it
        state = await self._shell().run(machine.alive_command(st.work_dir))
        finished = await self._shell().size(f"{st.work_dir}/exit_code")
        if "alive" not in state and finished is None:
            await self.destroy()
            return False
        # Read the log again from the start with a fresh parser (its state died with the daemon); the
        # checkpoints pulled before are not pulled again. The trainer's counts are offset only by the
        # step it was started from, not by the state the run was queued again with (the restart's
        # `resume_step`, the last pulled state: this trainer did not start from it).
        st.log_offset, st.reattached = 0, st.reattached + 1
        self.parser = self.adapter.parser(st.start_step, self.job.spec.output_name)
        self.resume = None
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
        self.resume = await asyncio.to_thread(self.adapter.resume_point, self.job.output_dir,
                                              self.job.spec.output_name)

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
            except (ConnectionLost, RemoteUnavailable) as exc:
                if is_login_refused(exc):
                    raise  # the machine answers but no longer lets us in: asking again cannot help
            if time.monotonic() - since > stale:
                try:
                    inst = await self.provider.status(st.instance_id or "")
                except (RemoteUnavailable, ConnectionLost):
                    inst = None
                if inst is not None and not inst.running:
                    raise InstanceLost(f"instance {st.instance_id} is {inst.state}")
                since = time.monotonic()  # running (or unknown): keep trying another period
            await self.sleep(self.poll)

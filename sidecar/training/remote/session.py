"""A remote run's whole session: start (or re-attach), follow the trainer's log until it exits, and
end every way a run ends (success, failure, cancel, limit, a lost instance replaced) with nothing left
running there, except on a daemon shutdown, which leaves the trainer going (`detached`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from sidecar.errors import JobCancelled, SidecarError
from sidecar.remote import machine
from sidecar.remote.shell import ConnectionLost
from sidecar.training.remote.base import InstanceLost, _append, remote_failed
from sidecar.training.remote.reattaching import Reattaching
from sidecar.training.spec import TrainResult, training_failed

log = logging.getLogger("sidecar.training.remote")

ALIVE_EVERY = 1.0  # s between checks that the trainer's process group still lives (when its log is quiet)


class Session(Reattaching):
    async def go(self) -> TrainResult:
        detach = False
        failure: SidecarError | None = None
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
            if self.stopping and self._still_there():
                # The daemon stops: training goes on there and the next start re-attaches (or the reaper
                # destroys the instance if the run is no longer active then).
                detach = True
                self.publish("detached")
                log.info("run %s: daemon stopping; %s %s keeps training, re-attached at the next start",
                         self.job.run_id, self.provider.name, self.st.instance_id)
                raise
            await self.wind_down()
            raise
        except asyncio.CancelledError:
            # The daemon's stop outwaited (manager.STOP_TIMEOUT) something long, such as a big checkpoint's pull:
            # still a stop, not an end. The trainer goes on and the next start re-attaches, as above; destroying
            # the instance here would throw away the training (and, on vast.ai, its unpulled files).
            if self.stopping and self._still_there():
                detach = True
                self.publish("detached")
                log.info("run %s: daemon stopped mid-operation; %s %s keeps training, re-attached at the next start",
                         self.job.run_id, self.provider.name, self.st.instance_id)
            raise
        except SidecarError as exc:
            failure = exc
            raise
        finally:
            await self.close_shell()
            if not detach:
                await self.destroy()
            if failure is not None and self.st.instance_id is None:
                # Ended before it had a machine (a refused login included): a final state, and why.
                self.st.message = failure.message
                self.publish("failed")

    def _still_there(self) -> bool:
        """Whether a daemon stop leaves the machine for the next start: the trainer runs, or it ended well and
        its files are still being pulled (state `pulling`: re-attached, the next start pulls them)."""
        if not self.st.pid:
            return False
        return self.st.state in ("training", "detached") or (self.st.state == "pulling" and self.trainer_succeeded)

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
                            f"{self.adapter.label(job.spec.family)} stopped on the machine without an exit status "
                            f"at step {self.step} "
                            "(killed, or the machine restarted).", "trainer_vanished", step=self.step,
                            logTail=list(self.parser.tail)[-20:])
                    continue
                await self.sleep(self.poll)
            except ConnectionLost as exc:
                await self.close_shell()
                lost_since = lost_since or time.monotonic()
                log.warning("run %s: connection to the machine lost (%s); reconnecting", job.run_id, exc)

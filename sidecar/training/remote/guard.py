"""The cost guard: the provider's word on the instance now and then (gone: replace it; its billing
start and price), and the run stopped, its finished checkpoints pulled first, when it reaches its
`maxTotalCost` or `maxHours`.
"""

from __future__ import annotations

import logging
import time

from sidecar.errors import JobFailed, RemoteUnavailable
from sidecar.remote.shell import ConnectionLost
from sidecar.training.remote.base import InstanceLost
from sidecar.training.remote.pulling import Pulling

log = logging.getLogger("sidecar.training.remote")


class CostGuard(Pulling):
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

"""`POST /loras/estimate` (`sidecar loras train ... --estimate`): what a run would take, before anything is
rented. Time here comes from this machine's own last finished local run (seconds per trained step,
loading included, so a little pessimistic); time there and the cost from the offer the run would rent
(`sidecar.remote.plan`). Only the provider's offer search is called; nothing is created.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from sidecar.config import Settings
from sidecar.remote.plan import SETUP_HOURS, choose
from sidecar.remote.providers import limits_of, provider_for
from sidecar.errors import CheckpointNotFound
from sidecar.remote.wire import MemoryAdvice, OfferInfo, TrainEstimate
from sidecar.training import admission, placement, presets
from sidecar.training.memory_plan import table
from sidecar.training.store import TrainingStore
from sidecar.training.wire import TrainRequest


async def estimate(settings: Settings, store: TrainingStore, req: TrainRequest, profile,
                   backend=None) -> TrainEstimate:
    engine = admission.check_request(req, settings, profile)
    resolved = admission.check_remote(req, settings)
    base: Path | None = Path(req.base_model).expanduser() if req.base_model else None
    if base is None:
        with contextlib.suppress(CheckpointNotFound):
            base = await admission.find_base_model(settings, backend, req.checkpoint or settings.checkpoint)
    where = await placement.place(settings, profile, req, engine, base or Path("-"))
    placement.fit_remote(resolved, where)
    if req.preset is not None:  # the plan counts the preset's steps, as the run would
        req = presets.apply(req, where.family, where.trainer, req.trigger_word or settings.trigger_word)
    here = await measured_seconds_per_step(store)
    out = TrainEstimate(steps=req.steps, seconds_per_step_here=round(here, 3) if here else None,
                        hours_here=round(req.steps * here / 3600, 3) if here else None,
                        trainer=where.trainer, family=where.family,
                        memory=[MemoryAdvice(gpu_memory_gb=a.gpu_memory_gb, fits=a.fits, how=a.how)
                                for a in table(where.trainer, where.family)])
    out.warnings += list(where.warnings)
    if here is None:
        out.warnings.append("no local run has finished on this machine yet: time here unknown")
    if resolved is None:
        return out
    out.provider = resolved["provider"]
    provider = provider_for(settings.remote, resolved)
    limits = limits_of(resolved)
    offers = await provider.search(limits)
    plan = choose(offers, limits, req.steps)
    o = plan.offer
    out.offer = OfferInfo(id=o.id, gpu=o.gpu_name, gpu_memory_gb=o.gpu_memory_gb, price_per_hour=o.price_per_hour,
                          reliability=o.reliability, cuda_version=o.cuda_version)
    out.offers_considered = plan.considered
    if resolved["provider"] == "vast":
        out.seconds_per_step_there = round(plan.seconds_per_step, 3)
        out.hours_there = round(plan.hours, 3)
        out.expected_cost = round(plan.cost, 2)
        out.why = plan.why
        out.limits = {"maxPricePerHour": limits.max_price_per_hour, "maxTotalCost": limits.max_total_cost,
                      "maxHours": limits.max_hours, "minGpuMemoryGb": limits.min_gpu_memory_gb}
        out.warnings.append(f"time there is rough (from the GPU's TFLOPS) and includes {SETUP_HOURS * 60:.0f} min "
                            "of set-up; the run's measured rate replaces it after ~20 steps")
    else:
        out.why = f"the configured SSH host {o.id}; its speed is unknown until it trains"
        out.expected_cost = 0.0
    return out


async def measured_seconds_per_step(store: TrainingStore) -> float | None:
    """Seconds per step of the newest succeeded local run (steps trained over its wall time)."""
    for run in await store.list(("succeeded",), limit=50):
        if run.engine == "remote" or not run.started_at or not run.finished_at:
            continue
        steps = run.step - (run.resume_step or 0)
        if steps <= 0:
            continue
        took = (_time(run.finished_at) - _time(run.started_at)).total_seconds()
        if took > 0:
            return took / steps
    return None


def _time(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))

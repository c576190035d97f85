"""The remote trainer: the same run as here, by the run's trainer adapter (kohya's sd-scripts for sd15, SDXL and
Flux, or ai-toolkit: `sidecar.training.adapter`), on a rented GPU (vast.ai) or an SSH host, reported exactly as a
local run is (the same output parser, hooks, checkpoints and final file).

1. Choose an offer under the limits and rent it, labelled with the run id (`sidecar.remote.plan`).
2. Wait until it runs and the trainer is installed; connect (SSH, the host key pinned at first sight).
3. Upload the dataset, the base model (unless `baseModel` names one there), CLIP's tokenizer (kohya), the
   trainer's files (ai-toolkit's job config, kohya's sample prompts) and the canonical `train.sh` (SFTP).
4. Start the trainer detached (its own session), with what its adapter builds for a run here.
5. Tail its log into the adapter's parser; pull each checkpoint (and its state, and the samples written so
   far) as it is saved, checking size and sha256; watch the cost and time limits.
6. Pull the final LoRA; destroy the instance on every ending: success, failure, cancel, limit. Only a
   daemon shutdown leaves it training (`detached`): the next start re-attaches to it.

A dropped connection is reconnected without touching the trainer; an instance that is gone is replaced
and the run resumes there from the last pulled state. The machine is a `Provider` (search, create,
status, destroy, list, shell); nothing here knows which.

One module per phase, each a layer of the run's session (a class each, stacked in this order):
`base` (the run's state, reporting, the connection, destroying), `pulling` (checkpoints and the final
file), `guard` (the cost and time limits), `starting` (steps 1-4), `reattaching` (after a dropped
connection or a daemon restart, or on a new instance) and `session` (the whole run, and following the
trainer's log: step 5).
"""

from __future__ import annotations

from sidecar.config import Settings
from sidecar.remote.provider import Provider
from sidecar.remote.providers import limits_of, provider_for
from sidecar.remote.state import RemoteState
from sidecar.training.remote.base import InstanceLost, remote_failed
from sidecar.training.remote.session import Session
from sidecar.training.spec import TrainerHooks, TrainJob, TrainResult

__all__ = ["InstanceLost", "RemoteTrainer", "remote_failed"]


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
        return await Session(self.settings, job, hooks, provider, state, resolved).go()

"""How a training run looks to clients: the body of GET /loras/{id}/status, of the run lists and of
`training.*` events. Pure: record + live progress in, a `wire.TrainingRun` out (what the routes and
events serialize, and the OpenAPI document shows).
"""

from __future__ import annotations

import math
from pathlib import Path

from sidecar.remote.state import RemoteState
from sidecar.remote.wire import RemoteStatus
from sidecar.training.progress import ProgressTracker
from sidecar.training.spec import TrainSpec
from sidecar.training.store import RunRecord
from sidecar.training.wire import CheckpointInfo, ErrorInfo, LossInfo, TrainingParams, TrainingRun


def finite(value: float | None) -> float | None:
    """NaN is not JSON; a diverged loss shows as null (the run's error says NaN)."""
    return value if value is not None and math.isfinite(value) else None


def run_view(run: RunRecord, tracker: ProgressTracker | None, tail: list[str]) -> TrainingRun:
    """`tracker` is the live progress of a queued/running run (None for a finished one)."""
    spec = TrainSpec.from_dict(run.spec)
    def samples(step: int) -> list[str]:
        return [Path(f).name for f in run.samples.get(step, [])]

    ckpts = [CheckpointInfo(step=c.step, file_name=Path(c.path).name, path=c.path, samples=samples(c.step))
             for c in sorted(run.checkpoints, key=lambda c: c.step)]
    if run.final_file and run.status == "succeeded" and not any(c.step == run.step for c in ckpts):
        ckpts.append(CheckpointInfo(step=run.step, file_name=Path(run.final_file).name, path=run.final_file,
                                    final=True, samples=samples(run.step)))
    eta = tracker.eta_seconds if tracker is not None and run.status == "running" else None
    rate = tracker.seconds_per_step if tracker is not None else None
    return TrainingRun(
        id=run.id,
        status=run.status,
        engine=run.engine,
        device=run.device,
        output_name=spec.output_name,
        trigger_word=spec.trigger_word,
        dataset_dir=spec.dataset_dir,
        step=tracker.step if tracker is not None else run.step,
        total=(tracker.total if tracker is not None else run.total) or spec.steps,
        loss=LossInfo(last=finite(tracker.loss_last if tracker else run.loss),
                      smoothed=finite(tracker.loss_smoothed if tracker else run.loss_smoothed)),
        eta_seconds=round(eta) if eta is not None else None,
        seconds_per_step=round(rate, 3) if rate is not None else None,
        checkpoints=ckpts,
        final_file=run.final_file,
        output_dir=run.output_dir,
        params=TrainingParams(steps=spec.steps, resolution=spec.resolution, network_dim=spec.network_dim,
                              network_alpha=spec.network_alpha, learning_rate=spec.learning_rate,
                              save_every_n_steps=spec.save_every, seed=spec.seed, checkpoint=spec.checkpoint,
                              trainer=spec.trainer, family=spec.family, base_model=spec.base_model_ref,
                              sample_prompts=list(spec.sample_prompts), sample_every=spec.sample_interval,
                              tracking=spec.tracking,
                              preset=spec.preset, force=spec.force, repeats=spec.repeats,
                              caption_dropout_rate=spec.caption_dropout_rate,
                              train_text_encoder=spec.train_text_encoder, text_encoder_lr=spec.text_encoder_lr),
        warnings=list(run.warnings),
        log_tail=tail,
        error=(ErrorInfo(code=run.error_code, message=run.error_message or "", details=run.error_details or {})
               if run.error_code else None),
        attempts=run.attempts,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        remote=remote_view(spec, run.remote),
    )


def remote_view(spec: TrainSpec, data: dict | None) -> RemoteStatus | None:
    if spec.remote is None:
        return None
    st = RemoteState.from_dict(data) or RemoteState(provider=spec.remote["provider"], state="queued")
    host = f"{st.ssh_host}:{st.ssh_port}" if st.ssh_host else spec.remote.get("host")
    return RemoteStatus(provider=st.provider, state=st.state, instance=st.instance_id, host=host, gpu=st.gpu,
                        offer=st.offer, why=st.why, price_per_hour=float(st.price_per_hour), cost_so_far=st.cost(),
                        max_total_cost=st.max_total_cost, max_hours=st.max_hours, instances=st.instances,
                        reattached=st.reattached, message=st.message)

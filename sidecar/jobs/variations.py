"""Submissions that make more than one job, or a job out of another: `variations` (N ordinary jobs,
one per consecutive seed, under one group id) and retry (a finished job's request, submitted again).

Each job of a group is an ordinary job, batch size 1 (GEN-03): built and checked as a single submit
would be, queued with the others in one transaction (all or none) and run FIFO like any job. The
seeds are `seed, seed+1, ...`; without a seed the first is drawn at random and recorded on every job.
"""

from __future__ import annotations

import secrets
import uuid

from sidecar.errors import InitImageInvalid, InvalidField, InvalidState
from sidecar.jobs.build import JobBuilder
from sidecar.jobs.params import GenerationRequest, JobSpec, Resolution
from sidecar.jobs.states import TERMINAL
from sidecar.jobs.store import JobRecord
from sidecar.upscaling import UPSCALE_ONLY

MAX_VARIATIONS = 100
MAX_SEED = 2**64 - 1


def new_group_id() -> str:
    return uuid.uuid4().hex


def variation_seeds(seed: int | None, count: int) -> list[int]:
    """`count` consecutive seeds from `seed` (random when None); refused past the largest seed."""
    first = seed if seed is not None else secrets.randbelow(2**32)
    if first + count - 1 > MAX_SEED:
        raise InvalidField(f"seed {first} + {count} variations passes the largest seed ({MAX_SEED}); start "
                           "from a smaller seed.", {"field": "seed", "value": first, "variations": count})
    return [first + i for i in range(count)]


async def build_variations(builder: JobBuilder, req: GenerationRequest, count: int) -> list[JobSpec]:
    """One job spec per seed, each held to every limit a single job is."""
    if req.workflow is not None:
        raise InvalidField("variations vary the seed of a template job; a whole workflow fixes its own seed "
                           "(submit it once per seed instead).", {"field": "variations"})
    if req.prompt is None:
        raise InvalidField("prompt is required.", {"field": "prompt"})
    specs = []
    for seed in variation_seeds(req.seed, count):
        specs.append(await builder.build(req.model_copy(update={"seed": seed})))
    return specs


def retry_request(job: JobRecord) -> GenerationRequest:
    """The request that makes the same job again: its resolved parameters (seed included) for a template
    job, its workflow (with the image its LoadImage loads) for a whole-workflow one. Built again through
    the builder, so a model or pose file gone since is refused at once, not failed in the backend."""
    if job.status not in TERMINAL:
        raise InvalidState(f"Job {job.id} is {job.status}; retry a job once it has ended (or cancel it).",
                           {"jobId": job.id, "status": job.status})
    params = job.params
    if job.template is None:
        return GenerationRequest.model_validate(
            {"workflow": job.workflow, "pose_image_path": params.pose_image_path, "where": job.where_})
    if job.template == UPSCALE_ONLY:  # it upscaled a job's image, or a file
        image = {"init_job_id": params.init_job_id} if params.init_job_id else \
            {"init_image_path": params.init_image_path}
        return GenerationRequest.model_validate({"upscale_model": params.upscale_model, "where": job.where_, **image})
    values = {name: getattr(params, name) for name in type(params).model_fields
              if name in GenerationRequest.model_fields and getattr(params, name) is not None}
    # The params record a LoRA both ways (loraId, and `loras` with every one): a request names one form.
    if params.loras and len(params.loras) > 1:
        values.pop("lora_id", None)
        values.pop("lora_strength", None)
        values["loras"] = [{"id": u.id, "strength": u.strength} for u in params.loras]
    else:
        values.pop("loras", None)
    if params.init_job_id is not None:
        # The params record the init job's image file too (init_image_path): a request names one source.
        values.pop("init_image_path", None)
    if params.width is not None or params.height is not None:
        values["resolution"] = Resolution(width=params.width, height=params.height)
    if job.where_ is not None:
        values["where"] = job.where_
    return GenerationRequest.model_validate(values)


def retry_refusal(job: JobRecord, exc: InitImageInvalid) -> InitImageInvalid:
    """Why an img2img job cannot be retried, in terms of the job asked about: its init job removed since
    (retention, `sidecar gc`), or its init image file moved or changed."""
    params = job.params
    details = {**exc.details, "retryOf": job.id}
    if exc.details.get("field") == "initJobId" and params.init_job_id is not None:
        status = exc.details.get("status")
        why = "no longer exists (removed since)" if status is None else f"is {status}"
        return InitImageInvalid(
            f"Job {job.id} started from the image of job {params.init_job_id} (initJobId), which {why}: it "
            "cannot be retried as it was. Submit it again with initImagePath naming the image to start from.",
            details)
    return InitImageInvalid(f"Job {job.id} cannot be retried as it was: {exc.message}", details)

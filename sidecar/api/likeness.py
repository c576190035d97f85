"""POST /likeness/score, and `likeness` on a succeeded job's answer. Thin: the judge is
`sidecar.likeness` (the same the `sidecar likeness` commands run), held under the LIKENESS key.

A job's answer never fails for likeness: without a project, references or weights it simply has
none. POST /likeness/score says why instead (409 references_missing, 503 likeness_unavailable).
Scoring runs in a thread: it is CPU work (CCIP on onnxruntime) and reads files.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from sidecar.api.errors import parse_body
from sidecar.api.keys import LIKENESS, RUNNER, SETTINGS
from sidecar.api.models import LikenessRequest
from sidecar.api.operations import operation
from sidecar.api.responses import JobSummary, Likeness, LikenessResult, LikenessScores, json_response
from sidecar.likeness.judge import LikenessService
from sidecar.errors import (
    CharacterInvalid, InvalidField, JobNotFinished, JobNotFound, LikenessUnavailable, ReferencesMissing, SidecarError,
)
from sidecar.userfiles import check_image

routes = web.RouteTableDef()
log = logging.getLogger(__name__)
J = TypeVar("J", bound=JobSummary)


def _allowed(app: web.Application, path: Path) -> Path:
    """The image, resolved, inside the project root or the data dir; invalid_field otherwise."""
    settings = app[SETTINGS]
    real = path.resolve()
    roots = [r.resolve() for r in (settings.project_root, settings.data_dir) if r is not None]
    if not any(real.is_relative_to(root) for root in roots):
        raise InvalidField(f"images: {path} is outside the folders the daemon scores from "
                           f"({', '.join(map(str, roots))}).", {"field": "images", "path": str(path)})
    return real


@routes.post("/likeness/score")
@operation("Score images (paths or jobs) against the project's reference set", {200: LikenessScores},
           request=LikenessRequest,
           errors=(InvalidField, JobNotFound, JobNotFinished, ReferencesMissing, CharacterInvalid,
                   LikenessUnavailable),
           description="Each image's likeness to the references of the project's character.toml (`references` "
                       "globs): a score (higher = more alike), a verdict and the scorer with its weights' hash. "
                       "Paths must be inside the project root or the data dir; jobs must have succeeded. "
                       "409 references_missing without a reference set, 503 likeness_unavailable without the "
                       "weights (details.fix: `sidecar models fetch ccip`).")
async def score(request: web.Request) -> web.Response:
    req = await parse_body(request, LikenessRequest)
    if not req.images and not req.job_ids:
        raise InvalidField("Name at least one image or jobId to score.", {"field": "images"})
    app = request.app
    paths: list[Path] = []
    for raw in req.images:
        info = await asyncio.to_thread(check_image, raw, "images")
        paths.append(_allowed(app, info.path))
    for job_id in req.job_ids:
        job = await app[RUNNER].get(job_id)
        if job.status != "succeeded" or not job.output_file:
            raise JobNotFinished(f"Job {job.id} is {job.status}; it has no image to score.",
                                 {"jobId": job.id, "status": job.status})
        paths.append(Path(job.output_file))
    found = await asyncio.to_thread(app[LIKENESS].score, paths, req.mirrored)
    results = [LikenessResult(image=raw, likeness=Likeness(**lk.to_json())) for raw, lk in zip(req.images, found)]
    results += [LikenessResult(job_id=job_id, likeness=Likeness(**lk.to_json()))
                for job_id, lk in zip(req.job_ids, found[len(req.images):], strict=True)]
    return json_response(LikenessScores(results=results))


async def with_likeness(app: web.Application, jobs: list[J], files: dict[str, str | None]) -> list[J]:
    """The jobs, each succeeded one with its `likeness` when the project has references and the weights
    are there (`files`: job id -> its image). Anything missing leaves them as they were."""
    service = app[LIKENESS]
    todo = [(i, Path(files[j.id] or "")) for i, j in enumerate(jobs) if j.status == "succeeded" and files.get(j.id)]
    if not todo or not await asyncio.to_thread(service.has_references):
        return jobs
    try:
        found = await asyncio.to_thread(service.score, [p for _, p in todo])
    except (LikenessUnavailable, ReferencesMissing):
        return jobs
    except SidecarError as exc:  # an image gone since (gc): the job answers without likeness
        log.info("no likeness for jobs %s: %s", [jobs[i].id for i, _ in todo], exc.message)
        return jobs
    out = list(jobs)
    for (i, _), lk in zip(todo, found, strict=True):
        out[i] = out[i].model_copy(update={"likeness": Likeness(**lk.to_json())})
    return out


def likeness_for_log(service: LikenessService, path: Path) -> Likeness | None:
    """One image's likeness for a page version's log entry (blocking: the runner calls it in the publish
    thread): what GET /jobs/{id} would answer for the job, None when the project has no references or the
    weights are missing."""
    if not service.has_references():
        return None
    try:
        (found,) = service.score([path])
    except (LikenessUnavailable, ReferencesMissing):
        return None
    except SidecarError as exc:
        log.info("no likeness for %s: %s", path.name, exc.message)
        return None
    return Likeness(**found.to_json())

"""An img2img job's init image: where it comes from, bounded, fitted to the job's size, stored once.

The client names it (`initImagePath`, bounded like a pose image by `sidecar.userfiles`) or names a
succeeded job whose image it is (`initJobId`). The daemon then fits it to the job's size as ComfyUI's
`ImageScale` with `crop: center` would (scaled to cover, centre-cropped, Lanczos) and stores that as a
PNG under a content-hashed name in `<data_dir>/input/`: the workflow's LoadImage names that file, the
embedded engine reads it there, and the ComfyUI backend copies it into ComfyUI's `input/` as it does
the pose image. The same init image at the same size is stored once, and a logged workflow still finds
its image after the client's file moved.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sidecar import atomic
from sidecar.errors import InitImageInvalid, JobNotFound
from sidecar.inputs import INIT_PREFIX, input_dir
from sidecar.userfiles import check_image, cover_box

__all__ = ["InitImage", "input_dir", "fit", "store", "source_of", "check_denoise", "field_of"]
FULL_DENOISE = 0.9999  # at 1.0 the init image means nothing: the job is a txt2img job


@dataclass(frozen=True)
class InitImage:
    source: Path  # the file the client named, or the job's image
    job_id: str | None  # the job it came from (initJobId)
    name: str  # the stored copy's name in the daemon's input folder (what LoadImage loads)
    width: int
    height: int


def fit(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scaled to cover width x height and centre-cropped (ComfyUI's ImageScale, crop "center"); only the
    part that shows is resampled (`cover_box`), so no covering image is ever made."""
    img = img.convert("RGB")
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.LANCZOS, box=cover_box(img.width, img.height, width, height))


def store(source: Path, field: str, folder: Path, size: tuple[int, int] | None) -> tuple[str, int, int]:
    """Blocking: the checked image at `size` (its own when None) stored as a PNG in `folder`;
    returns (name, width, height)."""
    info = check_image(str(source), field, InitImageInvalid)
    with Image.open(info.path) as img:
        fitted = fit(img, *(size or img.size))
    buffer = io.BytesIO()
    fitted.save(buffer, format="PNG")
    data = buffer.getvalue()
    name = f"{INIT_PREFIX}{hashlib.sha256(data).hexdigest()[:20]}.png"
    dest = folder / name
    if not dest.exists():  # the same name means the same bytes
        atomic.write_bytes(dest, data)
    return name, fitted.width, fitted.height


JobImage = Callable[[str], Awaitable[Any]]  # a job id -> its record (raises JobNotFound)


async def source_of(path: str | None, job_id: str | None, find_job: JobImage | None) -> tuple[Path, str | None]:
    """The file an init image is read from: the client's path, or the image of job `job_id`."""
    if path is not None and job_id is not None:
        raise InitImageInvalid("Give initImagePath or initJobId, not both.",
                               {"field": "initJobId", "fields": ["initImagePath", "initJobId"]})
    if path is not None:
        return Path(path), None
    assert job_id is not None
    try:
        job = await find_job(job_id) if find_job is not None else None
    except JobNotFound:
        job = None
    if job is None:
        raise InitImageInvalid(f"initJobId {job_id!r}: no such job.", {"field": "initJobId", "value": job_id})
    if job.status != "succeeded" or not job.output_file:
        raise InitImageInvalid(f"initJobId {job_id!r} is {job.status}; only a succeeded job's image can be an "
                               "init image.", {"field": "initJobId", "value": job_id, "status": job.status})
    return Path(job.output_file), job_id


def field_of(job_id: str | None) -> str:
    return "initJobId" if job_id is not None else "initImagePath"


def check_denoise(denoise: float | None, has_init: bool) -> None:
    """Below 1, denoise says how much of an init image is redrawn: without one it means nothing."""
    if denoise is not None and denoise < FULL_DENOISE and not has_init:
        raise InitImageInvalid(
            f"denoise {denoise} (below 1) redraws part of an init image: give initImagePath or initJobId, "
            "or leave denoise out.", {"field": "denoise", "value": denoise})

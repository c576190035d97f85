"""Small copies of job and page-version images for the studio's cards and strips (`?size=256`: the
longer side in pixels), made once and kept on disk, with an ETag so a browser that has one is answered
304 without a byte of image.

A thumbnail is a JPEG (a 256 px one is a few KB where the PNG it shrinks is hundreds): the cards want
a glance, the full PNG stays one click away. Its cache name carries the source's size and mtime, so a
replaced source (never, for versions: they are not overwritten) gets a new thumbnail and ETag; it starts
with the source's name, so a job's thumbnails go when `sidecar gc` removes the job.
Blocking (PIL, files): call `thumbnail` in a thread.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from sidecar import atomic

MIN_SIZE, MAX_SIZE = 16, 2048
FOLDER = "thumbnails"  # in the daemon's outputs folder; a job's are `<job id>-*.jpg` (gc removes them with it)
QUALITY = 85


@dataclass(frozen=True)
class Thumbnail:
    path: Path
    etag: str  # quoted, as the header carries it


def etag_of(source: Path, size: int) -> str:
    stat = source.stat()
    digest = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{size}".encode()).hexdigest()
    return f'"{digest[:32]}"'


def owned_by(cache_dir: Path, stem: str) -> list[Path]:
    """The thumbnails made of the image named `stem` (a job id)."""
    return sorted(cache_dir.glob(f"{stem}-*.jpg")) if cache_dir.is_dir() else []


def thumbnail(source: Path, size: int, cache_dir: Path) -> Thumbnail:
    """The JPEG of `source` at most `size` px on its longer side (never enlarged), from the cache or made
    now. Raises OSError when the source is gone or unreadable."""
    etag = etag_of(source, size)
    path = cache_dir / f"{source.stem}-{size}-{etag.strip(chr(34))[:16]}.jpg"
    if not path.is_file():
        with Image.open(source) as image:
            image.load()
            small = image.convert("RGB")
        small.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        small.save(out, "JPEG", quality=QUALITY, optimize=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(path, out.getvalue())
    return Thumbnail(path, etag)


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether a request's If-None-Match names this ETag (or `*`)."""
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags

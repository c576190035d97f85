"""Files the daemon reads because a client named them (pose and init images, captions): bounded first.

A path in a request is the client's word, not ours: it may not exist, name another user's home
(`~nosuchuser/`), be a 1 GB sparse file with a PNG header, or a small PNG that decodes to 179
megapixels. Each is refused here with the caller's 400 naming the field, before anything is read
whole: the size comes from `stat`, the format from the first bytes, the pixel count from the image
header (PIL reads only that on open), and only then is the file decoded or read.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sidecar.dataprep.kohya_layout import MAX_CAPTION_BYTES
from sidecar.errors import BadRequest, InvalidField

MAX_IMAGE_BYTES = 64 * 1024 * 1024  # a 4096x4096 RGBA PNG without compression is 64 MiB
MAX_IMAGE_PIXELS = 4096 * 4096  # 8x an SD1.5 page; ControlNet resizes anyway
# Each side and the shape too: a 1x16,000,000 PNG is under the pixel bound, yet scaled to cover a
# 64x64 job it becomes 64x1,024,000,000 pixels (the daemon was OOM-killed at 18 GB). A page strip of
# 1:8 is still taken; a thinner image is no page, pose or training image.
MAX_IMAGE_SIDE = 4096
MAX_ASPECT = 8.0
MAX_TEXT_BYTES = MAX_CAPTION_BYTES  # a caption is a line of tags
MAX_NAME_BYTES = 255  # NAME_MAX on Linux and macOS: a longer file name is ENAMETOOLONG, not "no such file"
MAX_PATH_BYTES = 1024  # PATH_MAX on macOS (4096 on Linux): the smaller, so a path works on both

# The formats a pose or init image may be, by their first bytes.
IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"RIFF": "WEBP",  # RIFF....WEBP, checked below
}


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str
    width: int
    height: int
    size_bytes: int


def shape_problem(width: int, height: int) -> str | None:
    """Why an image of this size must not be decoded or fitted (pixels, a side, the aspect ratio), from its
    header alone; None when it may. The one rule for every image the daemon takes (pose, init, studio
    pose uploads, training and dataset images)."""
    if width < 1 or height < 1:
        return f"{width}x{height} pixels: empty"
    if width * height > MAX_IMAGE_PIXELS:
        return f"{width}x{height} pixels; at most {MAX_IMAGE_PIXELS} (4096x4096)"
    if max(width, height) > MAX_IMAGE_SIDE:
        return f"{width}x{height} pixels; each side at most {MAX_IMAGE_SIDE}"
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return f"{width}x{height} pixels; the long side at most {MAX_ASPECT:g} times the short one"
    return None


def image_file_problem(path: Path) -> str | None:
    """Why an image file must not be decoded (too many bytes; no image header; pixels, a side or the shape
    past `shape_problem`), read from `stat` and the header only; None when it may be. For the files of a
    folder (a training set, a dataset the studio shows), where a bad one is a finding, not a refusal."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size > MAX_IMAGE_BYTES:
        return f"{size} bytes; the daemon reads images of at most {MAX_IMAGE_BYTES}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound follows
            with Image.open(path) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        return f"too many pixels to decode; at most {MAX_IMAGE_PIXELS} (4096x4096)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "not a decodable image"
    return shape_problem(width, height)


def text_file_problem(path: Path, limit: int = MAX_TEXT_BYTES) -> str | None:
    """Why a text file (a caption) must not be read: its size from `stat` past `limit`; None when it may
    be (a missing file is the caller's own finding)."""
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if size > limit:
        return f"{size} bytes; a caption is one line of tags, at most {limit} bytes"
    return None


def cover_box(width: int, height: int, out_width: int, out_height: int) -> tuple[float, float, float, float]:
    """The part of a `width` x `height` image that, scaled to cover `out_width` x `out_height` and
    centre-cropped (ComfyUI's ImageScale with crop "center"), fills the output: resizing just that box
    (`Image.resize(size, box=...)`) gives the same picture without ever holding the covering image,
    so the fit's memory is that of its output, whatever the input's shape."""
    scale = max(out_width / width, out_height / height)
    crop_w, crop_h = out_width / scale, out_height / scale
    left, top = (width - crop_w) / 2, (height - crop_h) / 2
    return (left, top, left + crop_w, top + crop_h)


def user_path(raw: str, field: str, error: type[BadRequest] = InvalidField) -> Path:
    """An absolute path from a request (`~` is the daemon user's home); refused if it cannot be one,
    including a name the file system cannot hold (`stat` would raise ENAMETOOLONG, which `Path.is_dir`
    and friends pass on instead of answering False)."""
    try:
        path = Path(raw).expanduser()
    except RuntimeError:  # ~someone with no such user
        raise error(f"{field}: cannot expand {raw!r}: no such user home.", {"field": field, "path": raw}) from None
    if "\x00" in raw or not path.is_absolute():
        raise error(f"{field} must be an absolute path, got {raw!r}.", {"field": field, "path": raw})
    try:
        encoded = os.fsencode(path)
    except UnicodeError:  # a lone surrogate: no file can have that name
        raise error(f"{field} is not a valid file name.", {"field": field, "path": raw}) from None
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > MAX_NAME_BYTES or len(encoded) >= MAX_PATH_BYTES:
        raise error(f"{field} is too long for a path: its names may have at most {MAX_NAME_BYTES} bytes each and "
                    f"the whole path under {MAX_PATH_BYTES}.",
                    {"field": field, "path": raw[:300], "limit": MAX_NAME_BYTES})
    return path


def bounded_size(path: Path, field: str, limit: int, error: type[BadRequest] = InvalidField) -> int:
    """The size of the regular file at `path` (from `stat`, nothing read), refused past `limit` bytes."""
    try:
        info = path.stat()
    except (OSError, ValueError):
        raise error(f"{field} {path} does not exist or is not readable.", {"field": field, "path": str(path)}) from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{field} {path} is not a file.", {"field": field, "path": str(path)})
    if info.st_size > limit:
        raise error(f"{field} {path} is {info.st_size} bytes; the daemon reads at most {limit}.",
                    {"field": field, "path": str(path), "sizeBytes": info.st_size, "limit": limit})
    return info.st_size


def check_image(raw: str, field: str, error: type[BadRequest] = InvalidField, *,
                max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Blocking (run in a thread): `raw` names a PNG, JPEG or WebP within the size and pixel bounds
    that decodes completely; refused with `error` naming `field` otherwise."""
    path = user_path(raw, field, error)
    size = bounded_size(path, field, max_bytes, error)
    details = {"field": field, "path": str(path)}
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise error(f"{field} {path} cannot be read: {exc.strerror}.", details) from None
    kind = next((name for magic, name in IMAGE_MAGIC.items() if head.startswith(magic)), None)
    if kind == "WEBP" and head[8:12] != b"WEBP":
        kind = None
    if kind is None:
        raise error(f"{field} {path} is not a PNG, JPEG or WebP image.", details)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own bound follows
            with Image.open(path) as img:  # reads the header only
                width, height = img.size
                if width * height > max_pixels:
                    raise error(
                        f"{field} {path} is {width}x{height} pixels; the daemon takes images of at most "
                        f"{max_pixels} pixels (4096x4096).",
                        {**details, "width": width, "height": height, "limit": max_pixels})
                problem = shape_problem(width, height)
                if problem is not None:
                    raise error(f"{field} {path} is {problem}.",
                                {**details, "width": width, "height": height, "maxSide": MAX_IMAGE_SIDE,
                                 "maxAspect": MAX_ASPECT})
                img.load()  # every byte decodes: a truncated or corrupt file is refused now, not mid-job
    except Image.DecompressionBombError as exc:
        raise error(f"{field} {path} is too many pixels to decode ({exc}).", {**details, "limit": max_pixels}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise error(f"{field} {path} is not a decodable image.", {**details, "reason": str(exc)}) from None
    return ImageInfo(path=path, format=kind, width=width, height=height, size_bytes=size)


def read_text(path: Path, field: str, limit: int = MAX_TEXT_BYTES, error: type[BadRequest] = InvalidField) -> str:
    """A user's text file (a caption), refused past `limit` bytes before it is read."""
    bounded_size(path, field, limit, error)
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)  # the file may have grown since the stat
    if len(data) > limit:
        raise error(f"{field} {path} is over {limit} bytes.", {"field": field, "path": str(path), "limit": limit})
    return data.decode("utf-8", errors="replace")

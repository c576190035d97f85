"""Pose images the studio's Generate form picked from disk: a browser cannot hand a page the file's path,
so the page sends the bytes and the daemon keeps them under `<data_dir>/poses/`, named by their content
hash (the same file twice is one file), then checks them as any `poseImagePath` is checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

from sidecar import atomic
from sidecar.errors import InvalidField, PoseImageInvalid
from sidecar.userfiles import ImageInfo, check_image

FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}


def store_pose(poses_dir: Path, data_base64: str) -> ImageInfo:
    """Decode, store (atomically, once per content) and check; a file that is not a usable image is
    removed again and refused as `pose_image_invalid`."""
    try:
        data = base64.b64decode(data_base64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField("dataBase64 is not base64.", {"field": "dataBase64"}) from None
    if not data:
        raise InvalidField("dataBase64 is empty.", {"field": "dataBase64"})
    digest = hashlib.sha256(data).hexdigest()[:24]
    poses_dir.mkdir(parents=True, exist_ok=True)
    staging = poses_dir / f".check-{digest}"
    atomic.write_bytes(staging, data)
    try:
        info = check_image(str(staging), "dataBase64", PoseImageInvalid)
        final = poses_dir / f"pose-{digest}{FORMAT_SUFFIX[info.format]}"
        staging.replace(final)
    finally:
        staging.unlink(missing_ok=True)
    return ImageInfo(path=final, format=info.format, width=info.width, height=info.height, size_bytes=info.size_bytes)

"""Moving one file to or from the store so that a partial one is never visible as the file.

Upload: into a bucket, one `put_file`: gcsfs (a simple or resumable upload) and s3fs (PutObject, or a
multipart upload that is only an object once CompleteMultipartUpload succeeds; s3fs aborts it on an error)
make the object appear whole or not at all, so no temporary key (and no second copy of a large LoRA) is
needed. Into a folder (file://), the bytes go to a hidden temporary name beside the target and are renamed
over it. Download: to a hidden temporary file beside the target, checked against the manifest's sha256,
then renamed over it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from sidecar.atomic import replacing, write_text
from sidecar.storage.manifest import PARTIAL_PREFIX, Entry, hash_file
from sidecar.storage.store import Store

Progress = Callable[[int], None]  # bytes moved since the last call


def _callback(progress: Progress | None):
    if progress is None:
        return None
    from fsspec.callbacks import Callback

    class _Bytes(Callback):
        # fsspec calls relative_update/absolute_update as chunks go; only the growth is reported.
        def call(self, *args, **kwargs):
            return None

        def relative_update(self, inc: int = 1) -> None:
            progress(inc)

        def absolute_update(self, value: int) -> None:
            grown = value - (self.value or 0)
            self.value = value
            if grown > 0:
                progress(grown)

    return _Bytes()


def upload(store: Store, local: Path, key: str, progress: Progress | None = None) -> None:
    cb = _callback(progress)
    kwargs = {"callback": cb} if cb is not None else {}
    if store.atomic_put:
        store.fs.put_file(str(local), key, **kwargs)
        return
    parent, _, name = key.rpartition("/")
    tmp = f"{parent}/{PARTIAL_PREFIX}-{uuid.uuid4().hex[:12]}-{name}"
    store.fs.makedirs(parent, exist_ok=True)
    try:
        store.fs.put_file(str(local), tmp, **kwargs)
        store.fs.mv(tmp, key)  # a rename within one folder: atomic
    finally:
        if store.fs.exists(tmp):
            store.fs.rm_file(tmp)


class DownloadMismatch(Exception):
    """The bytes fetched are not the ones the manifest names (the file changed there during the sync)."""


def download(store: Store, key: str, local: Path, expected: Entry, progress: Progress | None = None) -> None:
    cb = _callback(progress)
    kwargs = {"callback": cb} if cb is not None else {}
    # The manifest's size first: an object larger than it says (a hostile or half-rewritten bucket) is not
    # fetched at all, so a pull never fills the disk with bytes the manifest did not announce.
    if int(store.fs.info(key).get("size", -1)) != expected.size:
        raise DownloadMismatch(key)
    with replacing(local) as tmp:
        store.fs.get_file(key, str(tmp), **kwargs)
        if hash_file(tmp) != expected.sha256:
            raise DownloadMismatch(key)


def delete(store: Store, key: str) -> None:
    store.fs.rm_file(key)


TOO_LARGE = "\x00too large"  # read_text's answer for an object over its limit (no manifest holds a NUL)


def read_text(store: Store, key: str, limit: int) -> str | None:
    """The object's text, None if there is none, TOO_LARGE past `limit` bytes (only limit + 1 are fetched)."""
    try:
        data = store.fs.cat_file(key, start=0, end=limit + 1)
    except FileNotFoundError:
        return None
    if len(data) > limit:
        return TOO_LARGE
    return data.decode("utf-8", errors="replace")


def write_small(store: Store, key: str, text: str) -> None:
    """The manifest: one small object (a single PUT, atomic in a bucket); in a folder, temp and rename."""
    if store.atomic_put:
        store.fs.pipe_file(key, text.encode("utf-8"))
    else:
        write_text(Path(key), text)

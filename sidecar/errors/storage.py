"""The cloud store of `[storage]` (`sidecar sync`, remote runs that train from the bucket): not configured,
its library not installed, not reachable, refusing the credentials, or both sides changed."""

from __future__ import annotations

from sidecar.errors.base import EXIT_FAILED, EXIT_INPUT, EXIT_UNAVAILABLE, BadRequest, Conflict, SidecarError


class StorageNotConfigured(BadRequest):
    """No `[storage] url` (or SIDECAR_STORAGE) is set."""

    code = "storage_not_configured"


class StorageUnavailable(SidecarError):
    """The store's library (the `[storage]` extra: gcsfs, s3fs) is missing, or the store does not answer."""

    http_status = 503
    code = "storage_unavailable"
    exit_code = EXIT_UNAVAILABLE


class StorageRefused(SidecarError):
    """The store answered but refused: a wrong or missing credential, no such bucket, no permission.
    Nothing was changed on either side."""

    http_status = 403
    code = "storage_refused"
    exit_code = EXIT_INPUT


class SyncConflict(Conflict):
    """Files changed on both sides since the last sync: none of them was moved; `details.files` names them."""

    code = "sync_conflict"
    exit_code = EXIT_FAILED

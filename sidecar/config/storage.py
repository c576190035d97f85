"""The `[storage]` table of the configuration: the cloud bucket (or NAS folder) that datasets, LoRAs and
outputs are kept in, for `sidecar sync` and remote training. Only where the store is: its credentials come
from each store's own standard environment (GOOGLE_APPLICATION_CREDENTIALS, AWS_*, ...), never from here,
so they are never in the configuration, `config show`, a log line or an answer.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMES = ("gs", "s3", "file")


class StorageSettings(BaseModel):
    """`[storage]`: where the bucket is. None = no storage (everything stays as today)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    url: str | None = Field(
        None, description="the store and prefix: gs://bucket/prefix (Google Cloud Storage), s3://bucket/prefix "
                          "(S3 and S3-compatible stores) or file:///path (a NAS or a mounted folder); none = no "
                          "storage")
    endpoint_url: str | None = Field(
        None, description="S3-compatible stores (MinIO, R2, B2, ...): the endpoint, e.g. https://<account>.r2."
                          "cloudflarestorage.com [default: AWS_ENDPOINT_URL, else AWS itself]")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        v = v.strip()
        parts = urlsplit(v)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"{v!r}: give gs://bucket/prefix, s3://bucket/prefix or file:///path")
        if parts.query or parts.fragment:
            raise ValueError(f"{v!r}: no ?query or #fragment in a storage URL")
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise ValueError(f"{v!r}: a file URL names an absolute local path, file:///path")
        elif not parts.netloc or "@" in parts.netloc or ":" in parts.netloc:
            raise ValueError(f"{v!r}: name the bucket, {parts.scheme}://bucket/prefix (no credentials in the URL)")
        return v.rstrip("/")

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or "@" in parts.netloc:
            raise ValueError(f"{v!r}: give http(s)://host[:port], without credentials")
        return v.strip().rstrip("/")

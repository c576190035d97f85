"""Opening the `[storage]` store through fsspec, and turning what its libraries raise into our codes.

Credentials are never ours to hold: gcsfs reads GOOGLE_APPLICATION_CREDENTIALS (Google's application default
credentials; STORAGE_EMULATOR_HOST points it at an emulator), s3fs/botocore read AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE and AWS_ENDPOINT_URL. No message we build names them,
and a store's own message is scrubbed of any credential value from the environment before it is shown.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from sidecar.config.storage import StorageSettings
from sidecar.errors import StorageNotConfigured, StorageRefused, StorageUnavailable

EXTRA_HINT = "install the storage extra: pip install 'plasma-sidecar[storage]'"
LIBRARIES = {"gs": "gcsfs", "s3": "s3fs"}
# Environment values that must never appear in a message (the store's error text included).
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")


@dataclass(frozen=True)
class Store:
    """An opened store: the fsspec filesystem and the root every key lives under ("bucket/prefix" for a
    bucket, an absolute folder for file://)."""

    fs: Any
    scheme: str
    root: str
    url: str  # as configured: names the bucket and prefix, never a credential

    def key(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def display(self, key: str) -> str:
        """A key as a URL the artist can paste (gs://bucket/prefix/...)."""
        return f"{self.scheme}://{key}"

    @property
    def atomic_put(self) -> bool:
        """Whether one upload is all-or-nothing in the store itself: a GCS object (simple or resumable
        upload) and an S3 object (PutObject, or a multipart upload until CompleteMultipartUpload) appear
        only once complete; a file written into a folder is visible while it is written."""
        return self.scheme in ("gs", "s3")


def open_store(settings: StorageSettings, environ: Mapping[str, str] | None = None) -> Store:
    env = os.environ if environ is None else environ
    if settings.url is None:
        raise StorageNotConfigured(
            "No store is configured: set [storage] url in the config file (gs://bucket/prefix, s3://bucket/prefix "
            "or file:///path), or SIDECAR_STORAGE='{\"url\": \"...\"}'.", {"field": "storage.url"})
    parts = urlsplit(settings.url)
    scheme = parts.scheme
    if scheme == "file":
        import fsspec

        return Store(fsspec.filesystem("file", skip_instance_cache=True), scheme,
                     unquote(parts.path).rstrip("/") or "/", settings.url)
    try:
        # gcsfs.core's class, not the package's default: that one (gcsfs >= 2026.x, for zonal and
        # hierarchical buckets) first asks Google's gRPC control plane for the bucket's layout, which an
        # emulator does not serve (a 60 s stall per bucket); the JSON API of the core class serves every bucket.
        module = importlib.import_module("gcsfs.core" if scheme == "gs" else "s3fs")
    except ImportError:
        raise StorageUnavailable(f"{settings.url} needs {LIBRARIES[scheme]}, which is not installed: {EXTRA_HINT}",
                                 {"library": LIBRARIES[scheme]}) from None
    root = f"{parts.netloc}{unquote(parts.path)}".rstrip("/")
    # skip_instance_cache: fsspec would otherwise hand back a filesystem made with other credentials;
    # use_listings_cache off: a sync must see the store as it is now, not as listed a minute ago.
    common: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if scheme == "gs":
        token = _gcs_token(env)
        try:
            fs = module.GCSFileSystem(token=token, **common)
        except Exception as exc:  # google-auth reading the file: a KeyError, ValueError, DefaultCredentialsError...
            # Only the exception's type: its text may quote the file's contents.
            where = f"the file GOOGLE_APPLICATION_CREDENTIALS names ({token})" if env.get(
                "GOOGLE_APPLICATION_CREDENTIALS") else "Google's application default credentials"
            raise StorageRefused(f"{settings.url} refused before any request: {where} could not be used as a "
                                 f"Google credential ({type(exc).__name__}); give a service-account key file or run "
                                 "`gcloud auth application-default login`; nothing was changed.",
                                 {"store": settings.url}) from None
    else:
        endpoint = settings.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        fs = module.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {}, **common)
    return Store(fs, scheme, root, settings.url)


def _gcs_token(env: Mapping[str, str]) -> Any:
    """gcsfs's `token`: the service-account file GOOGLE_APPLICATION_CREDENTIALS names, so that a wrong one
    fails loudly instead of quietly falling back to anonymous access; against an emulator without one,
    anonymous (the emulator checks none); else gcsfs's own search (gcloud's login, the metadata server)."""
    path = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if path:
        return path
    if env.get("STORAGE_EMULATOR_HOST"):
        return "anon"
    return None


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    for name in SECRET_VARIABLES:
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


@contextlib.contextmanager
def translated(store: Store, doing: str) -> Iterator[None]:
    """Run a store operation; what gcsfs, s3fs, botocore, google-auth and aiohttp raise becomes
    `storage_refused` (the store said no: credentials, permission, no such bucket) or `storage_unavailable`
    (it could not be reached), naming the store and what was being done, never a credential."""
    try:
        yield
    except (StorageRefused, StorageUnavailable, StorageNotConfigured):
        raise
    except PermissionError as exc:
        raise StorageRefused(f"{store.url} refused to {doing}: {scrub(str(exc))}. Check the credentials in the "
                             "store's environment (see the manual's Cloud storage page); nothing was changed.",
                             {"store": store.url}) from None
    except FileNotFoundError as exc:
        if _is_bucket_missing(store, exc):
            raise StorageRefused(f"{store.url}: the bucket does not exist or these credentials cannot see it "
                                 f"({doing}); nothing was changed.", {"store": store.url}) from None
        raise
    except Exception as exc:  # the libraries' own trees: google.auth, botocore, aiohttp, gcsfs.HttpError
        kind = _classify(exc)
        if kind is None:
            raise
        message = scrub(f"{type(exc).__name__}: {exc}")[:500]
        if kind == "refused":
            raise StorageRefused(f"{store.url} refused to {doing}: {message}. Check the credentials in the store's "
                                 "environment; nothing was changed.", {"store": store.url}) from None
        raise StorageUnavailable(f"{store.url} could not be reached to {doing}: {message}",
                                 {"store": store.url}) from None


def _is_bucket_missing(store: Store, exc: FileNotFoundError) -> bool:
    text = str(exc)
    return store.scheme != "file" and ("NoSuchBucket" in text or "bucket" in text.lower())


UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
               "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError",
               "ConnectionError", "TimeoutError"}
REFUSING = {"DefaultCredentialsError", "RefreshError", "NoCredentialsError", "PartialCredentialsError",
            "InvalidSignatureError"}


def _classify(exc: BaseException) -> str | None:
    """"unavailable" (could not reach the store), "refused" (it answered no), or None (not the store's)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    module = type(exc).__module__
    if names & UNREACHABLE:
        return "unavailable"
    if names & REFUSING or (module.startswith("botocore") and "ClientError" in names):
        return "refused"
    if module.startswith("gcsfs") and getattr(exc, "code", None) in (400, 401, 403, 404):
        return "refused"
    if module.startswith(("gcsfs", "aiohttp", "botocore", "aiobotocore", "google")) or isinstance(exc, OSError):
        return "unavailable"
    return None

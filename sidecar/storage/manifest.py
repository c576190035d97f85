"""What a synced folder holds, as sha256 per file: the manifest kept beside the files in the store
(`<prefix>/<kind>/<name>/.sidecar-manifest.json`), the local folder's own (hashed, with a cache keyed by
size and modification time so an unchanged file is not read again), and the local record of the last
synced state (what both sides held when they last agreed), which tells "changed here" from "changed there".

The record, its hash cache and the journal of an unfinished push live in the data dir
(`<data_dir>/sync/<id>.json`, `.journal`), one per (store folder, local folder) pair: never in the synced
folder, where a trainer or the pipeline would see them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sidecar.atomic import write_text

MANIFEST_NAME = ".sidecar-manifest.json"
PARTIAL_PREFIX = ".sidecar-partial"  # temporary names of files being moved: hidden, never synced
CHUNK = 1 << 20
# The store's manifest is read whole: a hostile or broken bucket must not make a pull read gigabytes of it.
# 64 MiB holds some 400,000 entries (about 150 bytes each), far past any dataset, LoRA folder or outputs.
MANIFEST_MAX_BYTES = 64 << 20
PATH_MAX_CHARS = 1024  # a relative path in the manifest (each part also under the usual 255 bytes)


def unsafe_path(rel: str) -> str | None:
    """Why `rel` cannot be a synced file's relative path (None: it can). A manifest is read from the store,
    which another machine or tool can write: a pull writes `local / rel`, so `..`, an absolute path, an
    empty or hidden part, a backslash or NUL would write outside the folder or where a sync never looks."""
    if not rel or len(rel) > PATH_MAX_CHARS:
        return "empty or too long"
    if "\x00" in rel or "\\" in rel:
        return "holds a NUL or a backslash"
    if rel.startswith("/"):
        return "is absolute"
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' part"
        if part.startswith("."):
            return "has a hidden part (never synced)"
        if len(part.encode("utf-8", "surrogatepass")) > 255:
            return "has a part over 255 bytes"
    return None


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    """The store's `.sidecar-manifest.json`: every synced file's relative path (with `/`) and its hash."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    files: dict[str, Entry] = Field(default_factory=dict)

    @field_validator("files")
    @classmethod
    def _relative_inside(cls, files: dict[str, Entry]) -> dict[str, Entry]:
        for rel in files:
            why = unsafe_path(rel)
            if why is not None:
                raise ValueError(f"the path {rel[:200]!r} {why}")
        return files

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=1, sort_keys=True) + "\n"


class Cached(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int
    mtime_ns: int
    sha256: str


class SyncRecord(BaseModel):
    """The local record of one (store folder, local folder) pair."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    store: str
    local: str
    synced: dict[str, Entry] = Field(default_factory=dict, description="both sides at the last sync")
    hashes: dict[str, Cached] = Field(default_factory=dict, description="the local files' hash cache")


def skipped(name: str) -> bool:
    """Hidden files (.DS_Store, .git, our own temporary and manifest files) are never synced."""
    return name.startswith(".")


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def local_manifest(folder: Path, cache: dict[str, Cached]) -> tuple[dict[str, Entry], dict[str, Cached]]:
    """The folder's files (regular files, not hidden, links not followed) and their hashes; the new cache."""
    files: dict[str, Entry] = {}
    fresh: dict[str, Cached] = {}
    if not folder.is_dir():
        return files, fresh
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not skipped(d))
        for name in sorted(filenames):
            if skipped(name):
                continue
            path = Path(dirpath) / name
            st = path.lstat()
            if not path.is_file() or path.is_symlink():
                continue
            rel = path.relative_to(folder).as_posix()
            known = cache.get(rel)
            if known is not None and known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
                sha = known.sha256
            else:
                sha = hash_file(path)
            files[rel] = Entry(sha256=sha, size=st.st_size)
            fresh[rel] = Cached(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha)
    return files, fresh


def record_path(state_dir: Path, store_key: str, local: Path) -> Path:
    ident = hashlib.sha256(f"{store_key}\n{local}".encode()).hexdigest()[:20]
    return state_dir / f"{ident}.json"


def load_record(path: Path, store_key: str, local: Path) -> SyncRecord:
    try:
        record = SyncRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        # No record (a first sync) or one we cannot read: start from nothing known, which can only make a
        # sync more careful (a file on both sides that differs is then a conflict, never overwritten).
        return SyncRecord(store=store_key, local=str(local))
    return record


def save_record(path: Path, record: SyncRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, record.model_dump_json(indent=1) + "\n")


def read_journal(path: Path) -> dict[str, Entry]:
    """Files an interrupted push had uploaded (one JSON line each, appended as each upload completed)."""
    done: dict[str, Entry] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return done
    for line in lines:
        try:
            item = json.loads(line)
            done[item["path"]] = Entry(sha256=item["sha256"], size=item["size"])
        except (ValueError, KeyError, TypeError):
            continue  # the last line of a killed process may be torn
    return done


def append_journal(path: Path, rel: str, entry: Entry) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"path": rel, "sha256": entry.sha256, "size": entry.size}) + "\n")
        f.flush()
        os.fsync(f.fileno())

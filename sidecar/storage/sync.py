"""One `sidecar sync push|pull`: read both sides' manifests and the last synced state, plan (plan.py), move
what the plan says (transfer.py), then write the store's manifest and the local record.

Resuming: each upload that completes is appended to a local journal before the next starts. A push killed
half-way has not yet written the store's manifest, so the next push reads the journal, checks each listed
object is there with its size, and counts it as already sent: only what is missing moves. A pull writes every
file whole (temp and rename), so the next pull finds the finished ones equal by their hashes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import ValidationError

from sidecar.errors import StorageRefused, StorageUnavailable, SyncConflict
from sidecar.storage import transfer
from sidecar.storage.manifest import (
    MANIFEST_MAX_BYTES, MANIFEST_NAME, PARTIAL_PREFIX, Cached, Entry, Manifest, append_journal, load_record,
    local_manifest, read_journal, record_path, save_record,
)
from sidecar.storage.plan import Plan, next_base, plan_sync
from sidecar.storage.store import Store, translated

Direction = Literal["push", "pull"]
Kind = Literal["datasets", "loras", "checkpoints", "outputs"]
CONFLICTS_SHOWN = 20
PARTIAL_MAX_AGE = 3600.0  # seconds after which a folder store's temporary file is a leftover


class ProgressSink(Protocol):
    def start(self, files: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self, action: str, path: str) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class SyncRequest:
    direction: Direction
    kind: Kind
    local: Path
    name: str | None  # the folder under <prefix>/<kind>/; None for loras and checkpoints (the folder itself)
    only: frozenset[str] | None = None  # relative paths to consider (one LoRA); None: all
    dry_run: bool = False
    delete: bool = False


@dataclass
class SyncReport:
    request: SyncRequest
    remote: str  # the store folder, as a URL
    plan: Plan
    done: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_moved: int = 0
    delete_refused: bool = False  # --delete with nothing at all on the source side: nothing deleted


def remote_folder(store: Store, request: SyncRequest) -> str:
    return store.key(request.kind, request.name or "")


def check_reachable(store: Store) -> None:
    """Before anything is read or written: the folder (file://) or bucket exists and the credentials work."""
    if store.scheme == "file":
        if not Path(store.root).is_dir():
            raise StorageRefused(f"{store.url}: the folder {store.root} does not exist (is the disk mounted?); "
                                 "create it to use it as the store. Nothing was changed.", {"store": store.url})
        return
    # The prefix first: a key limited to the prefix (the advice of the manual) may not list the bucket.
    with translated(store, "list the store"):
        try:
            store.fs.ls(store.root, detail=False)
            return
        except FileNotFoundError:
            pass  # nothing under the prefix yet, or no such bucket: the bucket says which
    bucket = store.root.split("/", 1)[0]
    with translated(store, "list the bucket"):
        try:
            store.fs.ls(bucket, detail=False)
        except FileNotFoundError:
            raise StorageRefused(f"{store.url}: the bucket {bucket} does not exist (or these credentials cannot see "
                                 "it); nothing was changed.", {"store": store.url}) from None
        except PermissionError:
            pass  # allowed the prefix only: fine, an empty prefix


def run_sync(store: Store, request: SyncRequest, state_dir: Path, sink: ProgressSink | None = None) -> SyncReport:
    folder = remote_folder(store, request)
    manifest_key = f"{folder}/{MANIFEST_NAME}"
    record_file = record_path(state_dir, store.display(folder), request.local)
    journal_file = record_file.with_suffix(".journal")
    record = load_record(record_file, store.display(folder), request.local)

    check_reachable(store)
    stored = read_manifest(store, manifest_key)
    remote_files = dict(stored)  # a push updates this copy as files land; `stored` says whether to rewrite it
    local_files, hashes = local_manifest(request.local, record.hashes)
    record.hashes = hashes

    if request.direction == "push":
        sent_before = _verified_journal(store, folder, read_journal(journal_file), remote_files)
        remote_files = {**remote_files, **sent_before}
        source, target = local_files, remote_files
    else:
        source, target = remote_files, local_files
    # An empty source is more likely a typo or an unmounted folder than a wish to empty the other side.
    refuse_delete = request.delete and not source
    plan = plan_sync(source, target, record.synced, delete=request.delete and not refuse_delete,
                     only=set(request.only) if request.only is not None else None)
    report = SyncReport(request, store.display(folder), plan, delete_refused=refuse_delete)
    if request.dry_run:
        return report

    if request.direction == "push":
        _push(store, request, folder, plan, source, target, journal_file, report, sink)
        if report.done or report.deleted or remote_files != stored:
            with translated(store, f"write {store.display(manifest_key)}"):
                transfer.write_small(store, manifest_key, Manifest(files=dict(sorted(target.items()))).to_json())
        journal_file.unlink(missing_ok=True)
        record.synced = next_base(record.synced, source, plan, set(report.done) | set(report.deleted))
        save_record(record_file, record)
    else:
        try:
            _pull(store, request, folder, plan, source, report, sink, record.hashes)
        finally:
            # Every pulled file is whole where it lies: record what was done even if a later one failed.
            record.synced = next_base(record.synced, source, plan, set(report.done) | set(report.deleted))
            save_record(record_file, record)
    return report


def conflict_error(report: SyncReport) -> SyncConflict | None:
    """The error a sync with conflicts ends with (everything else was synced), naming the files."""
    conflicts = report.plan.conflicts
    if not conflicts:
        return None
    shown = conflicts[:CONFLICTS_SHOWN]
    more = f" and {len(conflicts) - len(shown)} more" if len(conflicts) > len(shown) else ""
    return SyncConflict(
        f"{len(conflicts)} file(s) changed both here and in the store since the last sync, left as they are on "
        f"both sides: {', '.join(shown)}{more}. To take the store's copy, move yours away and pull; to keep "
        "yours, move it away, pull, put it back and push.", {"files": conflicts})


def read_manifest(store: Store, key: str) -> dict[str, Entry]:
    """The store's manifest at `key` ({} when there is none), bounded and checked: it is read from a bucket
    another machine or tool can write, and a pull writes each path it names, so one unreadable entry or one
    path leading out of the folder refuses it all (StorageRefused; nothing was changed)."""
    with translated(store, f"read {store.display(key)}"):
        text = transfer.read_text(store, key, MANIFEST_MAX_BYTES)
    if text is transfer.TOO_LARGE:
        raise StorageRefused(f"{store.display(key)} is over {MANIFEST_MAX_BYTES >> 20} MiB: not a manifest "
                             "this tool wrote; nothing was changed.", {"store": store.url, "file": MANIFEST_NAME})
    if not text:
        return {}
    try:
        return Manifest.model_validate_json(text).files
    except ValueError as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) and exc.errors() else {"msg": str(exc)}
        raise StorageRefused(f"{store.display(key)} is not a manifest this tool can use ({str(first['msg'])[:300]}); "
                             "nothing was changed. Push again from a machine with the files to rewrite it.",
                             {"store": store.url, "file": MANIFEST_NAME}) from None


def _verified_journal(store: Store, folder: str, journal: dict[str, Entry],
                      manifest: dict[str, Entry]) -> dict[str, Entry]:
    """Uploads an interrupted push completed, that are still there with their size."""
    out: dict[str, Entry] = {}
    for rel, entry in journal.items():
        if manifest.get(rel) == entry:
            continue
        with translated(store, "check an earlier upload"), contextlib.suppress(FileNotFoundError):
            if int(store.fs.info(f"{folder}/{rel}").get("size", -1)) == entry.size:
                out[rel] = entry
    return out


def _sweep_partials(store: Store, folder: str) -> None:
    """A folder store (file://): temporary files a killed push left (hidden, never listed in the manifest).
    Only old ones: a push from another machine into the same folder may be writing one right now."""
    if store.atomic_put or not Path(folder).is_dir():
        return
    now = time.time()
    for leftover in Path(folder).rglob(f"{PARTIAL_PREFIX}-*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > PARTIAL_MAX_AGE:
                leftover.unlink()


def _push(store: Store, request: SyncRequest, folder: str, plan: Plan, source: dict[str, Entry],
          target: dict[str, Entry], journal_file: Path, report: SyncReport, sink: ProgressSink | None) -> None:
    _sweep_partials(store, folder)
    if sink is not None:
        sink.start(len(plan.send) + len(plan.delete), sum(source[p].size for p in plan.send))
    try:
        for rel in plan.send:
            with translated(store, f"upload {rel}"):
                transfer.upload(store, request.local / rel, f"{folder}/{rel}", sink.advance if sink else None)
            append_journal(journal_file, rel, source[rel])
            target[rel] = source[rel]
            report.done.append(rel)
            report.bytes_moved += source[rel].size
            if sink is not None:
                sink.file_done("uploaded", rel)
        for rel in plan.delete:
            with translated(store, f"delete {rel}"), contextlib.suppress(FileNotFoundError):
                transfer.delete(store, f"{folder}/{rel}")
            target.pop(rel, None)
            report.deleted.append(rel)
            if sink is not None:
                sink.file_done("deleted", rel)
    finally:
        if sink is not None:
            sink.stop()


def _inside(local: Path, rel: str) -> Path:
    """Where a pulled file goes: under `local` even when a folder on the way is a link out of it (the manifest's
    paths are already checked; a link the user made would still lead the write elsewhere)."""
    dest = local / rel
    root = local.resolve()
    parent = dest.parent.resolve()
    if parent != root and root not in parent.parents:
        raise StorageRefused(f"{dest} leads out of {local} (a folder on the way is a link); nothing was written "
                             "for it.", {"file": rel})
    if dest.is_symlink():
        raise StorageRefused(f"{dest} is a link: a pull does not write through it; nothing was written for it.",
                             {"file": rel})
    return dest


def _pull(store: Store, request: SyncRequest, folder: str, plan: Plan, source: dict[str, Entry],
          report: SyncReport, sink: ProgressSink | None, hashes: dict[str, Cached]) -> None:
    if sink is not None:
        sink.start(len(plan.send) + len(plan.delete), sum(source[p].size for p in plan.send))
    try:
        for rel in plan.send:
            dest = _inside(request.local, rel)
            try:
                with translated(store, f"download {rel}"):
                    transfer.download(store, f"{folder}/{rel}", dest, source[rel], sink.advance if sink else None)
            except transfer.DownloadMismatch:
                raise StorageUnavailable(f"{store.display(folder)}/{rel} changed in the store during the pull (its "
                                         "bytes are not the manifest's); nothing was written for it. Run the pull "
                                         "again.", {"file": rel}) from None
            except FileNotFoundError:
                raise StorageUnavailable(f"{store.display(folder)}/{rel} is in the store's manifest but not in the "
                                         "store (removed by another tool?); push it again from a machine that has "
                                         "it.", {"file": rel}) from None
            st = dest.stat()
            hashes[rel] = Cached(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=source[rel].sha256)
            report.done.append(rel)
            report.bytes_moved += source[rel].size
            if sink is not None:
                sink.file_done("downloaded", rel)
        for rel in plan.delete:
            (request.local / rel).unlink(missing_ok=True)
            hashes.pop(rel, None)
            report.deleted.append(rel)
            if sink is not None:
                sink.file_done("deleted", rel)
    finally:
        if sink is not None:
            sink.stop()

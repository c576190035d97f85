"""`sidecar sync push|pull datasets|loras|checkpoints|outputs [PATH or NAME] [--dry-run] [--delete]`: keep training
folders, the LoRA folder and a project's outputs in the `[storage]` bucket. Runs here, no daemon needed.

- `datasets PATH`: the training folder PATH, as `<prefix>/datasets/<folder name>/` (a pull creates PATH);
- `loras [NAME]`: the daemon's LoRA folder (ComfyUI's models/loras/ when configured, else the data dir's),
  as `<prefix>/loras/`; NAME: only that LoRA file;
- `checkpoints [NAME]`: the checkpoint folder (ComfyUI's models/checkpoints/ when configured, else the data
  dir's models/checkpoints/), as `<prefix>/checkpoints/`; NAME: only that file (a rented ComfyUI fetches a
  checkpoint from there instead of over SFTP, `sidecar/backends/bucket_models.py`);
- `outputs [PROJECT]`: the project's `output/` (default: the project_root setting, else the working
  folder), as `<prefix>/outputs/<project folder name>/`.

Exit codes: 0 ok, 1 conflicts (named; everything else was synced), 2 bad input or configuration, or the store
refused (credentials); 3 the store or its library is not there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sidecar.cli_support import tool_group
from sidecar.errors import InvalidField
from sidecar.storage.sync import Direction, SyncReport, SyncRequest, conflict_error

KINDS = ("datasets", "loras", "checkpoints", "outputs")
SHOWN = 50  # files listed one per line; past it, a count


@tool_group("sync")
def sync() -> None:
    """Keep datasets, LoRAs and outputs in the [storage] bucket (gs://, s3://, file://)."""


def _options(f):
    for opt in reversed([
        click.argument("kind", type=click.Choice(KINDS)),
        click.argument("target", required=False),
        click.option("--dry-run", is_flag=True, help="list what would move or be deleted; change nothing"),
        click.option("--delete", is_flag=True,
                     help="also delete on the other side the files this side does not have (never without it)"),
        click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                     help="TOML config file"),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                     help="the data dir (the record of the last sync is kept in its sync/ folder)"),
        click.option("--loras-dir", type=click.Path(path_type=Path), default=None,
                     help="loras: this folder instead of the daemon's LoRA folder"),
        click.option("--checkpoints-dir", type=click.Path(path_type=Path), default=None,
                     help="checkpoints: this folder instead of the daemon's checkpoint folder"),
        click.option("--quiet", "-q", is_flag=True, help="no progress bar, only the summary"),
    ]):
        f = opt(f)
    return f


@sync.command("push")
@_options
def push(**kwargs: Any) -> None:
    """Send what changed here to the store: `datasets PATH` (a training folder), `loras [NAME]` (the LoRA
    folder, or one LoRA), `checkpoints [NAME]` (the checkpoint folder, or one checkpoint), `outputs [PROJECT]`
    (a project's output/). Files changed on both sides are
    named and left alone (exit 1)."""
    _run("push", **kwargs)


@sync.command("pull")
@_options
def pull(**kwargs: Any) -> None:
    """Fetch what changed in the store into `datasets PATH`, `loras [NAME]`, `checkpoints [NAME]` or
    `outputs [PROJECT]`. Files
    changed on both sides are named and left alone (exit 1)."""
    _run("pull", **kwargs)


def _run(direction: Direction, kind: str, target: str | None, dry_run: bool, delete: bool, loras_dir: Path | None,
         checkpoints_dir: Path | None, quiet: bool, **flags: Any) -> None:
    from sidecar.cli_support import settings_from
    from sidecar.storage.progress import RichProgress
    from sidecar.storage.store import open_store
    from sidecar.storage.sync import run_sync

    settings, _ = settings_from(flags)
    request = build_request(direction, kind, target, settings, loras_dir, dry_run=dry_run, delete=delete,
                            checkpoints_dir=checkpoints_dir)
    store = open_store(settings.storage)
    sink = None if (quiet or dry_run) else RichProgress()
    report = run_sync(store, request, settings.data_dir / "sync", sink)
    for line in describe(report):
        click.echo(line)
    conflict = conflict_error(report)
    if conflict is not None:
        raise conflict


def build_request(direction: Direction, kind: str, target: str | None, settings: Any, loras_dir: Path | None, *,
                  dry_run: bool, delete: bool, checkpoints_dir: Path | None = None) -> SyncRequest:
    only = None
    if kind == "datasets":
        if not target:
            raise InvalidField("sync datasets needs the training folder: sidecar sync push datasets PATH",
                               {"field": "PATH"})
        local = Path(target).expanduser().resolve()
        name = local.name
    elif kind == "loras":
        from sidecar.training.lora_metadata import lora_dir

        local = lora_dir(settings, loras_dir.expanduser().resolve() if loras_dir else None)
        name = None
        if target:
            file = target if target.endswith(".safetensors") else f"{target}.safetensors"
            if "/" in file or file.startswith("."):
                raise InvalidField(f"{target!r} is not a LoRA name (a file name in the LoRA folder)",
                                   {"field": "NAME"})
            only = frozenset({file})
    elif kind == "checkpoints":
        local, name = _checkpoint_dir(settings, checkpoints_dir), None
        if target:
            if "/" in target or target.startswith("."):
                raise InvalidField(f"{target!r} is not a checkpoint name (a file name in the checkpoint folder)",
                                   {"field": "NAME"})
            only = frozenset({target})
    else:
        root = Path(target).expanduser().resolve() if target else (settings.project_root or Path.cwd().resolve())
        local = root / "output"
        name = root.name
    if direction == "push" and not local.is_dir():
        raise InvalidField(f"{local} is not a folder: nothing to push", {"field": "PATH", "value": str(local)})
    if local.exists() and not local.is_dir():
        raise InvalidField(f"{local} is not a folder", {"field": "PATH", "value": str(local)})
    if name is not None and (not name or name.startswith(".")):
        raise InvalidField(f"{local} has no usable folder name to keep it under in the store", {"field": "PATH"})
    return SyncRequest(direction, kind, local, name, only, dry_run=dry_run, delete=delete)  # type: ignore[arg-type]


def _checkpoint_dir(settings: Any, override: Path | None) -> Path:
    """Where this machine's checkpoints live: ComfyUI's `models/checkpoints/` when configured, else ours."""
    if override is not None:
        return override.expanduser().resolve()
    if settings.comfyui_dir is not None:
        return settings.comfyui_dir / "models" / "checkpoints"
    if settings.comfyui_url is not None:
        raise InvalidField("The daemon attaches to a ComfyUI at a URL, so its checkpoint folder is unknown here: set "
                           "comfyui_dir (SIDECAR_COMFYUI_DIR) or pass --checkpoints-dir.", {"field": "checkpoints_dir"})
    return settings.models_path / "checkpoints"


def _listed(verb: str, paths: list[str], where: str) -> list[str]:
    lines = [f"{verb} {where}/{p}" for p in paths[:SHOWN]]
    if len(paths) > SHOWN:
        lines.append(f"... and {len(paths) - SHOWN} more to {verb.split()[-1]}")
    return lines


def describe(report: SyncReport) -> list[str]:
    from sidecar.jobs.retention import human_bytes

    req, plan = report.request, report.plan
    there = report.remote if req.direction == "push" else str(req.local)
    lines: list[str] = []
    if req.dry_run:
        verb = "would upload" if req.direction == "push" else "would download"
        lines += _listed(verb, plan.send, there)
        lines += _listed("would delete", plan.delete, there)
    lines += _listed("conflict (changed on both sides, left alone):", plan.conflicts, there)
    if report.delete_refused:
        source = report.remote if req.direction == "pull" else str(req.local)
        lines.append(f"--delete ignored: {source} holds no files at all, so nothing was deleted in {there} "
                     "(an empty or mistyped source is not a reason to empty the other side)")
    if plan.kept:
        lines.append(f"{len(plan.kept)} file(s) only in {there} kept (--delete removes them): "
                     + ", ".join(plan.kept[:10]) + (" ..." if len(plan.kept) > 10 else ""))
    if plan.newer_there:
        other = "pull" if req.direction == "push" else "push"
        lines.append(f"{len(plan.newer_there)} file(s) changed only in {there} since the last sync, left as they "
                     f"are ({other} to take them): " + ", ".join(plan.newer_there[:10])
                     + (" ..." if len(plan.newer_there) > 10 else ""))
    if req.dry_run:
        lines.append(f"dry run: {len(plan.send)} file(s) to {'upload' if req.direction == 'push' else 'download'}, "
                     f"{len(plan.delete)} to delete, {len(plan.same)} unchanged; nothing was changed")
    else:
        moved = "uploaded" if req.direction == "push" else "downloaded"
        lines.append(f"{req.direction}ed {req.kind}: {len(report.done)} file(s) {moved} "
                     f"({human_bytes(report.bytes_moved)}), {len(report.deleted)} deleted, {len(plan.same)} unchanged "
                     f"[{req.local} <-> {report.remote}]")
    return lines

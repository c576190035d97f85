"""Files written whole or not at all: the one temp-file-and-rename writer.

The bytes go to a temp file beside the target (`.<name>.<random>.tmp`: same directory, so the rename
is atomic; the daemon sweeps such leftovers from its outputs folder at start), then `os.replace`
puts it in place. A reader sees the old file or the new one, never half of one; a failure leaves
the target as it was and removes the temp file. Refusing to replace an existing file (promote,
the generate stage's versions) is a different operation and lives with those callers.

Folders are swapped the same way (`replacing_dir`, `swap_dir`): built whole beside the target, then the
old folder is renamed aside and the new one renamed in. Their temp and aside names are fixed
(`.<name>.tmp`, `.<name>.old`) rather than random, so what a crash leaves (a trainer's state is
gigabytes) is removed by the next write; one writer per folder at a time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def replacing(path: Path, *, sync: bool = False) -> Iterator[Path]:
    """A temp path to write to; on leaving the block it replaces `path` (or is removed on error).
    `sync`: fsync the temp file first (a power cut must not leave an empty target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_with(path: Path, write: Callable[[BinaryIO], object], *, sync: bool = False) -> None:
    """`write(fh)` fills the file (an image's `save`, a JSON dump...)."""
    with replacing(path, sync=sync) as tmp, open(tmp, "wb") as fh:
        write(fh)


def write_bytes(path: Path, data: bytes, *, sync: bool = False) -> None:
    write_with(path, lambda fh: fh.write(data), sync=sync)


def write_text(path: Path, text: str, *, sync: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), sync=sync)


def swap_dir(built: Path, target: Path) -> None:
    """Put the complete folder `built` (on `target`'s file system) in `target`'s place. The old folder is
    renamed aside first and removed after, so `target` holds the old whole or the new whole."""
    aside = target.with_name(f".{target.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        os.replace(target, aside)
    try:
        os.replace(built, target)
    except BaseException:
        if aside.exists() and not target.exists():
            os.replace(aside, target)  # the old folder back: a failed swap changes nothing
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def replacing_dir(path: Path) -> Iterator[Path]:
    """An empty temp folder beside `path` to fill; on leaving the block it takes `path`'s place
    (`swap_dir`), or is removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed writer's
    tmp.mkdir()
    try:
        yield tmp
        swap_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

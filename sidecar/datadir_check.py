"""The start-up check of the data dir's shape, before anything takes its lock or writes in it: the data
dir must be a folder (or not exist yet), `sidecar.db` a file, and the folders the daemon keeps there
(`outputs`, `logs`, ...) folders. Anything else stops `serve` with one line naming the path and what to
do (`data_dir_unusable`), instead of a traceback from the first `mkdir` or `sqlite3.connect` that meets
it. Reads only."""

from __future__ import annotations

from pathlib import Path

from sidecar.config import Settings
from sidecar.errors import DataDirUnusable

# The folders the daemon makes in its data dir (besides models/, which may be elsewhere).
FOLDERS = ("outputs", "logs", "poses", "input", "training", "cache", "models")


def check_data_dir(settings: Settings) -> None:
    data = settings.data_dir
    for parent in reversed(data.parents):  # a file on the way (`~/file/data`) fails every mkdir below it
        if parent.exists() and not parent.is_dir():
            raise DataDirUnusable(parent, "is a file, but the data dir is inside it",
                                  "point data_dir (--data-dir, SIDECAR_DATA_DIR) at a folder")
    if data.exists() and not data.is_dir():
        raise DataDirUnusable(data, "is a file, not a folder", f"point data_dir (--data-dir, SIDECAR_DATA_DIR) at a "
                                                               f"folder, or move the file aside (mv '{data}' '{data}.moved')")
    db = settings.db_path
    if db.exists() and not db.is_file():
        raise DataDirUnusable(db, "is not a file (the daemon's database belongs there)",
                              f"move it aside (mv '{db}' '{db}.moved') and start again: the daemon creates a new one")
    for name in FOLDERS:
        folder = _expected(settings, name)
        if folder.exists() and not folder.is_dir():
            raise DataDirUnusable(folder, "is a file where the daemon keeps a folder",
                                  f"move it aside (mv '{folder}' '{folder}.moved') and start again")


def _expected(settings: Settings, name: str) -> Path:
    return settings.models_path if name == "models" else settings.data_dir / name

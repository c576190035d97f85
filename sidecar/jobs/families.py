"""The family of each model a backend offers, read from the files where this machine has them.

A backend names its models (`list_models`); where it also has a local folder (`models_dir`: the
embedded engine's models, a ComfyUI whose install dir is configured, a pool's home backend) the
file's header says its family (`sidecar.families`). A model only a remote backend has is `unknown`
here, and the job builder then holds it to the profile's base family as before families existed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.backend import GenerationBackend, ModelFolder
from sidecar.families import UNKNOWN, FamilyCache, FamilyReading

NOT_LOCAL = "the backend's model folder is not on this machine, so its header cannot be read"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    reading: FamilyReading
    size_bytes: int | None


class ModelFamilies:
    def __init__(self, backend: GenerationBackend):
        self.backend = backend
        self.cache = FamilyCache()

    async def family(self, folder: ModelFolder, name: str) -> FamilyReading:
        directory = self.backend.models_dir(folder)
        if directory is None:
            return FamilyReading(UNKNOWN, NOT_LOCAL)
        return await asyncio.to_thread(self.cache.of, directory / name)

    async def sha256(self, folder: ModelFolder, name: str) -> str | None:
        """The file's SHA-256 where this machine has it (cached by size and mtime), else None."""
        directory = self.backend.models_dir(folder)
        if directory is None:
            return None
        return await asyncio.to_thread(self.cache.sha256, directory / name)

    async def listing(self, folder: ModelFolder) -> list[ModelEntry]:
        # Staged sweep checkpoints (`sweep--*`) are not installed LoRAs, as GET /loras says.
        names = sorted(n for n in await self.backend.list_models(folder) or [] if not n.startswith("sweep--"))
        directory = self.backend.models_dir(folder)

        def read() -> list[ModelEntry]:
            entries = []
            for name in names:
                if directory is None:
                    entries.append(ModelEntry(name, FamilyReading(UNKNOWN, NOT_LOCAL), None))
                    continue
                path = directory / name
                try:
                    size = path.stat().st_size if path.is_file() else None
                except OSError:
                    size = None
                entries.append(ModelEntry(name, self.cache.of(path), size))
            return entries

        return await asyncio.to_thread(read)

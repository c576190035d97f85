"""The family of each model a backend offers, read from the files where this machine has them.

A backend names its models (`list_models`); where it also has a local folder (`models_dir`: the
embedded engine's models, a ComfyUI whose install dir is configured, a pool's home backend) the
file's header says its family (`sidecar.families`). A model only a remote backend has (an attached
ComfyUI's `/object_info` names it, but its file is on another machine) is judged by what is knowable
without the header: ComfyUI loads Flux through `UNETLoader` from `diffusion_models/`, the one family
whose models come that way here (`sidecar.jobs.build` loads such a checkpoint as Flux), so a file of that
folder is `flux`; anything else is `unknown` with the reason, and the job builder then holds it to the
profile's base family as before families existed. Listing never fails on a file it cannot read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sidecar.backend import GenerationBackend, ModelFolder
from sidecar.families import UNKNOWN, FamilyCache, FamilyReading, has_text_encoder_weights

NOT_LOCAL = "the backend's model folder is not on this machine, so its header cannot be read"
NOT_HERE = "only a remote backend has this file, so its header cannot be read on this machine"
# What a folder alone says of a model whose header is out of reach (see the module's docstring).
FOLDER_FAMILIES: dict[str, str] = {"diffusion_models": "flux"}
BY_FOLDER = ("not read from its header ({why}): a file of diffusion_models/, which ComfyUI's UNETLoader loads "
             "and this daemon runs as Flux")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    reading: FamilyReading
    size_bytes: int | None
    local: bool = True  # its header was read on this machine


def remote_reading(folder: str, why: str) -> FamilyReading:
    """The family of a model whose file is not on this machine: its folder's, else unknown (`why`)."""
    family = FOLDER_FAMILIES.get(folder)
    if family is not None:
        return FamilyReading(family, BY_FOLDER.format(why=why))  # type: ignore[arg-type]
    return FamilyReading(UNKNOWN, why)


class ModelFamilies:
    def __init__(self, backend: GenerationBackend):
        self.backend = backend
        self.cache = FamilyCache()

    def _read(self, folder: ModelFolder, directory: Path | None, name: str) -> tuple[FamilyReading, int | None, bool]:
        """Blocking: (reading, size, read here) of one listed model."""
        if directory is None:
            return remote_reading(folder, NOT_LOCAL), None, False
        path = directory / name
        try:
            size = path.stat().st_size if path.is_file() else None
        except OSError:
            size = None
        if size is None and not path.is_dir():
            # Listed (a remote backend has it) but not in this machine's folder.
            return remote_reading(folder, NOT_HERE), None, False
        return self.cache.of(path), size, True

    async def family(self, folder: ModelFolder, name: str) -> FamilyReading:
        return (await asyncio.to_thread(self._read, folder, self.backend.models_dir(folder), name))[0]

    async def sha256(self, folder: ModelFolder, name: str) -> str | None:
        """The file's SHA-256 where this machine has it (cached by size and mtime), else None."""
        directory = self.backend.models_dir(folder)
        if directory is None:
            return None
        return await asyncio.to_thread(self.cache.sha256, directory / name)

    async def has_text_encoder(self, name: str) -> bool:
        """Whether a LoRA carries text-encoder weights, where this machine has its file (else False)."""
        directory = self.backend.models_dir("loras")
        if directory is None:
            return False
        return await asyncio.to_thread(has_text_encoder_weights, directory / name)

    async def listing(self, folder: ModelFolder) -> list[ModelEntry]:
        # Staged sweep checkpoints (`sweep--*`) are not installed LoRAs, as GET /loras says.
        names = sorted(n for n in await self.backend.list_models(folder) or [] if not n.startswith("sweep--"))
        directory = self.backend.models_dir(folder)

        def read() -> list[ModelEntry]:
            return [ModelEntry(name, *self._read(folder, directory, name)) for name in names]

        return await asyncio.to_thread(read)

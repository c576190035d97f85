"""Which trainer runs a run's `engine`: kohya's sd-scripts, ostris ai-toolkit, the embedded trainer, or a remote
machine (which runs kohya or ai-toolkit there). Each
is imported only when chosen (the embedded one imports torch)."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.backend import GenerationBackend
from sidecar.config import Settings
from sidecar.training.spec import Trainer

TrainerFactory = Callable[[str], Trainer]


def default_trainer_factory(settings: Settings, backend: GenerationBackend | None) -> TrainerFactory:
    def make(engine: str) -> Trainer:
        if engine == "remote":
            from sidecar.training.remote import RemoteTrainer

            return RemoteTrainer(settings)
        if engine == "kohya":
            from sidecar.training.kohya import KohyaTrainer

            return KohyaTrainer(settings)
        if engine == "ai-toolkit":
            from sidecar.training import ai_toolkit
            from sidecar.training.kohya import ProcessTrainer

            return ProcessTrainer(settings, ai_toolkit.require(settings), ai_toolkit.AiToolkitAdapter())
        from sidecar.training.embedded import EmbeddedTrainer  # imports torch: only when used

        return EmbeddedTrainer(settings, backend)

    return make

"""Which adapter (`adapter.py`) a request's `trainer` means: kohya's sd-scripts or ostris ai-toolkit. Its own
module so that the adapters may import the interface without an import circle."""

from __future__ import annotations

from sidecar.training.adapter import TrainerAdapter


def adapter_for(trainer: str) -> TrainerAdapter:
    """The adapter of a request's `trainer` (kohya, ai-toolkit)."""
    if trainer == "ai-toolkit":
        from sidecar.training.ai_toolkit import AiToolkitAdapter

        return AiToolkitAdapter()
    from sidecar.training.kohya_args import KohyaAdapter

    return KohyaAdapter()


"""Training routes (/loras/train, /loras/{id}/status, cancel, resume). Filled in by the training work."""

from __future__ import annotations

from aiohttp import web


def setup_routes(app: web.Application) -> None:
    """Register the training routes and their background resources on the app."""

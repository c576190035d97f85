"""Shared test fixtures. Tests never touch the network: the model hub is forced offline."""

from __future__ import annotations

import os

pytest_plugins = ["tests.conftest_comfy", "tests.conftest_engine"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

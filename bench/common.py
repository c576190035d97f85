"""What the bench scripts share: a free local port and the percentile summary they record."""

from __future__ import annotations

import socket

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stats(values: list[float]) -> dict[str, float]:
    """n, p50, p99, mean and max, rounded to 0.01 (milliseconds, where the caller measured them)."""
    arr = np.asarray(values)
    return {"n": len(values), "p50": round(float(np.percentile(arr, 50)), 2),
            "p99": round(float(np.percentile(arr, 99)), 2), "mean": round(float(arr.mean()), 2),
            "max": round(float(arr.max()), 2)}

"""What the bench scripts share: a free local port, the percentile summary they record, and where the
record goes (`bench/results/NAME.json`)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

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


RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, result: dict[str, Any]) -> Path:
    """Write a bench's figures to bench/results/NAME.json (what the manual's benchmarks page quotes) and say where."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out

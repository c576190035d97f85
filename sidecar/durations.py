"""Durations as people write them in a config file: Ollama's `keep_alive` forms.

`"5m"`, `"30s"`, `"1h30m"`, `"250ms"`, a number of seconds (`300`, `"300"`, `1.5`), `0` (at once) and any
negative value (never: returned as -1). Parsed once, by the settings model, into seconds.
"""

from __future__ import annotations

import math
import re

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
NEVER = -1.0


def parse_duration(value: object) -> float:
    """Seconds for `value`; -1 for "never" (any negative value). Raises ValueError naming the forms."""
    if isinstance(value, bool):  # a bool is an int to Python, never a duration to a person
        raise ValueError(f"expected a duration such as \"5m\", \"30s\", 300 or -1, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower())
    else:
        raise ValueError(f"expected a duration such as \"5m\", \"30s\", 300 or -1, got {value!r}")
    if math.isnan(seconds) or math.isinf(seconds) and seconds > 0:
        raise ValueError(f"expected a finite duration (-1 means never), got {value!r}")
    return NEVER if seconds < 0 else seconds


def _parse_text(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"expected a duration such as \"5m\", \"30s\", \"1h30m\", 300 or -1, got {text!r}")
    return sign * sum(float(n) * UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The short form back (for messages): "never", "5m", "90s"."""
    if seconds < 0:
        return "never"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"

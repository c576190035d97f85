"""An ETA as people read it, the one way every message and progress line writes it.

`None` means not measured yet: the trainer withholds its ETA until ~20 steps were timed
(`sidecar.training.progress`), so the text says when one will come rather than guessing.
"""

from __future__ import annotations


def format_eta(seconds: float | None) -> str:
    """'about 1 h 05 min left', 'about 3 min 07 s left', 'about 40 s left', or when it will be known."""
    if seconds is None:
        return "ETA after ~20 steps"
    minutes, secs = divmod(max(int(seconds), 0), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"about {hours} h {minutes:02d} min left"
    return f"about {minutes} min {secs:02d} s left" if minutes else f"about {secs} s left"

"""The daemon process's memory, for /health: resident set size now and at its peak.

psutil when it is installed (it comes with the engine extra, through accelerate), else the kernel's
own numbers: /proc on Linux for the current size, getrusage for the peak everywhere.
"""

from __future__ import annotations

import os
import resource
import sys


def process_memory() -> dict[str, int | None]:
    return {"rssBytes": _current_rss(), "peakRssBytes": _peak_rss()}


def _current_rss() -> int | None:
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return int(psutil.Process().memory_info().rss)
        except (OSError, psutil.Error):
            return None
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss() -> int | None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, Linux kilobytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024

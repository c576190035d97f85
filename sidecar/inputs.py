"""The daemon's own input folder, `<data_dir>/input/`: images a job's LoadImage loads that the daemon
prepared itself (an img2img job's init image, fitted to the job's size, under a content-hashed name).

A leaf both sides share: the job builder writes there (`sidecar.jobs.init_image`), the embedded
engine reads there, and the ComfyUI backend copies from there into ComfyUI's `input/`.
"""

from __future__ import annotations

from pathlib import Path

INIT_PREFIX = "sidecar-init-"


def input_dir(data_dir: Path) -> Path:
    return data_dir / "input"


def is_ours(name: object) -> bool:
    """A LoadImage name the daemon prepared in its input folder."""
    return isinstance(name, str) and name.startswith(INIT_PREFIX) and "/" not in name and ".." not in name

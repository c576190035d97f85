"""Files that ship inside the package, read-only: the workflow templates and their manifest
(`workflows/`), the launchd plist templates (`launchd/`) and the page pipeline's example project
(`example-chapter/`).

They are found through importlib.resources, so the same code finds them in a checkout, in a wheel
installed by pip, and in a pipx or `uv tool` venv; nothing reads them relative to a checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

WORKFLOWS = "workflows"
LAUNCHD = "launchd"
EXAMPLE_CHAPTER = "example-chapter"


def asset_path(name: str) -> Path:
    """The folder `name` of the installed package. pip, pipx and uv install packages as files, where
    importlib.resources hands back a real path that the template watcher and `copytree` can use."""
    return Path(str(files(__name__).joinpath(name)))

"""The MkDocs hook (mkdocs.yml `hooks:`) that adds the generated reference pages to the manual at build
time, so they are never committed and cannot drift from the code.

MkDocs loads a hook by its path, not as a package member, so the repository root goes on `sys.path`
first: the generators are the `manual` package beside this file, and they import `sidecar`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mkdocs.structure.files import File, Files  # noqa: E402

from manual.pages import PAGES  # noqa: E402


def on_files(files: Files, config) -> Files:
    for path, render in PAGES.items():
        files.append(File.generated(config, path, content=render()))
    return files

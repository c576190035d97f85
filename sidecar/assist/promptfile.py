"""Page prompt files as the pipeline reads them (`pipeline_stage.prompts`): the prompt text, optionally
after a TOML front matter block between `+++` lines. Here they are read and rewritten byte for byte
around the text: `--write` replaces only the prompt text, the front matter stays exactly as it was
(comments, key order, the BOM a Windows editor left). Written atomically; `file_diff` shows the change.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from sidecar.atomic import write_text
from sidecar.errors import PromptFileInvalid

FENCE = "+++"
MAX_BYTES = 256 * 1024


@dataclass(frozen=True)
class PromptFile:
    path: Path
    head: str  # everything before the prompt text, verbatim (BOM, front matter with its fences)
    text: str  # the prompt text, stripped
    raw: str

    def with_text(self, text: str) -> str:
        """The file's content with `text` as its prompt (one trailing new line, as editors save)."""
        return f"{self.head}{text.strip()}\n"


def parse_prompt_file(raw: str, path: Path) -> PromptFile:
    bom = "\ufeff" if raw.startswith("\ufeff") else ""
    lines = raw[len(bom):].splitlines(keepends=True)
    head_len = 0
    if lines and lines[0].strip() == FENCE:
        for i, line in enumerate(lines[1:], start=1):
            if line.strip() == FENCE:
                head_len = i + 1
                break
        else:
            raise PromptFileInvalid(f"The front matter of {path} opens with {FENCE} on line 1 but is never "
                                    "closed.", {"file": str(path)})
    return _checked(path, bom + "".join(lines[:head_len]), "".join(lines[head_len:]), raw)


def _checked(path: Path, head: str, body: str, raw: str) -> PromptFile:
    # Blank lines between the front matter and the text belong to the head: they stay as they are.
    stripped = body.lstrip()
    head += body[: len(body) - len(stripped)]
    text = stripped.strip()
    if not text:
        raise PromptFileInvalid(f"{path} has no prompt text (after its front matter).", {"file": str(path)})
    return PromptFile(path, head, text, raw)


def read_prompt_file(path: Path) -> PromptFile:
    try:
        size = path.stat().st_size
    except OSError:
        raise PromptFileInvalid(f"Prompt file not found: {path}", {"file": str(path)}) from None
    if not path.is_file():
        raise PromptFileInvalid(f"{path} is not a file.", {"file": str(path)})
    if size > MAX_BYTES:
        raise PromptFileInvalid(f"{path} is {size} bytes; a prompt file is at most {MAX_BYTES}.",
                                {"file": str(path), "limit": MAX_BYTES})
    try:
        raw = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileInvalid(f"{path} cannot be read as UTF-8 text ({exc}).", {"file": str(path)}) from None
    return parse_prompt_file(raw, path)


def file_diff(old: PromptFile, new_content: str) -> str:
    return "".join(difflib.unified_diff(old.raw.splitlines(keepends=True), new_content.splitlines(keepends=True),
                                        fromfile=f"{old.path.name} (before)", tofile=f"{old.path.name} (refined)"))


def rewrite(old: PromptFile, text: str) -> str:
    """Write `text` as the file's prompt, front matter kept; the new content. Refuses a file that changed
    since it was read (another editor saved it meanwhile): nothing is overwritten then."""
    current = read_prompt_file(old.path)
    if current.raw != old.raw:
        raise PromptFileInvalid(f"{old.path} changed while the refinement ran; nothing was written. Run again.",
                                {"file": str(old.path)})
    content = old.with_text(text)
    write_text(old.path, content)
    return content

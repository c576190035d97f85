"""Bounds on the files of a training set, checked before anything reads them whole.

A caption is a line of tags, yet a 1 GB caption file used to be read whole by the daemon (killed by the
kernel at 18.5 GB). An image is decoded by the trainer (the embedded one in this process), so its size
and pixel count are checked first: the size from `stat`, the pixels from the image header (PIL reads
only that on open). The limits are the ones every user file the daemon reads is held to
(`sidecar.userfiles`). `load_dataset` collects what breaks them into one `dataset_invalid`; the
embedded trainer checks each image again right before it decodes it (the set may change after submit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar.errors import DatasetInvalid
from sidecar.userfiles import (
    MAX_ASPECT,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    MAX_TEXT_BYTES,
    image_file_problem,
)

MAX_CAPTION_BYTES = MAX_TEXT_BYTES
MAX_NAMED = 20


def image_problem(path: Path) -> str | None:
    """Why a trainer must not decode `path` (too many bytes or pixels, a side or shape past the bound, no
    image header); None when it may. Reads the header only: the daemon's one rule (`sidecar.userfiles`)."""
    return image_file_problem(path)


def check_training_image(path: Path) -> None:
    """The trainer's check right before it decodes `path`: `dataset_invalid` naming it."""
    reason = image_problem(path)
    if reason is not None:
        raise DatasetInvalid(f"Training image {path} cannot be used: {reason}. Replace or remove it and train again.",
                             {"file": str(path), "reason": reason})


def read_bounded_caption(path: Path) -> str | None:
    """The caption kohya would use (first line, stripped; "" for an empty file), read no further than the
    bound; None when unreadable. Callers check the size first (`FileLimits.caption_ok`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CAPTION_BYTES + 1)
        text = data[:MAX_CAPTION_BYTES].decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text.splitlines()[0].strip() if text.strip() else ""


@dataclass
class FileLimits:
    """What `load_dataset` found past the bounds while it walked the set."""

    root: Path
    captions: list[tuple[Path, int]] = field(default_factory=list)
    images: list[tuple[Path, str]] = field(default_factory=list)

    def caption_ok(self, path: Path) -> bool:
        try:
            size = path.stat().st_size
        except OSError:
            return True  # missing or unreadable: reported as such by the caller
        if size > MAX_CAPTION_BYTES:
            self.captions.append((path, size))
            return False
        return True

    def image_ok(self, path: Path) -> bool:
        reason = image_problem(path)
        if reason is not None:
            self.images.append((path, reason))
            return False
        return True

    def report(self, problems: list[str], details: dict) -> None:
        """Add the refusals to `load_dataset`'s problem list and error details."""
        if self.captions:
            names = [self._name(p) for p, _ in self.captions]
            problems.append(f"{len(names)} caption file(s) over {MAX_CAPTION_BYTES} bytes ({', '.join(names[:3])}"
                            f"{', ...' if len(names) > 3 else ''}): a caption is one line of tags")
            details["oversizedCaptions"] = [{"file": self._name(p), "sizeBytes": n}
                                            for p, n in self.captions][:MAX_NAMED]
        if self.images:
            named = [f"{self._name(p)}: {reason}" for p, reason in self.images]
            problems.append(f"{len(named)} image(s) the trainer cannot take ({'; '.join(named[:3])}"
                            f"{'; ...' if len(named) > 3 else ''})")
            details["unusableImages"] = [{"file": self._name(p), "reason": reason}
                                         for p, reason in self.images][:MAX_NAMED]
        if self.captions or self.images:
            details["limits"] = {"maxCaptionBytes": MAX_CAPTION_BYTES, "maxImageBytes": MAX_IMAGE_BYTES,
                                 "maxImagePixels": MAX_IMAGE_PIXELS, "maxImageSide": MAX_IMAGE_SIDE,
                                 "maxAspect": MAX_ASPECT}

    def _name(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

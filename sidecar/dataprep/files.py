"""What every dataset tool shares beyond the kohya layout (images, captions and subset folders are in
`kohya_layout.py`): which files are flips, how an image is opened (an unreadable one is a
`DatasetInvalid` naming the file) and how files are written (temp + rename, so a crash never leaves
half a PNG or a torn caption). It knows nothing about any one command.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sidecar.atomic import write_bytes, write_text, write_with  # noqa: F401  (the dataset tools write with these)
from sidecar.errors import DatasetInvalid
from sidecar.userfiles import image_file_problem

FLIP_SUFFIX = "_flip"  # `front.png` -> `front_flip.png`: the stem says which image is a mirror
DEFAULT_FLIP_TAG = "mirrored"
CAPTION_PARTS = ("framing", "pose", "background")  # after the trigger word: DATA-02's caption format


def is_flip(image: Path) -> bool:
    return image.stem.endswith(FLIP_SUFFIX)


def flip_path(image: Path) -> Path:
    return image.with_name(f"{image.stem}{FLIP_SUFFIX}.png")


def source_of_flip(image: Path) -> str:
    """The stem of the image a flip was made from (`front_flip` -> `front`)."""
    return image.stem[: -len(FLIP_SUFFIX)]


def require_dir(folder: Path, what: str = "dataset folder") -> Path:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DatasetInvalid(f"The {what} {folder} does not exist.", {"file": str(folder)})
    if not folder.is_dir():
        raise DatasetInvalid(f"{folder} is a file; the {what} must be a folder.", {"file": str(folder)})
    return folder


def open_image(path: Path, bounded: bool = True) -> Image.Image:
    """Open and fully decode an image (a truncated file fails here, not halfway through a command).
    `bounded`: held first to the daemon's image limits (bytes, pixels, each side, aspect ratio: see
    `sidecar.userfiles`), read from `stat` and the header, as every image in a training set or the
    studio's dataset routes is; `dataset crop` opens the artist's source photos without them (a camera's
    6000x4000 is fine there), PIL's own decompression-bomb bound still applying."""
    if not path.exists():
        raise DatasetInvalid(f"{path} does not exist.", {"file": str(path)})
    problem = image_file_problem(path) if bounded else None
    if problem is not None:
        raise DatasetInvalid(f"{path} cannot be used: {problem}.", {"file": str(path), "reason": problem})
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB") if img.mode != "RGB" else img.copy()
    except FileNotFoundError:
        raise DatasetInvalid(f"{path} does not exist.", {"file": str(path)}) from None
    except Image.DecompressionBombError as exc:
        raise DatasetInvalid(f"{path} is too many pixels to decode ({exc}).", {"file": str(path)}) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetInvalid(f"{path} is not a readable image ({exc}).", {"file": str(path)}) from None


def split_caption(caption: str) -> list[str]:
    return [part.strip() for part in caption.split(",")]


def add_tag(caption: str, tag: str) -> str:
    """Append `tag` as the caption's last part, once."""
    if not tag or tag in split_caption(caption):
        return caption
    return f"{caption}, {tag}"


def save_png(image: Image.Image, path: Path) -> None:
    write_with(path, lambda fh: image.save(fh, format="PNG"))


def refuse_existing(paths: Iterable[Path], hint: str) -> None:
    """Before writing anything: stop if any target exists, naming the first few."""
    existing = [p for p in paths if p.exists()]
    if existing:
        names = ", ".join(str(p) for p in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise DatasetInvalid(f"{len(existing)} output file(s) already exist ({names}); {hint}",
                             {"files": [str(p) for p in existing[:20]]})

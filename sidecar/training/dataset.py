"""Checks a training set before a trainer ever sees it, and describes it for both trainers.

Accepts kohya's layout (`<repeats>_<trigger> <class>/` folders, read through `dataprep/kohya_layout.py`,
the one place that knows it) given as the `img/` folder or as the root holding `img/` and an optional
`reg/` (what `sidecar dataset layout` writes), and a flat folder of images with `.txt` captions. Refuses, with
the files named, what kohya would silently mis-train on: no images, images without a caption,
empty captions, captions whose first tag is not the trigger word, and files past the bounds of
`file_limits.py` (a 1 GB caption, an image of too many bytes or pixels) before reading them. It never
modifies the set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.dataprep.kohya_layout import (
    IMG_DIR,
    REG_DIR,
    caption_path,
    kohya_dirs,
    list_images,
    subset_folders,
    subset_name,
)
from sidecar.errors import DatasetInvalid, JobCancelled
from sidecar.training.file_limits import FileLimits, read_bounded_caption
from sidecar.userfiles import user_path

FLAT_REPEATS = 10  # repeats for a flat folder: only sets where kohya's epochs end; steps decide the length
MAX_NAMED = 20  # files named in an error's details (the message names the first few)


@dataclass
class Item:
    image: Path
    caption: str


@dataclass
class Subset:
    """One kohya image folder: `<repeats>_<class tokens>`; for a flat set, a virtual one."""

    name: str  # the folder name kohya will see (e.g. "10_spyke_plasma_v1 character")
    source: Path  # the real folder holding the images and captions
    repeats: int
    class_tokens: str
    items: list[Item] = field(default_factory=list)


@dataclass
class Dataset:
    root: Path
    layout: str  # "kohya" | "flat"
    trigger_word: str
    subsets: list[Subset]
    warnings: list[str] = field(default_factory=list)
    reg_subsets: list[Subset] = field(default_factory=list)  # regularisation images (kohya's reg_data_dir)

    @property
    def image_count(self) -> int:
        return sum(len(s.items) for s in self.subsets)

    @property
    def images_with_repeats(self) -> int:
        return sum(len(s.items) * s.repeats for s in self.subsets)

    @property
    def reg_image_count(self) -> int:
        return sum(len(s.items) for s in self.reg_subsets)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's `ss_tag_frequency`: per folder, how often each comma-separated tag appears."""
        out: dict[str, dict[str, int]] = {}
        for subset in self.subsets:
            counts: Counter[str] = Counter()
            for item in subset.items:
                counts.update(t for t in (tag.strip() for tag in item.caption.split(",")) if t)
            out[subset.name] = dict(counts)
        return out

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        """kohya's `ss_dataset_dirs` (or `ss_reg_dataset_dirs`)."""
        return {s.name: {"n_repeats": s.repeats, "img_count": len(s.items)}
                for s in (self.reg_subsets if reg else self.subsets)}


def _names(paths: list[Path], root: Path) -> list[str]:
    return [str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in paths]


def load_dataset(root: Path, trigger_word: str, should_stop: Callable[[], bool] | None = None,
                 repeats: int | None = None) -> Dataset:
    """Validate `root` and describe it. Blocking (file system): call it in a thread. `should_stop` is
    looked at per image (a run cancelled while its set of thousands is checked): JobCancelled.
    `repeats`: a flat folder's (a preset's or the request's); kohya's folders keep their names' own."""
    root = user_path(str(root), "datasetDir", DatasetInvalid)  # absolute; `~nosuchuser` is a 400
    limits = FileLimits(root)
    if not root.exists():
        raise DatasetInvalid(f"The dataset folder {root} does not exist.", {"datasetDir": str(root)})
    if not root.is_dir():
        raise DatasetInvalid(f"{root} is a file; datasetDir must be a folder of images with .txt captions.",
                             {"datasetDir": str(root)})

    warnings: list[str] = []
    img_dir, reg_dir = kohya_dirs(root)
    if img_dir is not None:
        layout = "kohya"
        subsets = _subsets(img_dir, warnings)
        if list_images(img_dir):
            warnings.append(f"{len(list_images(img_dir))} image(s) directly in {img_dir} are ignored: kohya reads only "
                            "the <repeats>_<class> folders.")
    else:
        layout = "flat"
        n = repeats or FLAT_REPEATS
        subsets = [Subset(subset_name(n, f"{trigger_word} character"), root, n, f"{trigger_word} character")]
    reg_subsets = _subsets(reg_dir, warnings) if reg_dir is not None else []
    for subset in reg_subsets:
        # Regularisation images show the class without the character: no trigger word, captions optional
        # (kohya then uses the folder's class tokens).
        for image in list_images(subset.source):
            _check_stop(should_stop)
            if not limits.image_ok(image) or not limits.caption_ok(caption_path(image)):
                continue
            # kohya uses the first line only; never read past the caption bound.
            caption = read_bounded_caption(caption_path(image))
            subset.items.append(Item(image, caption or subset.class_tokens))
    reg_subsets = [s for s in reg_subsets if s.items]
    if reg_subsets:
        n = sum(len(s.items) for s in reg_subsets)
        warnings.append(f"regularisation set: {n} image(s) in {reg_dir} (repeated to match the training images, "
                        "so an epoch is about twice as long).")

    missing: list[Path] = []
    empty: list[Path] = []
    wrong_first: list[tuple[Path, str]] = []
    for subset in subsets:
        for image in list_images(subset.source):
            _check_stop(should_stop)
            caption_file = caption_path(image)
            if not caption_file.is_file():
                missing.append(image)
                continue
            if not limits.image_ok(image) or not limits.caption_ok(caption_file):
                continue
            caption = read_bounded_caption(caption_file)
            if not caption:
                empty.append(caption_file)
                continue
            first = caption.split(",")[0].strip()
            if first != trigger_word:
                wrong_first.append((caption_file, first))
                continue
            subset.items.append(Item(image, caption))

    total = sum(len(list_images(s.source)) for s in subsets)
    if total == 0:
        raise DatasetInvalid(
            f"No images in {root}: expected .png/.jpg/.webp files with .txt captions, directly in the folder "
            "or in kohya-style <repeats>_<class> subfolders.",
            {"datasetDir": str(root), "layout": layout},
        )
    problems: list[str] = []
    details: dict = {"datasetDir": str(root), "layout": layout, "triggerWord": trigger_word}
    if missing:
        names = _names(missing, root)
        problems.append(f"{len(missing)} image(s) without a .txt caption ({', '.join(names[:3])}"
                        f"{', ...' if len(names) > 3 else ''})")
        details["missingCaptions"] = names[:MAX_NAMED]
    if empty:
        names = _names(empty, root)
        problems.append(f"{len(empty)} empty caption file(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
        details["emptyCaptions"] = names[:MAX_NAMED]
    if wrong_first:
        names = _names([p for p, _ in wrong_first], root)
        problems.append(f"{len(wrong_first)} caption(s) not starting with the trigger word {trigger_word!r} "
                        f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
        details["triggerWordNotFirst"] = [{"file": n, "firstTag": first}
                                          for n, (_, first) in zip(names, wrong_first)][:MAX_NAMED]
    limits.report(problems, details)
    if problems:
        raise DatasetInvalid(f"The dataset in {root} is not ready to train: " + "; ".join(problems) + ".", details)
    return Dataset(root=root, layout=layout, trigger_word=trigger_word, subsets=subsets, warnings=warnings,
                   reg_subsets=reg_subsets)


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    if should_stop is not None and should_stop():
        raise JobCancelled()


def _subsets(folder: Path, warnings: list[str]) -> list[Subset]:
    return [Subset(f.name, f.path, f.repeats, f.class_tokens) for f in subset_folders(folder, warnings)]


def stage_for_kohya(dataset: Dataset, work_dir: Path) -> tuple[Path, Path | None]:
    """Make the `--train_data_dir` (and `--reg_data_dir`) kohya needs: folders of `<repeats>_<class>`
    links to the real image folders. kohya must get the *parent* of those folders (given the image
    folder itself it finds no data and still exits 0), so a flat set is linked in under a kohya name.
    """
    img = _link_subsets(dataset.subsets, work_dir / IMG_DIR)
    reg = _link_subsets(dataset.reg_subsets, work_dir / REG_DIR) if dataset.reg_subsets else None
    return img, reg


def _link_subsets(subsets: list[Subset], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for subset in subsets:
        link = folder / subset.name
        if link.is_symlink() or link.exists():
            if link.resolve() == subset.source.resolve():
                continue
            link.unlink()
        link.symlink_to(subset.source.resolve(), target_is_directory=True)
    return folder

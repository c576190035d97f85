"""The judge: a scorer, the reference set and a cache of features by image hash (an image scored
twice, or a reference scored against every draft, is run through the model once).

`LikenessService` is what the daemon and the commands hold: it opens the scorer on first use (so a
daemon started before `sidecar models fetch ccip` finds the weights once they are there), reads the
reference set at each call, and answers `Likeness` objects.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sidecar.config import Settings
from sidecar.errors import InvalidField
from sidecar.likeness.ccip import CcipScorer
from sidecar.likeness.normalise import Likeness, SetReport, judge_rows, report_set
from sidecar.likeness.references import reference_files

CACHE_SIZE = 4096  # features of 768 float32: 3 KB each
BATCH = 8  # images per feature-model run: bounded memory at 384x384


class Scorer(Protocol):
    name: str
    weights: str
    threshold: float

    def features(self, images: list[Image.Image]) -> np.ndarray: ...

    def differences(self, features: np.ndarray) -> np.ndarray: ...


def _decode(data: bytes, path: Path, mirrored: bool) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            image = im.copy()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidField(f"{path} is not an image the likeness judge can read ({exc}).",
                           {"field": "images", "value": str(path)}) from None
    # A flipped training image is judged as its mirror: the character's asymmetric details are on
    # the references' side again.
    return ImageOps.mirror(image) if mirrored else image


class Judge:
    def __init__(self, scorer: Scorer, threshold: float | None = None):
        self.scorer = scorer
        self.threshold = scorer.threshold if threshold is None else threshold
        self._cache: OrderedDict[tuple[str, bool], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def features(self, paths: Sequence[Path], mirrored: bool = False) -> np.ndarray:
        keys, todo = [], {}
        for path in paths:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise InvalidField(f"Cannot read {path}: {exc.strerror}.", {"field": "images", "value": str(path)}) \
                    from None
            key = (hashlib.sha256(data).hexdigest(), mirrored)
            keys.append(key)
            with self._lock:
                cached = key in self._cache
            if not cached and key not in todo:
                todo[key] = _decode(data, path, mirrored)
        pending = list(todo.items())
        for start in range(0, len(pending), BATCH):
            chunk = pending[start:start + BATCH]
            feats = self.scorer.features([im for _, im in chunk])
            with self._lock:
                for (key, _), row in zip(chunk, feats, strict=True):
                    self._cache[key] = row
                    if len(self._cache) > CACHE_SIZE:
                        self._cache.popitem(last=False)
        with self._lock:
            rows = []
            for key in keys:
                self._cache.move_to_end(key)
                rows.append(self._cache[key])
        return np.stack(rows)

    def score(self, paths: Sequence[Path], references: Sequence[Path], mirrored: bool = False) -> list[Likeness]:
        if not paths:
            return []
        refs = self.features(references)
        imgs = self.features(paths, mirrored)
        diffs = self.scorer.differences(np.concatenate([refs, imgs]))
        n = len(references)
        return judge_rows(diffs[n:, :n], diffs[:n, :n], self.threshold, self.scorer.name, self.scorer.weights)

    def check(self, references: Sequence[Path]) -> SetReport:
        refs = self.features(references)
        return report_set(self.scorer.differences(refs), self.threshold)


class LikenessService:
    """The judge for one project and one models folder (the daemon's, or a command's)."""

    def __init__(self, models_dir: Path, model: str, threshold: float | None, project_root: Path | None,
                 open_scorer: Callable[[Path, str], Scorer] = CcipScorer.open):
        self.models_dir, self.model, self.threshold = models_dir, model, threshold
        self.project_root = project_root
        self._open_scorer = open_scorer
        self._judge: Judge | None = None
        self._lock = threading.Lock()

    def judge(self) -> Judge:
        """likeness_unavailable (naming the fetch command) until the weights are there."""
        with self._lock:
            if self._judge is None:
                self._judge = Judge(self._open_scorer(self.models_dir, self.model), self.threshold)
            return self._judge

    def references(self) -> list[Path]:
        return reference_files(self.project_root)

    def has_references(self) -> bool:
        try:
            self.references()
        except Exception:  # references_missing, character_invalid: no likeness, nothing else changes
            return False
        return True

    def score(self, paths: Sequence[Path], mirrored: bool = False) -> list[Likeness]:
        refs = self.references()
        return self.judge().score(paths, refs, mirrored)

    def check(self) -> tuple[list[Path], SetReport]:
        refs = self.references()
        return refs, self.judge().check(refs)


def service_for(settings: Settings, project_root: Path | None) -> LikenessService:
    """From the one settings model: its models folder, `likeness_model`, `likeness_threshold`."""
    return LikenessService(settings.models_path, settings.likeness_model, settings.likeness_threshold, project_root)

"""CCIP on onnxruntime: two ONNX models from the hub repo deepghs/ccip_onnx, one folder per model
(`model_feat.onnx`: images -> features, `model_metrics.onnx`: features -> pairwise differences,
`metrics.json`: the published same-character `threshold`).

The preprocessing is dghs-imgutils' (`imgutils.metrics.ccip`, `imgutils.data.load_image`), followed
exactly because the weights were trained on it: an image with transparency is laid on white first,
converted to RGB, resized to 384x384 with PIL's BILINEAR, scaled to 0..1, channels first (RGB order),
normalised with CLIP's mean and std. The feature model takes `input` [N, 3, 384, 384] float32 and
answers `output` [N, 768]; the metric model takes `input` [N, 768] and answers `output` [N, N], the
difference of every pair (0 for the same image; <= threshold: the same character).

We use onnxruntime directly rather than dghs-imgutils: that package pulls scikit-learn, opencv and
more for what is two sessions and twenty lines of numpy.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sidecar.errors import LikenessUnavailable

SIZE = 384
MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's, as imgutils.metrics.ccip._normalize
STD = (0.26862954, 0.26130258, 0.27577711)
FEATURE_FILE, METRIC_FILE, METRICS_JSON = "model_feat.onnx", "model_metrics.onnx", "metrics.json"
FILES = (FEATURE_FILE, METRIC_FILE, METRICS_JSON)
DEFAULT_MODEL = "ccip-caformer-24-randaug-pruned"  # imgutils' default
HUB_REPO = "deepghs/ccip_onnx"


def _has_alpha(image: Image.Image) -> bool:
    """imgutils.data.image.has_alpha_channel: alpha modes, or a transparency key (palette images)."""
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def load_rgb(image: Image.Image) -> Image.Image:
    """imgutils' `load_image(image, mode="RGB", force_background="white")`."""
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def preprocess(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """One image as the feature model's input row: [3, size, size] float32."""
    resized = load_rgb(image).resize((size, size), resample=Image.BILINEAR)
    data = np.array(resized).transpose(2, 0, 1).astype(np.float32) / 255.0
    mean, std = np.asarray(MEAN), np.asarray(STD)
    return ((data - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fix_line(models_dir: Path) -> str:
    return f"sidecar models fetch ccip --models-dir {models_dir}"


@dataclass
class CcipScorer:
    """The two sessions of one CCIP model folder, opened on first use (onnxruntime sessions are
    thread-safe for `run`; opening is guarded so two threads do not both load)."""

    folder: Path
    name: str
    threshold: float
    weights: str  # sha256 of the feature model, first 16 hex digits: what a score was made with
    size: int = SIZE

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: tuple[object, object] | None = None

    @classmethod
    def open(cls, models_dir: Path, model: str) -> CcipScorer:
        """The model folder `<models_dir>/likeness/<model>`; likeness_unavailable if anything is missing."""
        folder = models_dir / "likeness" / model
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise LikenessUnavailable(
                f"The likeness model {model} is not in {folder} (missing {', '.join(missing)}); get it once with "
                f"`{fix_line(models_dir)}` (or `sidecar models make-tiny` for a tiny random one).",
                {"model": model, "folder": str(folder), "fix": fix_line(models_dir)})
        try:
            threshold = float(json.loads((folder / METRICS_JSON).read_text(encoding="utf-8"))["threshold"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LikenessUnavailable(f"{folder / METRICS_JSON} has no readable `threshold` ({exc}); fetch the "
                                      f"model again: `{fix_line(models_dir)}`.",
                                      {"model": model, "fix": fix_line(models_dir)}) from None
        return cls(folder, model, threshold, file_sha256(folder / FEATURE_FILE)[:16])

    def _open(self) -> tuple[object, object]:
        with self._lock:
            if self._sessions is None:
                try:
                    import onnxruntime as ort

                    opts = ort.SessionOptions()
                    opts.log_severity_level = 3
                    self._sessions = tuple(  # type: ignore[assignment]
                        ort.InferenceSession(str(self.folder / f), opts, providers=["CPUExecutionProvider"])
                        for f in (FEATURE_FILE, METRIC_FILE))
                except Exception as exc:  # onnxruntime raises its own classes for a bad file
                    raise LikenessUnavailable(f"The likeness model in {self.folder} does not load ({exc}).",
                                              {"model": self.name, "folder": str(self.folder)}) from None
            return self._sessions  # type: ignore[return-value]

    def features(self, images: list[Image.Image]) -> np.ndarray:
        """[N, D] features, in the order given."""
        feat, _ = self._open()
        batch = np.stack([preprocess(im, self.size) for im in images]).astype(np.float32)
        (out,) = feat.run(["output"], {"input": batch})  # type: ignore[attr-defined]
        return np.asarray(out, dtype=np.float32)

    def differences(self, features: np.ndarray) -> np.ndarray:
        """[N, N] CCIP differences of every pair of feature rows."""
        _, metric = self._open()
        (out,) = metric.run(["output"], {"input": features.astype(np.float32)})  # type: ignore[attr-defined]
        return np.asarray(out, dtype=np.float64)

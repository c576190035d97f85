"""A WD14-style image tagger (SmilingWolf's wd-v1-4 / wd-*-tagger-v3 family), run locally with
onnxruntime, for caption proposals. Nothing is downloaded: put a tagger's two files in

    <models_dir>/taggers/<name>/model.onnx
    <models_dir>/taggers/<name>/selected_tags.csv     (tag_id,name,category,count)

Preprocessing is the tagger's own (its reference app): composite on white, pad to a white square
(centred), resize to the model's input size (read from the model: 448 for the published ones) with
bicubic filtering, float32 0-255, RGB -> BGR, NHWC with a batch of one. The output is one sigmoid score
per row of `selected_tags.csv`; general tags (category 0) count at >= 0.35, character tags (category 4)
at >= 0.85, ratings (9) are ignored. Tag names get spaces for underscores, except kaomoji (`^_^`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sidecar.errors import TaggerInvalid

GENERAL, CHARACTER, RATING = 0, 4, 9
GENERAL_THRESHOLD = 0.35
CHARACTER_THRESHOLD = 0.85
MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
# Tags made of punctuation and underscores, whose underscores are the face (the reference app's list).
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


@dataclass(frozen=True)
class TagScore:
    name: str
    category: int
    score: float


def taggers_dir(models_path: Path) -> Path:
    return models_path / "taggers"


def find_taggers(models_path: Path) -> list[Path]:
    """Folders of `<models>/taggers/` that hold both files, by name."""
    root = taggers_dir(models_path)
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / MODEL_FILE).is_file() and (d / TAGS_FILE).is_file())


def where_to_put(models_path: Path) -> str:
    return (f"put a WD14-style tagger (e.g. SmilingWolf/wd-vit-tagger-v3's model.onnx and selected_tags.csv) "
            f"in {taggers_dir(models_path)}/<name>/")


def read_tags(path: Path) -> list[tuple[str, int]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaggerInvalid(f"{path} cannot be read ({exc}).", {"file": str(path)}) from None
    try:
        tags = [(r["name"] if r["name"] in KAOMOJI else r["name"].replace("_", " "), int(r["category"]))
                for r in rows]
    except (KeyError, TypeError, ValueError):
        raise TaggerInvalid(f"{path} is not a tagger's tag list (columns tag_id,name,category,count).",
                            {"file": str(path)}) from None
    if not tags:
        raise TaggerInvalid(f"{path} lists no tags.", {"file": str(path)})
    return tags


class Wd14Tagger:
    def __init__(self, folder: Path, general_threshold: float = GENERAL_THRESHOLD,
                 character_threshold: float = CHARACTER_THRESHOLD):
        try:
            import onnxruntime as ort
        except ImportError:  # pragma: no cover - a dependency of the package
            raise TaggerInvalid("onnxruntime is not installed: pip install onnxruntime.") from None
        self.name = folder.name
        self.folder = folder
        self.general_threshold = general_threshold
        self.character_threshold = character_threshold
        self.tags = read_tags(folder / TAGS_FILE)
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: the CLI prints our own lines
            self.session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise TaggerInvalid(f"{folder / MODEL_FILE} does not load with onnxruntime ({exc}).",
                                {"file": str(folder / MODEL_FILE)}) from None
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise TaggerInvalid(f"{folder / MODEL_FILE} takes {shape}; a WD14 tagger takes [batch, size, size, 3] "
                                "(NHWC, BGR).", {"file": str(folder / MODEL_FILE), "shape": [str(d) for d in shape]})
        self.size = int(shape[1])
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(self.tags):
            raise TaggerInvalid(f"{folder / MODEL_FILE} scores {width} tags but {TAGS_FILE} lists {len(self.tags)}.",
                                {"file": str(folder)})

    def preprocess(self, image: Image.Image) -> np.ndarray:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        rgb = canvas.convert("RGB")
        side = max(rgb.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(rgb, ((side - rgb.width) // 2, (side - rgb.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), Image.BICUBIC)
        array = np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR, as the tagger was trained
        return np.ascontiguousarray(array[None])

    def scores(self, image: Image.Image) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: self.preprocess(image)})[0][0]

    def tag(self, image: Image.Image) -> list[TagScore]:
        """Tags over their category's threshold, highest score first (ratings left out)."""
        found = []
        for (name, category), score in zip(self.tags, self.scores(image).tolist()):
            limit = (self.general_threshold if category == GENERAL
                     else self.character_threshold if category == CHARACTER else None)
            if limit is not None and score >= limit:
                found.append(TagScore(name, category, float(score)))
        return sorted(found, key=lambda t: -t.score)

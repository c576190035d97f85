"""Training presets (`"preset": "character" | "style" | "concept"`): the canonical values each one sets, per
model family and trainer, as data; and `apply`, which resolves a request's preset into the request's own
fields at the edge, before any trainer sees it. A value the request gives always wins over the preset's.

Where the numbers come from:
- sd15 with kohya or the embedded trainer: the artist's canonical config (dim 32, alpha 16, AdamW 1e-4,
  ~1000 steps, 10 repeats of a flat set; design.md "Training"), the text encoder trained at half the
  U-Net's rate as kohya's LoRA guides do (`--text_encoder_lr`).
- sdxl with kohya: sd-scripts' SDXL notes recommend `--network_train_unet_only` (the two text encoders
  add little and cost memory); longer runs at 1024 px.
- flux: ai-toolkit's `config/examples/train_lora_flux_24gb.yaml` (linear 16, linear_alpha 16, lr 1e-4,
  2000 steps, `caption_dropout_rate: 0.05`, `train_text_encoder: false`); kohya's Flux trainer the same.
- ai-toolkit counts steps over images sampled from the folder (its `num_repeats` defaults to 1), so
  repeats are 1 there; kohya's epochs are `repeats` passes over a folder.
- style: a larger share of caption dropout (the look must come without the words), the U-Net only (the
  style lives there and prompts keep their meaning), fewer repeats of more images, more steps.
- concept: a smaller rank (an object or a pose needs less capacity than a face).

The one table of the manual (docs/training/presets.md) is `markdown_table()`; a test checks they match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from sidecar.training.wire import TrainRequest

Preset = Literal["character", "style", "concept"]
PRESETS: tuple[Preset, ...] = ("character", "style", "concept")
TRAINERS = ("kohya", "ai-toolkit", "embedded")
# Which families each trainer trains (the embedded trainer is SD 1.5 only).
TRAINER_FAMILIES: dict[str, tuple[str, ...]] = {"kohya": ("sd15", "sdxl", "flux"),
                                                 "ai-toolkit": ("sd15", "sdxl", "flux"), "embedded": ("sd15",)}
# The gate's thresholds (design.md "Round 3 contracts"): source images a preset needs, and each image's
# short side per family (its base training size).
MIN_IMAGES: dict[str, int] = {"character": 10, "style": 20, "concept": 10}
BASE_SIZE: dict[str, int] = {"sd15": 512, "sdxl": 1024, "flux": 1024}
DEFAULT_GATE_PRESET: Preset = "character"  # a run without a preset is held to the character thresholds

SAMPLE_PROMPTS: dict[str, tuple[str, ...]] = {
    "character": ("{trigger}, full body, standing, plain background",
                  "{trigger}, portrait, smiling, looking at viewer",
                  "{trigger}, upper body, sitting on a park bench, outdoors"),
    "style": ("{trigger}, a city street at night, rain",
              "{trigger}, portrait of an old fisherman",
              "{trigger}, a cat asleep on a windowsill"),
    "concept": ("{trigger}, close-up, on a wooden table",
                "{trigger}, held in a hand, outdoors",
                "{trigger}, plain background"),
}


@dataclass(frozen=True)
class PresetValues:
    """The request fields a preset sets (camelCase names on the wire)."""

    network_dim: int
    network_alpha: float
    learning_rate: float  # the U-Net's (kohya `--learning_rate`/`--unet_lr`, ai-toolkit `train.lr`)
    train_text_encoder: bool
    text_encoder_lr: float | None  # None when the text encoder is not trained
    steps: int
    repeats: int
    caption_dropout_rate: float


def _v(dim: int, alpha: float, lr: float, te_lr: float | None, steps: int, repeats: int, dropout: float) -> PresetValues:
    return PresetValues(dim, alpha, lr, te_lr is not None, te_lr, steps, repeats, dropout)


# family -> preset -> values for kohya (and the embedded trainer, which follows kohya's recipe).
_BY_FAMILY: dict[str, dict[str, PresetValues]] = {
    "sd15": {"character": _v(32, 16, 1e-4, 5e-5, 1000, 10, 0.05),
             "style": _v(32, 16, 1e-4, None, 1500, 5, 0.1),
             "concept": _v(16, 8, 1e-4, 5e-5, 1200, 10, 0.05)},
    "sdxl": {"character": _v(32, 16, 1e-4, None, 1500, 10, 0.05),
             "style": _v(32, 16, 1e-4, None, 2000, 5, 0.1),
             "concept": _v(16, 8, 1e-4, None, 1500, 10, 0.05)},
    "flux": {"character": _v(16, 16, 1e-4, None, 2000, 10, 0.05),
             "style": _v(32, 32, 1e-4, None, 3000, 5, 0.1),
             "concept": _v(16, 16, 1e-4, None, 2000, 10, 0.05)},
}


def values(preset: str, family: str, trainer: str) -> PresetValues:
    """The preset's values for this family and trainer. KeyError for a preset or family not in the table."""
    base = _BY_FAMILY[family][preset]
    if trainer == "ai-toolkit":
        # ai-toolkit samples images by step (num_repeats 1 is its default); its Flux/SDXL text encoders stay
        # frozen ("train_text_encoder: false  # probably won't work with flux").
        base = replace(base, repeats=1)
        if family != "sd15":
            base = replace(base, train_text_encoder=False, text_encoder_lr=None)
    return base


def sample_prompts(preset: str, trigger: str) -> list[str]:
    return [p.format(trigger=trigger) for p in SAMPLE_PROMPTS[preset]]


def resolved_fields(preset: str, family: str, trainer: str, trigger: str, given: set[str]) -> dict[str, object]:
    """The request fields the preset fills: every field of `values` and `sample_prompts`, except those in
    `given` (the request's own, snake_case names), which win."""
    fields: dict[str, object] = {**asdict(values(preset, family, trainer)),
                                 "sample_prompts": sample_prompts(preset, trigger)}
    return {k: v for k, v in fields.items() if k not in given}


# -- the manual's table
COLUMNS = ("family", "trainer", "preset", "rank / alpha", "learning rate (U-Net)", "text encoder",
           "steps", "repeats", "caption dropout", "min images", "min short side")


def table_rows() -> list[tuple[str, ...]]:
    rows = []
    for trainer in TRAINERS:
        for family in TRAINER_FAMILIES[trainer]:
            for preset in PRESETS:
                v = values(preset, family, trainer)
                rows.append((family, trainer, preset, f"{v.network_dim} / {v.network_alpha:g}", f"{v.learning_rate:g}",
                             f"trained, lr {v.text_encoder_lr:g}" if v.train_text_encoder else "frozen",
                             str(v.steps), str(v.repeats), f"{v.caption_dropout_rate:g}", str(MIN_IMAGES[preset]),
                             f"{BASE_SIZE[family]} px"))
    return rows


def markdown_table() -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows()]
    return "\n".join(lines) + "\n"


def embedded_warnings(req: TrainRequest) -> list[str]:
    """What the embedded trainer does not do of what the request (or its preset) asks: said in the run."""
    out = []
    if req.caption_dropout_rate:
        out.append(f"captionDropoutRate {req.caption_dropout_rate:g} is not applied: the embedded trainer drops no "
                   "captions (kohya does)")
    if req.train_text_encoder is False:
        out.append("trainTextEncoder false is not applied: the embedded trainer always trains the text encoder "
                   "(kohya trains the U-Net only)")
    elif req.text_encoder_lr is not None and req.text_encoder_lr != req.learning_rate:
        out.append(f"textEncoderLr {req.text_encoder_lr:g} is not applied: the embedded trainer trains the text "
                   f"encoder at learningRate {req.learning_rate:g}")
    return out


def apply(req: TrainRequest, family: str, trainer: str, trigger: str) -> TrainRequest:
    """`req` with its preset resolved into its own fields (a request without a preset is returned as is).
    A trainer/family pair outside the table (kohya's families for a trainer not in it) takes kohya's values."""
    if req.preset is None:
        return req
    if family not in _BY_FAMILY:
        family = "sd15"
    if trainer not in TRAINERS:
        trainer = "kohya"
    return req.model_copy(update=resolved_fields(req.preset, family, trainer, trigger, set(req.model_fields_set)))

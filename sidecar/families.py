"""Model families (`sd15`, `sdxl`, `flux`), read from a safetensors file's header, never its name.

Only the header is read (8 bytes of length, then that much JSON: tensor names, dtypes and shapes), so
a 12 GB Flux file is judged as fast as a 75 MB LoRA. The signs, the same for checkpoints, diffusion
models and LoRAs in the formats people install:

- **flux**: Flux's transformer blocks, `double_blocks.N...` and `single_blocks.N...` (BFL's own files,
  ComfyUI's `diffusion_models/`, kohya's `lora_unet_double_blocks_...` LoRAs, networks/lora_flux.py),
  or diffusers' `single_transformer_blocks.N...` (ai-toolkit's and diffusers' LoRAs, `transformer.`).
- **sd15** / **sdxl**: the UNet's cross-attention width, the input size of any `attn2` key projection
  (`...attn2.to_k.weight`, kohya's `..._attn2_to_k.lora_down.weight`, peft's `...attn2.to_k.lora_A.weight`):
  768 is SD 1.5's CLIP-L, 2048 SDXL's two text encoders side by side. (SD 2.x's 1024 is neither.)
- without a UNet key (a text-encoder-only LoRA): SDXL's second text encoder (`conditioner.embedders.1.`,
  kohya's `lora_te2_`, diffusers' `text_encoder_2.`), else SD 1.5's one (`cond_stage_model.transformer.`,
  `lora_te_`).

When the tensors do not decide (a width of neither, as in the tiny test models; no UNet or text-encoder
key), the header's own metadata does: the SAI model spec's `modelspec.architecture`
(`stable-diffusion-v1`, `stable-diffusion-xl-v1-base`, `flux-1-dev`..., with `/lora` after it in kohya's
LoRAs, `-lora` in the spec's own examples) and `ss_base_model_version` (kohya's `sd_v1`,
`sdxl_base_v1-0`, `flux1`: sd-scripts library/sai_model_spec.py, model_util.py, flux_utils.py;
ai-toolkit's `sd_1.5`, `sdxl_1.0`, `flux.1`).
Tensors that decide win: metadata that contradicts them (or the two metadata keys each other) makes
the file `unknown`, saying both, since a mislabelled file is one a person should look at.

What fits none of them is `unknown`, with the reason. Answers are cached by (path, size, mtime), so a
file replaced under the same name is read again.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Family = Literal["sd15", "sdxl", "flux"]
FAMILIES: tuple[Family, ...] = ("sd15", "sdxl", "flux")
UNKNOWN = "unknown"
FAMILY_NAMES = {"sd15": "Stable Diffusion 1.5", "sdxl": "SDXL", "flux": "Flux"}

# What a job of a family renders with when it names no value: Flux is distilled to run at cfg 1 (its
# guidance is FluxGuidance's), with euler and the simple schedule, as ComfyUI's Flux examples do.
SAMPLING_DEFAULTS: dict[str, dict[str, float | str]] = {"flux": {"cfg": 1.0, "sampler": "euler", "scheduler": "simple"}}
# The template name's prefix per family (sd15's templates have none: they came first).
TEMPLATE_PREFIX = {"sd15": "", "sdxl": "sdxl-", "flux": "flux-"}

# A Flux checkpoint's header is under 1 MB; a larger length is not a header we can trust to hold.
MAX_HEADER = 32 * 1024 * 1024
CONTEXT_WIDTHS: dict[int, Family] = {768: "sd15", 2048: "sdxl"}
FOREIGN_WIDTHS = {1024: "SD 2.x"}  # a width that shows another real architecture

_FLUX_DOUBLE = re.compile(r"(^|[._])double_blocks[._]\d")
_FLUX_SINGLE = re.compile(r"(^|[._])single_(transformer_)?blocks[._]\d")
# The key projection of a UNet cross-attention, in checkpoint, kohya and diffusers/peft names.
_ATTN2_K = re.compile(r"attn2[._]to_k(\.weight|\.lora_down\.weight|\.lora_A\.weight|\.lora\.down\.weight|"
                      r"\.lora_A\.default\.weight)$")


@dataclass(frozen=True)
class FamilyReading:
    """A file's family, or `unknown` with the reason."""

    family: Family | Literal["unknown"]
    reason: str | None = None  # why it is unknown

    @property
    def known(self) -> Family | None:
        return None if self.family == UNKNOWN else self.family  # type: ignore[return-value]


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file. ValueError names what is wrong with it; OSError when it
    cannot be read."""
    with Path(path).open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("too short to be a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER:
            raise ValueError(f"a header of {size} bytes: not a safetensors file")
        raw = f.read(size)
    if len(raw) < size:
        raise ValueError("the header is cut short: not a whole safetensors file")
    try:
        header = json.loads(raw)
    except ValueError:
        raise ValueError("the header is not JSON: not a safetensors file") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object: not a safetensors file")
    return header


def family_of_tensors(shapes: dict[str, list[int]]) -> FamilyReading:
    """The family that tensor names and shapes show (see the module's docstring for the signs)."""
    return _tensor_evidence(shapes)[0]


def _tensor_evidence(shapes: dict[str, list[int]]) -> tuple[FamilyReading, bool]:
    """(reading, whether the tensors decide): an unknown width of another real architecture (SD 2.x's
    1024) decides against every family; a width of none (a tiny test model's) or no sign at all does not."""
    names = list(shapes)
    if any(_FLUX_DOUBLE.search(n) for n in names) or any(_FLUX_SINGLE.search(n) for n in names):
        return FamilyReading("flux"), True
    widths = {shape[1] for name, shape in shapes.items() if _ATTN2_K.search(name) and len(shape) >= 2}
    if widths:
        families = {CONTEXT_WIDTHS.get(w) for w in widths}
        if len(families) == 1 and None not in families:
            return FamilyReading(families.pop()), True  # type: ignore[arg-type]
        return (FamilyReading(UNKNOWN, f"its UNet cross-attention width is {', '.join(map(str, sorted(widths)))}; "
                                       "SD 1.5 has 768, SDXL 2048"),
                bool(widths & FOREIGN_WIDTHS.keys()))
    if any(n.startswith(("conditioner.embedders.1.", "lora_te2_", "text_encoder_2.")) for n in names):
        return FamilyReading("sdxl"), True
    if any(n.startswith(("cond_stage_model.transformer.", "lora_te_")) for n in names):
        return FamilyReading("sd15"), True
    return FamilyReading(UNKNOWN, "no tensor of an SD 1.5 or SDXL UNet, their text encoders, or Flux's "
                                  "transformer blocks"), False


# modelspec.architecture (adapter suffix removed) and ss_base_model_version values, per family. Flux
# "chroma" is left out: ComfyUI loads it as its own model type, not as Flux.
MODELSPEC_FAMILIES: dict[str, Family] = {
    "stable-diffusion-v1": "sd15", "stable-diffusion-xl-v1-base": "sdxl", "stable-diffusion-xl-v0_9-base": "sdxl",
    "flux-1-dev": "flux", "flux-1-schnell": "flux", "flux-1": "flux"}
# kohya's (`sd_v1`, `sdxl_base_v1-0`, `flux1`) and ai-toolkit's (`sd_1.5`, `sdxl_1.0`, `flux.1`:
# toolkit/stable_diffusion_model.py get_base_model_version) ss_base_model_version values.
BASE_MODEL_VERSIONS: dict[str, Family] = {"sd_v1": "sd15", "sdxl_base_v1-0": "sdxl", "flux1": "flux",
                                          "sd_1.5": "sd15", "sdxl_1.0": "sdxl", "flux.1": "flux"}
_ADAPTER_SUFFIX = re.compile(r"(/[^/]*|-lora|-textual-inversion)$")


def family_of_metadata(meta: dict[str, Any]) -> FamilyReading | None:
    """What a header's `__metadata__` says of its family: None when it says nothing we read; `unknown`
    (with the reason) when it names another architecture or its two keys disagree."""
    said: dict[str, str] = {}
    arch = str(meta.get("modelspec.architecture") or "").strip()
    if arch:
        said[f"modelspec.architecture = {arch!r}"] = MODELSPEC_FAMILIES.get(_ADAPTER_SUFFIX.sub("", arch), UNKNOWN)
    version = str(meta.get("ss_base_model_version") or "").strip()
    if version:
        said[f"ss_base_model_version = {version!r}"] = BASE_MODEL_VERSIONS.get(version, UNKNOWN)
    if not said:
        return None
    families = set(said.values())
    if families == {UNKNOWN}:
        return FamilyReading(UNKNOWN, f"its metadata names another architecture ({'; '.join(said)})")
    families.discard(UNKNOWN)  # one key of ours and one we do not know (kohya's "sd_v1_v"): ours stands
    if len(families) > 1:
        return FamilyReading(UNKNOWN, f"its metadata contradicts itself ({'; '.join(said)})")
    family = families.pop()
    keys = "; ".join(k for k, v in said.items() if v == family)
    return FamilyReading(family, f"from its metadata ({keys})")  # type: ignore[arg-type]


def family_of_header(header: dict[str, Any]) -> FamilyReading:
    """A safetensors header's family: its tensors', else its metadata's (see the module's docstring)."""
    shapes = {name: list(value.get("shape") or []) for name, value in header.items()
              if name != "__metadata__" and isinstance(value, dict)}
    tensors, decided = _tensor_evidence(shapes)
    meta = header.get("__metadata__")
    stated = family_of_metadata(meta) if isinstance(meta, dict) else None
    if stated is None:
        return tensors
    if not decided:
        return stated
    # The tensors decide. Metadata naming an architecture we do not know proves nothing against them.
    if stated.family in (UNKNOWN, tensors.family):
        return tensors
    shown = FAMILY_NAMES[tensors.family] if tensors.known else f"no family of ours ({tensors.reason})"
    return FamilyReading(UNKNOWN, f"its tensors read as {shown}, but its metadata says "
                                  f"{FAMILY_NAMES[stated.family]} {(stated.reason or '').removeprefix('from its metadata ')}: "
                                  "a mislabelled or converted file")


# A LoRA's text-encoder weights, in kohya's names (`lora_te_`, `lora_te1_` CLIP-L, `lora_te2_`, `lora_te3_` T5)
# and diffusers'/peft's (`text_encoder.`, `text_encoder_2.`, `te.`).
_TEXT_ENCODER_KEY = re.compile(r"^(lora_te\d?_|text_encoder(_\d)?\.|te\d?\.)")


def has_text_encoder_weights(path: Path) -> bool:
    """Blocking: whether a LoRA file's header names text-encoder weights (False when it cannot be read)."""
    try:
        header = read_header(path)
    except (OSError, ValueError):
        return False
    return any(_TEXT_ENCODER_KEY.match(name) for name in header if name != "__metadata__")


# A diffusers folder says its pipeline in model_index.json.
PIPELINE_FAMILIES: dict[str, Family] = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl",
                                        "FluxPipeline": "flux"}


def family_of_folder(path: Path) -> FamilyReading:
    try:
        index = json.loads((path / "model_index.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return FamilyReading(UNKNOWN, f"a folder without a readable model_index.json ({exc})")
    name = index.get("_class_name") if isinstance(index, dict) else None
    family = PIPELINE_FAMILIES.get(str(name))
    return FamilyReading(family) if family else FamilyReading(UNKNOWN, f"a diffusers {name} folder")


def family_of_file(path: Path) -> FamilyReading:
    """Blocking: the family of one file (from its header alone) or diffusers folder."""
    if Path(path).is_dir():
        return family_of_folder(Path(path))
    if Path(path).suffix.lower() != ".safetensors":
        return FamilyReading(UNKNOWN, f"{Path(path).suffix or 'no suffix'}: only .safetensors headers are read")
    try:
        header = read_header(path)
    except (OSError, ValueError) as exc:
        return FamilyReading(UNKNOWN, str(exc))
    return family_of_header(header)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class FamilyCache:
    """`family_of_file` (and a file's SHA-256) remembered per (path, size, mtime): thread-safe (readers
    run in threads)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int], FamilyReading]] = {}
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}
        self._lock = threading.Lock()

    def sha256(self, path: Path) -> str | None:
        """The file's SHA-256 (what a log entry records of a LoRA), None when it cannot be read."""
        try:
            st = path.stat()
            if not path.is_file():
                return None
            stamp = (st.st_size, st.st_mtime_ns)
            with self._lock:
                seen = self._hashes.get(path)
            if seen is not None and seen[0] == stamp:
                return seen[1]
            digest = sha256_of(path)
        except OSError:
            return None
        with self._lock:
            self._hashes[path] = (stamp, digest)
        return digest

    def of(self, path: Path) -> FamilyReading:
        try:
            st = path.stat()
        except OSError as exc:
            return FamilyReading(UNKNOWN, f"cannot be read: {exc.strerror or exc}")
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            seen = self._seen.get(path)
        if seen is not None and seen[0] == stamp:
            return seen[1]
        reading = family_of_file(path)
        with self._lock:
            self._seen[path] = (stamp, reading)
        return reading

"""Gives kohya's `--tokenizer_cache_dir` the CLIP tokenizer before its first run, so it works offline.

sd-scripts loads `CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")` first thing; with
`--tokenizer_cache_dir DIR` it reads `DIR/openai_clip-vit-large-patch14/` when that folder exists and
otherwise downloads it (and saves it there). On a machine without the model hub the download fails
(exit 1, `TypeError ... NoneType` or a ConnectionError chain; kohya-sd-scripts.md §2). When the
engine already knows where CLIP's real vocabulary is (`sidecar.engine.tokenizer.find_tokenizer`:
`<models>/tokenizers/clip-vit-large-patch14/`, ComfyUI's `sd1_tokenizer/`, the BPE file the package ships,
the HF cache), the folder is written from it in the layout `save_pretrained` produces. Otherwise
nothing is written and kohya downloads as usual. Torch- and transformers-free.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from sidecar.atomic import replacing_dir
from sidecar.config import Settings
from sidecar.errors import SidecarError

log = logging.getLogger("sidecar.training.kohya")

MODEL_FOLDER = "openai_clip-vit-large-patch14"  # kohya: model_id.replace("/", "_")
CLIP_VOCAB_SIZE = 49408  # a smaller vocab (the tiny models' byte-level one) would not fit SD1.x's text encoder
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
TOKENIZER_CONFIG = {
    **SPECIAL_TOKENS, "add_prefix_space": False, "errors": "replace", "do_lower_case": True,
    "model_max_length": 77,  # without it transformers pads prompts to ~1e30 tokens
    "tokenizer_class": "CLIPTokenizer",
}


def seed_tokenizer_cache(settings: Settings, cache_dir: Path) -> Path | None:
    """Write `cache_dir/openai_clip-vit-large-patch14/` unless it is there. Returns the folder when
    it exists afterwards, None when no CLIP vocabulary was found (kohya will try to download).
    Blocking (file system): call in a thread."""
    target = cache_dir / MODEL_FOLDER
    if target.exists():
        return target
    vocab, merges = _find_vocab(settings)
    if vocab is None or merges is None:
        return None
    try:
        # Built aside and renamed in: kohya must never see a half-written folder (it would use it as is).
        with replacing_dir(target) as tmp:
            (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
            (tmp / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")
            (tmp / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2), encoding="utf-8")
            (tmp / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2), encoding="utf-8")
    except OSError as exc:
        if not target.exists():  # not fatal: kohya then downloads, as without a vocabulary here
            log.warning("cannot write kohya's tokenizer cache %s (%s)", target, exc)
            return None
    log.info("kohya tokenizer cache seeded at %s", target)
    return target


def _find_vocab(settings: Settings) -> tuple[dict[str, int] | None, list[str] | None]:
    from sidecar.engine.tokenizer import find_tokenizer, vocab_from_bpe_gz

    try:
        source = find_tokenizer(settings.models_path, settings.comfyui_dir)
    except SidecarError:
        return None, None
    try:
        if source.kind == "bpe_gz":
            vocab, merges = vocab_from_bpe_gz(source.path)
        else:
            vocab = json.loads((source.path / "vocab.json").read_text(encoding="utf-8"))
            lines = (source.path / "merges.txt").read_text(encoding="utf-8").split("\n")
            merges = [m for m in lines if m.strip() and not m.startswith("#version")]
    except (OSError, ValueError, EOFError) as exc:
        log.warning("CLIP tokenizer at %s is unreadable (%s): kohya will download its own", source.path, exc)
        return None, None
    if len(vocab) != CLIP_VOCAB_SIZE:
        return None, None
    return vocab, merges

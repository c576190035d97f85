"""The CLIP tokenizer, found offline: where its files may be, converting CLIP's own BPE file, and the
byte-level stand-in that the tiny models use.

The engine never downloads, and transformers/diffusers ship no CLIP vocabulary, so this package ships
OpenAI's `bpe_simple_vocab_16e6.txt.gz` (`configs/clip/`, MIT) and converts it to `vocab.json` +
`merges.txt` once; a models dir, ComfyUI install or diffusers folder with its own files wins.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import EngineUnavailable

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
BPE_GZ = "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 512 byte tokens + these merges + 2 specials = 49408
TOKENIZERS_SUBDIR = Path("tokenizers") / "clip-vit-large-patch14"
SHIPPED_BPE = Path(__file__).resolve().parent / "configs" / "clip" / BPE_GZ


def byte_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in printable]
    extra = 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_level_vocab() -> dict[str, int]:
    """Every byte a token, with and without CLIP's end-of-word marker; no merges. The tiny models'
    tokenizer: same file format and special tokens as CLIP's, 514 entries."""
    chars = byte_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def vocab_from_bpe_gz(path: Path) -> tuple[dict[str, int], list[str]]:
    """CLIP's `bpe_simple_vocab_16e6.txt.gz` (a merges list) -> the vocab.json + merges it implies."""
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:CLIP_MERGES + 1]
    chars = byte_unicode()
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m.split()) for m in merges),
              "<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer(directory: Path, vocab: dict[str, int], merges: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / MERGES_FILE).write_text("\n".join(["#version: 0.2", *merges]) + "\n", encoding="utf-8")
    return directory


@dataclass(frozen=True)
class TokenizerSource:
    kind: str  # "files" (vocab.json + merges.txt) | "bpe_gz"
    path: Path


def _from_dir(directory: Path) -> TokenizerSource | None:
    if (directory / VOCAB_FILE).is_file() and (directory / MERGES_FILE).is_file():
        return TokenizerSource("files", directory)
    if (directory / BPE_GZ).is_file():
        return TokenizerSource("bpe_gz", directory / BPE_GZ)
    return None


def _packaged_bpe() -> Path | None:
    """CLIP's BPE file as this package ships it (`configs/clip/`, MIT, from OpenAI's CLIP): the real
    vocabulary with no download. None only in a broken install."""
    return SHIPPED_BPE if SHIPPED_BPE.is_file() else None


def candidate_dirs(models_dir: Path, comfyui_dir: Path | None) -> list[Path]:
    dirs = [models_dir / TOKENIZERS_SUBDIR, models_dir / "tokenizers"]
    # ComfyUI keeps CLIP's files in comfy/sd1_tokenizer/: in the configured install, or in the one
    # whose models/ folder is our models dir.
    for root in (comfyui_dir, models_dir.parent):
        if root is not None and root / "comfy" / "sd1_tokenizer" not in dirs:
            dirs.append(root / "comfy" / "sd1_tokenizer")
    return dirs


def find_tokenizer(models_dir: Path, comfyui_dir: Path | None, explicit: Path | None = None) -> TokenizerSource:
    """Where the CLIP tokenizer comes from, first match wins: the model's own tokenizer (tiny models,
    diffusers folders), `<models>/tokenizers/clip-vit-large-patch14/`, ComfyUI's `comfy/sd1_tokenizer/`
    (configured `comfyui_dir`, or the install whose `models/` we use), the BPE file this package
    ships, the Hugging Face cache (offline; only if the shipped file is missing)."""
    if explicit is not None:
        found = _from_dir(explicit)
        if found:
            return found
    for directory in candidate_dirs(models_dir, comfyui_dir):
        found = _from_dir(directory)
        if found:
            return found
    packaged = _packaged_bpe()
    if packaged is not None:
        return TokenizerSource("bpe_gz", packaged)
    cached = _hf_cache_dir()
    if cached is not None:
        return TokenizerSource("files", cached)
    where = candidate_dirs(models_dir, comfyui_dir)[0]
    raise EngineUnavailable(
        "The embedded engine needs the CLIP tokenizer files (vocab.json and merges.txt of "
        f"openai/clip-vit-large-patch14) to run a real SD1.5 checkpoint, and it never downloads. Copy them "
        f"into {where}/ (ComfyUI has them in comfy/sd1_tokenizer/; any SD1.5 diffusers folder has them in "
        "tokenizer/), or set comfyui_dir to your ComfyUI install, or use a diffusers-folder checkpoint.",
        {"expected": str(where), "files": [VOCAB_FILE, MERGES_FILE]},
    )


def _hf_cache_dir() -> Path | None:
    """A tokenizer already in the Hugging Face cache, looked up without touching the network."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" /
                                                       "huggingface") / "hub")
    for repo, sub in (("models--openai--clip-vit-large-patch14", ""),
                      ("models--stable-diffusion-v1-5--stable-diffusion-v1-5", "tokenizer"),
                      ("models--runwayml--stable-diffusion-v1-5", "tokenizer")):
        snapshots = hub / repo / "snapshots"
        if snapshots.is_dir():
            for snap in sorted(snapshots.iterdir()):
                found = _from_dir(snap / sub if sub else snap)
                if found and found.kind == "files":
                    return found.path
    return None


def load_tokenizer(source: TokenizerSource, cache_dir: Path | None = None) -> Any:
    """A transformers CLIPTokenizer from the found files (a BPE .gz is converted once into `cache_dir`)."""
    from transformers import CLIPTokenizer

    directory = source.path
    if source.kind == "bpe_gz":
        target = (cache_dir or source.path.parent) / "clip-tokenizer-from-bpe"
        if _from_dir(target) is None or _from_dir(target).kind != "files":  # type: ignore[union-attr]
            vocab, merges = vocab_from_bpe_gz(source.path)
            write_tokenizer(target, vocab, merges)
        directory = target
    return CLIPTokenizer(vocab=str(directory / VOCAB_FILE), merges=str(directory / MERGES_FILE))

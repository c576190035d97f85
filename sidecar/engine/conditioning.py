"""CLIPTextEncode as ComfyUI does it for SD1.5: `(text:1.2)` / `(text)` emphasis, prompts longer than
one CLIP window split into 75-token chunks encoded separately and concatenated, padding with the
end token, and the last layer's output (with CLIP's final layer norm).

For SDXL (`encode_sdxl`), as ComfyUI's SDXLClipModel and diffusers' SDXL pipeline: both text encoders'
penultimate hidden states (no final layer norm) side by side (768 + 1280 = 2048 wide), the second
encoder padding with token 0 (its tokenizer's `!`), and the pooled, projected embedding of the
second encoder's first chunk for the UNet's added conditioning.

Emphasis scales each token's embedding away from the empty prompt's embedding at the same position,
ComfyUI's rule, so a weighted prompt means the same on both backends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

EMPHASIS = 1.1  # one pair of parentheses without an explicit weight


def parse_weights(text: str) -> list[tuple[str, float]]:
    """'a (b:1.5) ((c)) \\(d\\)' -> [('a ', 1.0), ('b', 1.5), (' ', 1.0), ('c', 1.21), (' (d)', 1.0)]."""
    out: list[tuple[str, float]] = []
    stack: list[int] = []  # start index in `out` of each open parenthesis
    buf = ""

    def flush() -> None:
        nonlocal buf
        if buf:
            out.append((buf, 1.0))
            buf = ""

    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            buf += text[i + 1]
            i += 2
            continue
        if ch == "(":
            flush()
            stack.append(len(out))
        elif ch == ")" and stack:
            start = stack.pop()
            weight = EMPHASIS
            head, sep, tail = buf.rpartition(":")
            if sep:
                try:
                    weight = float(tail)
                    buf = head
                except ValueError:
                    pass
            flush()
            out[start:] = [(seg, w * weight) for seg, w in out[start:]]
        else:
            buf += ch
        i += 1
    flush()
    return [(seg, w) for seg, w in out if seg]


def tokenize(tokenizer: Any, text: str, window: int, pad: int | None = None) -> list[list[tuple[int, float]]]:
    """Weighted tokens in chunks of `window` (77): start token, up to 75 tokens, end token, padding
    (with the end token unless `pad` names another)."""
    tokens: list[tuple[int, float]] = []
    for segment, weight in parse_weights(text):
        ids = tokenizer(segment, add_special_tokens=False, truncation=False)["input_ids"]
        tokens.extend((t, weight) for t in ids)
    body = window - 2
    chunks = [tokens[i:i + body] for i in range(0, len(tokens), body)] or [[]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    filler = eos if pad is None else pad
    return [[(bos, 1.0), *chunk, (eos, 1.0)] + [(filler, 1.0)] * (body - len(chunk)) for chunk in chunks]


def _hidden(text_encoder: torch.nn.Module, ids: torch.Tensor, penultimate: bool) -> tuple[torch.Tensor, Any]:
    out = text_encoder(input_ids=ids, output_hidden_states=penultimate)
    return (out.hidden_states[-2] if penultimate else out.last_hidden_state), out


@torch.inference_mode()
def _encode(tokenizer: Any, text_encoder: torch.nn.Module, text: str, *, penultimate: bool = False,
            pad: int | None = None) -> tuple[torch.Tensor, Any]:
    """[1, 77 * chunks, hidden] (and the encoder's raw output for the chunks, for its pooled embedding)."""
    device = next(text_encoder.parameters()).device
    window = text_encoder.config.max_position_embeddings
    chunks = tokenize(tokenizer, text, window, pad)
    ids = torch.tensor([[t for t, _ in c] for c in chunks], device=device)
    z, out = _hidden(text_encoder, ids, penultimate)
    weights = torch.tensor([[w for _, w in c] for c in chunks], device=device, dtype=z.dtype)
    if bool((weights != 1.0).any()):
        empty = tokenize(tokenizer, "", window, pad)[0]
        z_empty, _ = _hidden(text_encoder, torch.tensor([[t for t, _ in empty]], device=device), penultimate)
        z = (z - z_empty) * weights.unsqueeze(-1) + z_empty
    return z.reshape(1, -1, z.shape[-1]), out


def encode(tokenizer: Any, text_encoder: torch.nn.Module, text: str) -> torch.Tensor:
    """SD1.5: [1, 77 * chunks, hidden] on the text encoder's device and dtype."""
    return _encode(tokenizer, text_encoder, text)[0]


SDXL_PAD = 0  # OpenCLIP's tokenizer pads with 0 (ComfyUI's SDXLClipG `pad`, diffusers' tokenizer_2 `!`)


def encode_sdxl(tokenizer: Any, text_encoder: torch.nn.Module, text_encoder_2: torch.nn.Module,
                text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL: ([1, 77 * chunks, 768 + 1280], pooled [1, projection_dim])."""
    z1, _ = _encode(tokenizer, text_encoder, text, penultimate=True)
    z2, out = _encode(tokenizer, text_encoder_2, text, penultimate=True, pad=SDXL_PAD)
    pooled = out.text_embeds[:1]  # the first chunk's, as ComfyUI
    return torch.cat([z1, z2.to(z1.dtype)], dim=-1), pooled


def same_length(conds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts of different chunk counts are repeated to a common length (their LCM) so they batch."""
    lengths = [c.shape[1] for c in conds]
    target = math.lcm(*lengths)
    return [c.repeat(1, target // c.shape[1], 1) for c in conds]

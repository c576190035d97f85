"""CLIPTextEncode as ComfyUI does it for SD1.5: `(text:1.2)` / `(text)` emphasis, prompts longer than
one CLIP window split into 75-token chunks encoded separately and concatenated, padding with the
end token, and the last layer's output (with CLIP's final layer norm).

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


def tokenize(tokenizer: Any, text: str, window: int) -> list[list[tuple[int, float]]]:
    """Weighted tokens in chunks of `window` (77): start token, up to 75 tokens, end token, padding."""
    tokens: list[tuple[int, float]] = []
    for segment, weight in parse_weights(text):
        ids = tokenizer(segment, add_special_tokens=False, truncation=False)["input_ids"]
        tokens.extend((t, weight) for t in ids)
    body = window - 2
    chunks = [tokens[i:i + body] for i in range(0, len(tokens), body)] or [[]]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[(bos, 1.0), *chunk, (eos, 1.0)] + [(eos, 1.0)] * (body - len(chunk)) for chunk in chunks]


@torch.inference_mode()
def encode(tokenizer: Any, text_encoder: torch.nn.Module, text: str) -> torch.Tensor:
    """[1, 77 * chunks, hidden] on the text encoder's device and dtype."""
    device = next(text_encoder.parameters()).device
    window = text_encoder.config.max_position_embeddings
    chunks = tokenize(tokenizer, text, window)
    ids = torch.tensor([[t for t, _ in c] for c in chunks], device=device)
    z = text_encoder(input_ids=ids).last_hidden_state
    weights = torch.tensor([[w for _, w in c] for c in chunks], device=device, dtype=z.dtype)
    if bool((weights != 1.0).any()):
        empty = tokenize(tokenizer, "", window)[0]
        z_empty = text_encoder(input_ids=torch.tensor([[t for t, _ in empty]], device=device)).last_hidden_state
        z = (z - z_empty) * weights.unsqueeze(-1) + z_empty
    return z.reshape(1, -1, z.shape[-1])


def same_length(conds: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts of different chunk counts are repeated to a common length (their LCM) so they batch."""
    lengths = [c.shape[1] for c in conds]
    target = math.lcm(*lengths)
    return [c.repeat(1, target // c.shape[1], 1) for c in conds]

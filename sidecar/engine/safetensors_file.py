"""Reading a safetensors file into separate tensors with plain reads (no mmap), each checked against the
header: a file from elsewhere may lie about its header's length, its entries, its shapes or its offsets,
and each lie is a ValueError naming it (the one type the engine's loaders turn into their clear codes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

# The safetensors library's own bound on a header (its MAX_HEADER_SIZE, 100,000,000 bytes): past it a file is
# refused before its header is read, so a length field that lies cannot make the engine read gigabytes as JSON.
MAX_HEADER = 100_000_000
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


def read_safetensors(path: Path, cast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Every tensor in its own memory, filled with plain reads (no mmap); with `cast`, each floating
    tensor converted as soon as it is read.

    safetensors' `load_file` maps the file: every page the cache's dtype cast touches then counts in
    the process's RSS until the file's last tensor is freed, so a full-size fp16 SD1.5 cast to fp32 on
    the CPU peaked at 6.5 GB RSS (fp32 copy + the whole mapped file) for a 5.0 GB steady state, above
    ComfyUI's 6.4 GB. Separate tensors are freed one by one as the cast replaces them. A full-size SDXL
    job with a LoRA, cast after the read, reached 21.8 GB RSS (13.9 GB of fp32 weights, ~3.8 GB of the
    LoRA's weight backups) on a 23 GB machine: with `cast`, only one tensor's file bytes are ever held
    beside the converted model.
    """
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        raw = fh.read(8)
        if len(raw) != 8:
            raise ValueError("not a safetensors file (shorter than its header length)")
        header_len = int.from_bytes(raw, "little")
        if header_len > size - 8:
            raise ValueError("not a safetensors file (header length past the end of the file)")
        if header_len > MAX_HEADER:
            raise ValueError(f"not a safetensors file (a header of {header_len} bytes)")
        try:
            header = json.loads(fh.read(header_len))
        except ValueError:
            raise ValueError("not a safetensors file (its header is not JSON)") from None
        base = 8 + header_len
        entries = sorted(_entries(header), key=lambda e: e[3])
        tensors: dict[str, torch.Tensor] = {}
        for name, dtype, shape, start, end in entries:
            if not 0 <= start <= end <= size - base:
                raise ValueError(f"tensor {name}: its data lies past the end of the file (cut short?)")
            buf = torch.empty(end - start, dtype=torch.uint8)
            fh.seek(base + start)
            view, got = memoryview(buf.numpy()), 0
            while got < len(view):
                n = fh.readinto(view[got:])
                if not n:
                    raise ValueError(f"tensor {name}: the file ends early")
                got += n
            tensor = buf.view(dtype).reshape(shape)
            if cast is not None and tensor.is_floating_point() and tensor.dtype != cast:
                tensor = tensor.to(cast)
                del buf
            tensors[name] = tensor
    return tensors


def _entries(header: Any) -> list[tuple[str, torch.dtype, list[int], int, int]]:
    """(name, dtype, shape, start, end) of each tensor the header lists, each checked: the header is the
    file's word, and a file from elsewhere may lie (a shape whose size is not its bytes, offsets that are not
    numbers) — a ValueError naming the tensor, never a TypeError or a reshape's RuntimeError."""
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (its header is not a JSON object)")
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name}: its header entry is not an object")
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
        if dtype is None:
            raise ValueError(f"tensor {name}: unsupported dtype {str(info.get('dtype'))[:40]}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"tensor {name}: its shape is not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise ValueError(f"tensor {name}: its data_offsets are not two numbers")
        start, end = offsets
        if math.prod(shape) * dtype.itemsize != end - start:
            raise ValueError(f"tensor {name}: its shape {shape[:8]} is not the {end - start} bytes it says it holds")
        out.append((name, dtype, shape, start, end))
    return out

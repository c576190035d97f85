"""Perceptual hashes (pHash and dHash, 64 bits each) with numpy + pillow, for the near-duplicate check.

pHash keeps the signs of the lowest 8x8 DCT frequencies of a 32x32 grey thumbnail: robust to resizing,
re-compression and small edits. dHash (row gradients of a 9x8 thumbnail) backs it up: two images are
near-duplicates only when both hashes agree, which keeps flat, similar-looking poses apart.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

HASH_BITS = 64


@cache
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


def _grey(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.convert("L").resize(size, Image.Resampling.LANCZOS), dtype=np.float64)


def phash(img: Image.Image) -> int:
    d = _dct_matrix(32)
    freq = d @ _grey(img, (32, 32)) @ d.T
    low = freq[:8, :8].flatten()
    # The DC term is the mean brightness: leaving it out of the median keeps the split balanced.
    bits = low > np.median(low[1:])
    return _pack(bits)


def dhash(img: Image.Image) -> int:
    g = _grey(img, (9, 8))
    return _pack((g[:, 1:] > g[:, :-1]).flatten())


def _pack(bits: np.ndarray) -> int:
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_duplicates(hashes: dict[str, tuple[int, int]], *, max_phash: int = 6, max_dhash: int = 8,
                    skip: set[frozenset[str]] | None = None) -> list[tuple[str, str, int]]:
    """Pairs (a, b, pHash distance) whose two hashes are both within the limits. `skip`: pairs that are
    expected to look alike (an image and its own flip, when the view is symmetric)."""
    names = sorted(hashes)
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if skip and frozenset((a, b)) in skip:
                continue
            dp = distance(hashes[a][0], hashes[b][0])
            if dp <= max_phash and distance(hashes[a][1], hashes[b][1]) <= max_dhash:
                pairs.append((a, b, dp))
    return pairs

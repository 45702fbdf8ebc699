"""What makes two images the same: their bytes (an exact duplicate, by SHA-256) or their
picture (a near-duplicate, by a 256-bit difference hash: the same photo re-encoded,
rescaled or slightly recoloured).

dHash (Krawetz, "Kind of like that", 2013) on a 16 x 16 grid: the image in grey, shrunk to
17 x 16 by area averaging; each of the 256 bits says whether a cell is brighter than its
right-hand neighbour. The usual 8 x 8 grid (64 bits) is too coarse for small aligned
faces: on the bundled sample it puts different faces of one generator 1-2 bits apart,
as close as a JPEG copy of one face. On the 16 x 16 grid, measured on the bundled sample
(64 px), different identities are at least 22 bits apart, while a copy differs by about
11 bits (brightness +10%), 14 (JPEG quality 85), 18 (rescaled 48 px and back) and 22
(JPEG quality 60) on average: NEAR_DUPLICATE_MAX_BITS = 20 reports most copies and none
of the sample's distinct faces. Copies of larger images (DFFD, 224 px and up) change
fewer bits.

`near_duplicate_pairs` finds every pair within `max_bits` without comparing all pairs:
the 256 bits are cut into `max_bits + 1` bands, and two hashes that differ in at most
`max_bits` bits agree on at least one whole band (pigeonhole), so only hashes sharing a
band's value are compared, one band at a time in numpy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

GRID = 16
HASH_BITS = GRID * GRID
NEAR_DUPLICATE_MAX_BITS = 20
_POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint16)


def content_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes (hex)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dhash(image: Image.Image) -> np.ndarray:
    """The 256-bit difference hash of a decoded image (any mode and size), packed into 32
    uint8."""
    small = image.convert("L").resize((GRID + 1, GRID), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.int16)
    return np.packbits((pixels[:, 1:] > pixels[:, :-1]).ravel())


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between packed hashes (broadcast over leading axes)."""
    return _POPCOUNT[np.bitwise_xor(a, b)].sum(axis=-1)


def _band_values(hashes: np.ndarray, max_bits: int) -> np.ndarray:
    """(bands, n) int64: each hash's value on each of max_bits + 1 bands of its bits."""
    bits = np.unpackbits(hashes, axis=1).astype(np.int64)
    edges = np.linspace(0, HASH_BITS, max_bits + 2).round().astype(int)
    return np.stack([bits[:, lo:hi] @ (1 << np.arange(hi - lo, dtype=np.int64)) for lo, hi in zip(edges[:-1], edges[1:],
                                                                                                 strict=True)])


def near_duplicate_pairs(left: np.ndarray, right: np.ndarray, max_bits: int = NEAR_DUPLICATE_MAX_BITS,
                         chunk: int = 2_000_000) -> list[tuple[int, int, int]]:
    """(row of left, row of right, distance) of every pair of packed hashes (n, 32) within
    `max_bits` bits, sorted, each pair once. Candidate pairs are checked at most `chunk`
    at a time."""
    if not 0 <= max_bits < HASH_BITS // 8:
        raise ValueError(f"max_bits must be in [0, {HASH_BITS // 8}): bands narrower than 8 bits match too often")
    left, right = np.asarray(left, dtype=np.uint8), np.asarray(right, dtype=np.uint8)
    if not len(left) or not len(right):
        return []
    found: set[tuple[int, int]] = set()
    left_bands, right_bands = _band_values(left, max_bits), _band_values(right, max_bits)
    for lvalues, rvalues in zip(left_bands, right_bands, strict=True):
        order = np.argsort(rvalues, kind="stable")
        sorted_values = rvalues[order]
        starts = np.searchsorted(sorted_values, lvalues, side="left")
        stops = np.searchsorted(sorted_values, lvalues, side="right")
        counts = stops - starts
        rows = np.flatnonzero(counts)
        for block in np.array_split(rows, max(1, int(counts[rows].sum()) // chunk + 1)):
            if not len(block):
                continue
            n = counts[block]
            i = np.repeat(block, n)
            offsets = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            j = order[np.repeat(starts[block], n) + offsets]
            close = hamming(left[i], right[j]) <= max_bits
            found.update(zip(i[close].tolist(), j[close].tolist(), strict=True))
    return sorted((i, j, int(hamming(left[i], right[j]))) for i, j in found)

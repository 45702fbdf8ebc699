"""Duplicates in the raw data: exact copies (the same bytes under two names, in one class
or both) and near-duplicates (the same picture re-encoded or rescaled) that the split put
on two sides of a train/val/test boundary.

An exact copy is an error by default (the split stage lists every group); with
`data.on_bad_file: skip` one copy of each group is kept (the first path) and the others
dropped, and a group whose copies carry both labels is dropped whole: the bytes cannot
be both real and fake. Either way no picture is trained on and tested on as the same
bytes. Near-duplicates are reported (counted per pair of splits in metrics/split.json,
with examples), not removed: a perceptual hash also matches distinct pictures now and
then, so a person decides."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from robust_deepfake.data.fingerprint import NEAR_DUPLICATE_MAX_BITS, near_duplicate_pairs
from robust_deepfake.data.layout import SPLITS, Record

SPLIT_PAIRS = tuple((a, b) for index, a in enumerate(SPLITS) for b in SPLITS[index + 1:])


@dataclass(frozen=True)
class Fingerprint:
    """One decoded image: the SHA-256 of its file and the dHash of its picture."""

    sha256: str
    picture: np.ndarray


def exact_duplicate_groups(records: list[Record], prints: dict[str, Fingerprint]) -> list[list[Record]]:
    """Every set of two or more records with the same bytes, each sorted by path."""
    by_hash: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_hash[prints[record.path].sha256].append(record)
    return sorted((sorted(group, key=lambda r: r.path) for group in by_hash.values() if len(group) > 1),
                  key=lambda group: group[0].path)


def describe(group: list[Record]) -> str:
    """`a = b = c` with each copy's class, e.g. `real/x.png (real) = fake/m/x.png (fake)`."""
    return " = ".join(f"{r.path} ({'fake' if r.label else 'real'})" for r in group)


@dataclass
class Deduplicated:
    kept: list[Record]
    dropped: list[str] = field(default_factory=list)  # "path: why"
    groups: int = 0
    label_conflicts: int = 0  # groups whose copies carry both labels (dropped whole)


def drop_duplicates(records: list[Record], groups: list[list[Record]]) -> Deduplicated:
    """Keep the first copy of each group (by path); a group with both labels goes whole."""
    drop: dict[str, str] = {}
    conflicts = 0
    for group in groups:
        if len({r.label for r in group}) > 1:
            conflicts += 1
            drop.update({r.path: f"{r.path}: the same bytes carry both labels ({describe(group)})" for r in group})
        else:
            drop.update({r.path: f"{r.path}: an exact copy of {group[0].path}" for r in group[1:]})
    return Deduplicated([r for r in records if r.path not in drop], sorted(drop.values()), len(groups), conflicts)


@dataclass
class NearDuplicates:
    """Pairs of pictures within `max_bits` of the 256-bit dHash on two sides of a split."""

    max_bits: int
    across: dict[str, int]  # "train/test" -> pairs
    examples: list[str]  # "a ~ b (n bits)"

    def as_dict(self) -> dict:
        return {"hash": "dHash, 256 bits", "max_bits": self.max_bits, "across_splits": self.across,
                "examples": self.examples}


def near_duplicates_across_splits(assignment: dict[str, list[Record]], prints: dict[str, Fingerprint],
                                  max_bits: int = NEAR_DUPLICATE_MAX_BITS, examples: int = 20) -> NearDuplicates:
    """Count, for each pair of splits, the picture pairs within `max_bits` bits; keep the
    closest `examples` as examples."""
    across: dict[str, int] = {}
    found: list[tuple[int, str, str]] = []
    for first, second in SPLIT_PAIRS:
        left, right = assignment[first], assignment[second]
        hashes = [np.stack([prints[r.path].picture for r in side]) if side else np.zeros((0, 32), np.uint8)
                  for side in (left, right)]
        pairs = near_duplicate_pairs(hashes[0], hashes[1], max_bits)
        across[f"{first}/{second}"] = len(pairs)
        found += [(bits, left[i].path, right[j].path) for i, j, bits in pairs]
    found.sort()
    return NearDuplicates(max_bits, across, [f"{a} ~ {b} ({bits} bits)" for bits, a, b in found[:examples]])

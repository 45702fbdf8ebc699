"""Identity-disjoint, source-stratified train/val/test split with held-out methods.

Rules, in order of precedence:
1. every image of a held-out method goes to test, and with it its whole identity group
   (a real photo whose edit is held out must not be trained on);
2. an official split shipped with the data (metadata.csv, e.g. DFFD's) is kept when the
   strategy is `auto`; a group never straddles splits, so a group whose members disagree
   follows the majority, test winning ties;
3. the remaining groups are assigned greedily, largest first (ties in a seeded random
   order), to the split whose per-source quota they fill best, which stratifies every
   source across the splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from robust_deepfake.config import DataConfig, SplitConfig
from robust_deepfake.data.duplicates import (
    Fingerprint,
    NearDuplicates,
    describe,
    drop_duplicates,
    exact_duplicate_groups,
    near_duplicates_across_splits,
)
from robust_deepfake.data.fingerprint import content_hash, dhash
from robust_deepfake.data.images import MASK_SIZE_HINT, BadImageError, MaskSizeError, mask_size_problem, open_rgb
from robust_deepfake.data.layout import SPLITS, Record, scan
from robust_deepfake.errors import StageError
from robust_deepfake.progress import progress as bar


class SplitError(StageError, ValueError):
    """The data cannot be split as configured; str() says which key or source."""


@dataclass
class SplitResult:
    assignment: dict[str, list[Record]]
    moved_to_test: int = 0  # official-split images moved to keep identities disjoint
    notes: list[str] = field(default_factory=list)


def _fill_score(split: str, counts: Counter, quota: dict, filled: Counter) -> float:
    """Relative unfilled quota of a group's sources in `split`; a split without quota for
    one of them (a held-out method outside test) is never chosen for the group."""
    total = 0.0
    for source, count in counts.items():
        target = quota.get((split, source), 0.0)
        if target <= 0:
            return -np.inf
        total += count * (target - filled[(split, source)]) / target
    return total


def _quota(records: list[Record], config: SplitConfig) -> dict[tuple[str, str], float]:
    """(split, source) -> the images of that source the split should hold, by the fractions;
    held-out methods have none (they go to test whole)."""
    fractions = {
        "train": 1.0 - config.val_fraction - config.test_fraction,
        "val": config.val_fraction,
        "test": config.test_fraction,
    }
    per_source = Counter(r.source for r in records)
    return {
        (split, source): fractions[split] * per_source[source]
        for split in SPLITS
        for source in sorted(per_source)
        if source not in config.holdout_methods
    }


def _fixed_split(members: list[Record], config: SplitConfig) -> str | None:
    """The split a group must go to: test for a held-out method, else (strategy auto) the
    official split most of its images carry (ties: test, val, train); None when free."""
    if any(r.source in config.holdout_methods for r in members):
        return "test"
    if config.strategy == "auto" and any(r.official_split for r in members):
        votes = Counter(r.official_split for r in members if r.official_split)
        best = max(votes.values())
        return next(s for s in ("test", "val", "train") if votes.get(s) == best)
    return None


def _check_splits(result: SplitResult, n_records: int, n_groups: int) -> None:
    """SplitError for an empty split, or a train/val split missing a label."""
    for split in SPLITS:
        if not result.assignment[split]:
            raise SplitError(
                f"split: the {split} split is empty; {n_records} images in {n_groups} "
                "identity groups are too few for the configured fractions"
            )
    for split in ("train", "val"):
        labels = {r.label for r in result.assignment[split]}
        if labels != {0, 1}:
            raise SplitError(f"split: the {split} split has only label(s) {sorted(labels)}")


def split_records(records: list[Record], config: SplitConfig) -> SplitResult:
    """Whole identity groups to train/val/test: fixed groups first (held-out methods,
    official splits), then the free ones, largest first (seeded ties), each to the split
    whose per-source quota it fills best."""
    fake_sources = {r.source for r in records if r.label == 1}
    unknown = sorted(set(config.holdout_methods) - fake_sources)
    if unknown:
        raise SplitError(
            f"split.holdout_methods: {unknown} not among the fake methods in the data "
            f"({sorted(fake_sources)})"
        )

    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[record.group].append(record)
    quota = _quota(records, config)
    filled: Counter = Counter()
    placed: dict[str, str] = {}
    result = SplitResult(assignment={split: [] for split in SPLITS})

    for name, members in groups.items():
        fixed = _fixed_split(members, config)
        if fixed is None:
            continue
        placed[name] = fixed
        result.moved_to_test += sum(1 for r in members if r.official_split and r.official_split != fixed)
        for record in members:
            filled[(fixed, record.source)] += 1

    free = [name for name in groups if name not in placed]
    rng = np.random.default_rng(config.seed)
    tie_break = dict(zip(sorted(free), rng.permutation(len(free)).tolist()))
    free.sort(key=lambda name: (-len(groups[name]), tie_break[name]))
    for name in free:
        counts = Counter(r.source for r in groups[name])
        best = max(SPLITS, key=lambda split: (_fill_score(split, counts, quota, filled), -SPLITS.index(split)))
        placed[name] = best
        for source, count in counts.items():
            filled[(best, source)] += count

    for name, members in groups.items():
        result.assignment[placed[name]].extend(members)
    for split in SPLITS:
        result.assignment[split].sort(key=lambda r: r.path)
    _check_splits(result, len(records), len(groups))
    return result


@dataclass
class SplitOutcome:
    result: SplitResult
    bad_files: list[str]  # "path: reason"
    hidden_files: list[str]
    small_images: list[str] = field(default_factory=list)  # "path: W x H px ..." (skipped)
    min_image_size: int = 0
    duplicates_dropped: list[str] = field(default_factory=list)  # "path: why" (skipped)
    duplicate_groups: int = 0
    label_conflicts: int = 0
    near_duplicates: NearDuplicates | None = None

    def metrics(self, holdout: list[str]) -> dict:
        counts: dict = {}
        for split, records in self.result.assignment.items():
            by_source = Counter(r.source for r in records)
            counts[split] = {
                "total": len(records),
                "real": sum(1 for r in records if r.label == 0),
                "fake": sum(1 for r in records if r.label == 1),
                "groups": len({r.group for r in records}),
                "by_source": dict(sorted(by_source.items())),
            }
        return {
            **counts,
            "holdout_methods": sorted(holdout),
            "skipped_bad_files": len(self.bad_files),
            "ignored_hidden_files": len(self.hidden_files),
            "moved_to_test": self.result.moved_to_test,
            "bad_files": self.bad_files[:50],
            "min_image_size": self.min_image_size,
            "skipped_small_images": len(self.small_images),
            "small_images": self.small_images[:50],
            "exact_duplicates": {"groups": self.duplicate_groups, "dropped": len(self.duplicates_dropped),
                                 "label_conflicts": self.label_conflicts, "files": self.duplicates_dropped[:50]},
            "near_duplicates": self.near_duplicates.as_dict() if self.near_duplicates else None,
        }


MIN_IMAGE_SIZE = DataConfig.model_fields["min_image_size"].default


def build_splits(raw_dir: str, config: SplitConfig, on_bad_file: str, progress: bool = True,
                 min_image_size: int = MIN_IMAGE_SIZE) -> SplitOutcome:
    """Scan raw_dir, decode every image (and mask) once, check the content, then split
    what passed and report near-duplicates across the splits.

    Refused (each a StageError listing every file) when on_bad_file == 'error', left out
    and counted with 'skip': files that do not decode, masks of another size than their
    image, images under `min_image_size` px on a side, and exact copies (by SHA-256; skip
    keeps the first copy of each group, none where the copies carry both labels).
    """
    records, hidden = scan(raw_dir)
    good: list[Record] = []
    bad: list[str] = []
    mismatched: list[str] = []  # masks whose size differs from their image's
    small: list[str] = []
    prints: dict[str, Fingerprint] = {}
    for record in bar(records, desc="decode", unit="img", disable=not progress):
        try:
            image = open_rgb(record.path)
            if record.mask_path:
                problem = mask_size_problem(record.mask_path, open_rgb(record.mask_path).size, record.path, image.size)
                if problem:
                    mismatched.append(problem)
                    continue
            prints[record.path] = Fingerprint(content_hash(record.path), dhash(image))
        except BadImageError as error:
            bad.append(str(error))
            continue
        except OSError as error:  # the file went away or became unreadable after the decode
            bad.append(f"{record.path}: cannot read ({error.strerror or error})")
            continue
        if min(image.size) < min_image_size:
            small.append(f"{record.path}: {image.size[0]}x{image.size[1]} px, under data.min_image_size "
                         f"({min_image_size} px on a side)")
            continue
        good.append(record)
    if bad and on_bad_file == "error":
        raise BadDataError(
            f"{len(bad)} unreadable file(s) under {raw_dir} (set data.on_bad_file: skip to "
            f"leave them out):\n  {_listing(bad)}"
        )
    if mismatched and on_bad_file == "error":
        raise MaskSizeError(
            f"{len(mismatched)} mask(s) under {raw_dir} differ in size from their image; {MASK_SIZE_HINT} "
            f"(or set data.on_bad_file: skip to leave those images out):\n  {_listing(mismatched)}"
        )
    if small and on_bad_file == "error":
        raise SmallImageError(
            f"{len(small)} image(s) under {raw_dir} are smaller than data.min_image_size ({min_image_size} px): "
            "upscaled to data.image_size they hold no detail to learn from (lower data.min_image_size, or set "
            f"data.on_bad_file: skip to leave them out):\n  {_listing(small)}"
        )
    groups = exact_duplicate_groups(good, prints)
    if groups and on_bad_file == "error":
        raise DuplicateImageError(
            f"{len(groups)} group(s) of identical files (the same bytes) under {raw_dir}: a copy could be trained "
            "on and tested on, or carry both labels. Delete the copies (or set data.on_bad_file: skip to keep "
            f"the first of each group, none where the copies carry both labels):\n  "
            f"{_listing([describe(group) for group in groups])}"
        )
    deduplicated = drop_duplicates(good, groups)
    result = split_records(deduplicated.kept, config)
    return SplitOutcome(result, bad + mismatched, hidden, small, min_image_size, deduplicated.dropped,
                        deduplicated.groups, deduplicated.label_conflicts,
                        near_duplicates_across_splits(result.assignment, prints))


def _listing(lines: list[str], limit: int = 100) -> str:
    return "\n  ".join(lines[:limit]) + ("\n  ..." if len(lines) > limit else "")


class BadDataError(StageError, ValueError):
    """Some raw files cannot be decoded; str() lists them."""


class SmallImageError(StageError, ValueError):
    """Some raw images are under data.min_image_size; str() lists them."""


class DuplicateImageError(StageError, ValueError):
    """Some raw files are byte-for-byte copies of each other; str() lists the groups."""

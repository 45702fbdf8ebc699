"""Turn a DFFD download into the raw layout (see layout.py).

DFFD (Dang et al., CVPR 2020) ships per-source folders with train/validation/test
subfolders and `R_`/`F_` file prefixes; CelebA comes without split folders. The ingest
links (or copies, optionally resized) every image into data/raw/{real,fake}/<source>/,
keeps DFFD's own split in data/raw/metadata.csv (the split stage honours it), and writes
all-ones masks for whole-image synthesis methods, whose manipulation mask is the whole
image by definition. The public archives have no masks for partial edits: those methods
get none, and localization IINC skips them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from robust_deepfake.data.images import IMAGE_SUFFIXES, BadImageError, open_rgb
from robust_deepfake.data.layout import METADATA_FILE, group_of
from robust_deepfake.errors import StageError
from robust_deepfake.io import write_csv

SPLIT_FOLDERS = {"train": "train", "validation": "val", "val": "val", "test": "test"}
REAL_FOLDERS = {"ffhq", "celeba", "celeb_a", "real"}
WHOLE_IMAGE_HINTS = ("stylegan", "pggan", "progan")


class IngestError(StageError, ValueError):
    """The DFFD tree cannot be ingested; str() names the path."""


@dataclass
class IngestReport:
    out_dir: Path
    counts: Counter = field(default_factory=Counter)  # (kind, source, split) -> n
    masks_written: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"ingested into {self.out_dir}:"]
        by_source: dict[tuple[str, str], Counter] = {}
        for (kind, source, split), n in sorted(self.counts.items()):
            by_source.setdefault((kind, source), Counter())[split or "unsplit"] += n
        for (kind, source), splits in by_source.items():
            detail = ", ".join(f"{split} {n}" for split, n in sorted(splits.items()))
            lines.append(f"  {kind}/{source}: {detail}")
        lines.append(f"  whole-image masks written: {self.masks_written}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} unreadable file(s), e.g. {self.skipped[0]}")
        return "\n".join(lines)


def _label(path: Path, source: str) -> str:
    name = path.name
    if name.startswith("R_"):
        return "real"
    if name.startswith("F_"):
        return "fake"
    return "real" if source in REAL_FOLDERS else "fake"


def _split_of(path: Path, source_dir: Path) -> str:
    for part in path.relative_to(source_dir).parts[:-1]:
        if part.lower() in SPLIT_FOLDERS:
            return SPLIT_FOLDERS[part.lower()]
    return ""


def _normalise(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


@dataclass
class _IngestRun:
    """One ingest into `staging`: how files are placed, and what has been gathered so far."""

    staging: Path
    mode: str  # symlink | copy
    resize: int | None
    verify: bool
    report: IngestReport
    seen: dict[str, Path] = field(default_factory=dict)  # raw-layout path -> its DFFD file
    metadata: list[dict[str, str]] = field(default_factory=list)  # the rows of metadata.csv


def _place(run: _IngestRun, path: Path, destination: Path) -> tuple[int, int] | None:
    """Link, copy or resize `path` to `destination`; the image size where it was decoded
    (resize, verify), else None. BadImageError for a file that does not decode."""
    if run.resize is not None:
        image = open_rgb(path).resize((run.resize, run.resize), Image.Resampling.BICUBIC)
        image.save(destination, format="PNG")
        return image.size
    size = open_rgb(path).size if run.verify else None
    if run.mode == "symlink":
        destination.symlink_to(path.resolve())
    else:
        shutil.copy2(path, destination)
    return size


def _ingest_file(run: _IngestRun, path: Path, source_dir: Path, source: str, whole: bool) -> None:
    """Place one DFFD image into the raw layout, with an all-ones mask for a whole-image
    fake, and count it; an unreadable file is skipped and reported."""
    kind = _label(path, source)
    split = _split_of(path, source_dir)
    name = path.name if run.resize is None else path.with_suffix(".png").name
    relative = f"{kind}/{source}/{name}"
    if relative in run.seen:
        raise IngestError(f"two files map to {relative}: {run.seen[relative]} and {path}")
    run.seen[relative] = path
    destination = run.staging / relative
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        size = _place(run, path, destination)
    except BadImageError as error:
        run.report.skipped.append(str(error))
        return
    if kind == "fake" and whole:
        if size is None:
            size = open_rgb(path).size
        mask_path = run.staging / "masks" / source / (Path(name).stem + ".png")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size[1], size[0]), 255, np.uint8)).save(mask_path)
        run.report.masks_written += 1
    run.report.counts[(kind, source, split)] += 1
    run.metadata.append({"path": relative, "group": f"{source}/{group_of(name)}", "split": split})


def ingest_dffd(
    dffd_root: str | Path,
    out_dir: str | Path,
    mode: str = "symlink",
    resize: int | None = None,
    whole_image_methods: set[str] | None = None,
    force: bool = False,
    verify: bool = True,
) -> IngestReport:
    """Build the raw layout from a DFFD tree.

    mode: `symlink` (no copy; `data track` then moves the targets into the DVC cache by
    hard link where it can, so the data stays on disk once) or `copy`; `resize`
    re-encodes every image as a size x size PNG (implies copy). Existing out_dir is
    refused unless `force`, in which case it is moved aside, not deleted.
    """
    root = Path(dffd_root)
    out_dir = Path(out_dir)
    if not root.is_dir():
        raise IngestError(f"{root}: not a directory")
    if mode not in {"symlink", "copy"}:
        raise IngestError(f"mode must be symlink or copy, got {mode!r}")
    if out_dir.exists():
        if not force:
            raise IngestError(f"{out_dir} exists; pass --force to move it aside first")
        out_dir.rename(out_dir.with_name(f"{out_dir.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}"))

    staging = out_dir.with_name(f".{out_dir.name}.ingest-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    run = _IngestRun(staging, mode, resize, verify, IngestReport(out_dir=out_dir))
    try:
        for source_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            source = _normalise(source_dir.name)
            whole = (source in whole_image_methods if whole_image_methods is not None
                     else any(hint in source for hint in WHOLE_IMAGE_HINTS))
            for path in sorted(source_dir.rglob("*")):
                if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    _ingest_file(run, path, source_dir, source, whole)
        if not run.metadata:
            raise IngestError(f"{root}: no images found (expected <source>/[train|validation|test]/*.png)")
        kinds = {kind for kind, _, _ in run.report.counts}
        if kinds != {"real", "fake"}:
            raise IngestError(f"{root}: found only {sorted(kinds)} images; need both real and fake")
        write_csv(staging / METADATA_FILE, ["path", "group", "split"], run.metadata)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run.report

"""The raw layout every data source is turned into, and its scanner.

```
<raw>/real/<source>/<name>.<ext>        label 0
<raw>/fake/<method>/<name>.<ext>        label 1
<raw>/masks/<method>/<stem>.png         optional ground-truth manipulation mask
<raw>/metadata.csv                      optional: path[,group][,split] overrides
```

Identity (`group`): the file stem without an `R_`/`F_` prefix and without a trailing
`-k` edit suffix, so `id00042.png` and the edit `id00042-1.png` (or DFFD's
`F_FAP0_00000-1.png` and `F_FAP0_00000-2.png`) are one identity. metadata.csv can set
groups and an official split explicitly (the DFFD ingest writes it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from robust_deepfake.data.images import IMAGE_SUFFIXES
from robust_deepfake.errors import StageError

LABELS = {"real": 0, "fake": 1}
SPLITS = ("train", "val", "test")
METADATA_FILE = "metadata.csv"
_EDIT_SUFFIX = re.compile(r"-\d+$")
_PREFIX = re.compile(r"^[RF]_")


class LayoutError(StageError, ValueError):
    """The raw directory does not follow the layout; str() names the path."""


@dataclass(frozen=True)
class Record:
    path: str  # as it will be written to the split CSVs (raw_dir joined, posix)
    label: int
    source: str
    group: str
    mask_path: str  # "" when the method ships no mask
    official_split: str = ""


def group_of(name: str) -> str:
    stem = Path(name).stem
    return _EDIT_SUFFIX.sub("", _PREFIX.sub("", stem))


def _read_metadata(raw_dir: Path) -> dict[str, dict[str, str]]:
    path = raw_dir / METADATA_FILE
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise LayoutError(f"{path}: needs a 'path' column (got {reader.fieldnames})")
        rows: dict[str, dict[str, str]] = {}
        for line, row in enumerate(reader, start=2):
            split = (row.get("split") or "").strip()
            if split and split not in SPLITS:
                raise LayoutError(f"{path}:{line}: split must be one of {SPLITS}, got {split!r}")
            rows[row["path"].strip()] = {"group": (row.get("group") or "").strip(), "split": split}
    return rows


def scan(raw_dir: str | Path) -> tuple[list[Record], list[str]]:
    """All candidate image files under raw_dir, and the hidden files that were ignored.

    Files are not decoded here (the split stage does that once, for every file): any
    non-hidden file in a source folder is a candidate, so a stray non-image is reported
    as bad rather than silently dropped.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise LayoutError(
            f"{raw_dir}: no such directory. Generate the bundled sample with "
            "`robust-deepfake data ensure` (or `make demo`), or ingest DFFD with "
            "`robust-deepfake data ingest-dffd`."
        )
    metadata = _read_metadata(raw_dir)
    records: list[Record] = []
    hidden: list[str] = []
    for kind, label in LABELS.items():
        kind_dir = raw_dir / kind
        if not kind_dir.is_dir():
            raise LayoutError(f"{kind_dir}: missing; expected {raw_dir}/{kind}/<source>/<images>")
        for source_dir in sorted(p for p in kind_dir.iterdir() if p.is_dir()):
            for path in sorted(source_dir.rglob("*")):
                if path.is_dir():
                    continue
                relative = path.relative_to(raw_dir).as_posix()
                if any(part.startswith(".") for part in path.relative_to(raw_dir).parts):
                    hidden.append(relative)
                    continue
                meta = metadata.get(relative, {})
                records.append(
                    Record(
                        path=(raw_dir / relative).as_posix(),
                        label=label,
                        source=source_dir.name,
                        group=meta.get("group") or group_of(path.name),
                        mask_path=_mask_for(raw_dir, source_dir.name, path) if label else "",
                        official_split=meta.get("split", ""),
                    )
                )
    if not records:
        raise LayoutError(f"{raw_dir}: no images found under real/<source>/ or fake/<method>/")
    if not any(r.label == 0 for r in records) or not any(r.label == 1 for r in records):
        raise LayoutError(f"{raw_dir}: need both real and fake images to train a detector")
    return records, hidden


def _mask_for(raw_dir: Path, method: str, image: Path) -> str:
    mask_dir = raw_dir / "masks" / method
    for suffix in (".png", *sorted(IMAGE_SUFFIXES - {".png"})):
        candidate = mask_dir / (image.stem + suffix)
        if candidate.exists():
            return candidate.as_posix()
    return ""

"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, IO


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json(path: str | Path, data: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")


def write_npz(path: str | Path, **arrays: Any) -> None:
    """Compressed numpy arrays (no pickles), written atomically."""
    import numpy as np

    with atomic_open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, fieldnames: list[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)

"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind; and
the numbers JSON and MLflow can hold (`finite_number`, `jsonable`).

Every output of the project is written through `atomic_path` and so gets the mode a
plain `open()` would give it: 0o666 minus the process umask (0644 under umask 022),
not the 0600 of the `tempfile.mkstemp` file it starts as.

The temp file lives in the hidden `.cache/tmp/` of the repository (the nearest folder
with dvc.yaml above the target), not next to the target: a run killed mid-write (where
no `finally` runs) leaves its temp there, never inside a DVC-tracked out. Where there
is no repository above the target, or `.cache/tmp` is on another filesystem (os.replace
is atomic only within one), the temp goes next to the target as a hidden `.<name>.*.tmp`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import numbers
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, IO


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux >= 4.7
    lists it in /proc/self/status). Elsewhere it is swapped out and back under a lock,
    for a moment, to the restrictive 0o077: a file another thread creates in that
    moment gets fewer permissions, never more."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


TEMP_DIR = Path(".cache") / "tmp"  # under the repository root: outside every DVC out


def _repo_root_above(directory: Path) -> Path | None:
    """The nearest directory holding dvc.yaml at or above `directory`, None if none."""
    here = directory.resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return None


def temp_dir_for(path: str | Path) -> Path:
    """Where `atomic_path` puts the temp file for `path`: the repository's `.cache/tmp`
    when it is on the target's filesystem, else the target's own directory."""
    parent = Path(path).parent
    root = _repo_root_above(parent)
    if root is None:
        return parent
    temp = root / TEMP_DIR
    try:
        temp.mkdir(parents=True, exist_ok=True)
        if os.stat(temp).st_dev == os.stat(parent).st_dev:
            return temp
    except OSError:  # read-only checkout, a file named .cache ...
        pass
    return parent


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path (see temp_dir_for); it replaces `path` only if the block succeeds.

    The temp file gets the umask's mode (mkstemp makes it 0600), so the output ends
    up with the same permissions as any file the process creates. An OSError that names
    no file or only the temp file (a full disk while writing or closing it) is raised
    naming `path` instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=temp_dir_for(path))
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, default_file_mode())  # after the block: a writer may recreate the file
        try:
            os.replace(tmp_path, path)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            _replace_across_mounts(tmp_path, path)  # one filesystem, two mounts (a bind mount)
    except OSError as error:
        names_another = error.filename is not None and (tmp_path is None or Path(error.filename) != tmp_path)
        if names_another or isinstance(error, (ConnectionError, TimeoutError)):
            raise
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _replace_across_mounts(tmp_path: Path, path: Path) -> None:
    """os.replace refused (EXDEV): copy into a temp beside the target, then replace there."""
    fd, near = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        shutil.copyfile(tmp_path, near)
        os.chmod(near, default_file_mode())
        os.replace(near, path)
    finally:
        if os.path.exists(near):
            os.unlink(near)


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


def write_csv(path: str | Path, fieldnames: list[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite real number (numpy scalars included), else
    None: NaN, infinities, booleans, None and non-numbers have no place in JSON numbers
    or MLflow metrics."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def jsonable(value: Any) -> Any:
    """Strict JSON: non-finite floats become null (json.dump would write the invalid
    `NaN`), numpy scalars Python ones, tuples lists; mappings get string keys."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

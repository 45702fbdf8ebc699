"""One place to configure progress bars: live in a terminal, sparse in logs."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

_T = TypeVar("_T")


def progress(iterable: Iterable[_T] | None = None, **kwargs: Any) -> tqdm:
    """tqdm that redraws at most every 0.5 s on a terminal and every 10 s in a log file
    (DVC and Prefect capture stage output; a bar per batch would flood them)."""
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 10.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)

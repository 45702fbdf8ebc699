"""One place to configure progress bars: live in a terminal, sparse in logs; in a worker
process, handed to the parent, which draws one line for all its workers."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm import tqdm

_T = TypeVar("_T")
FORWARD_SECONDS = 0.5  # least time between two states a worker's bar hands over

_forward: Callable[[tqdm], None] | None = None


class _Forwarding(tqdm):
    """A bar that draws nothing and hands its state (desc, n, total, postfix) to the
    process's forward callback whenever it would redraw."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if _forward is not None:
            _forward(self)
        return True


def forward_progress(callback: Callable[[tqdm], None] | None) -> None:
    """From now on this process's bars draw nothing and call `callback(bar)` at most every
    FORWARD_SECONDS instead (None: draw again). For worker processes whose parent shows
    their progress."""
    global _forward
    _forward = callback


def progress(iterable: Iterable[_T] | None = None, **kwargs: Any) -> tqdm:
    """tqdm that redraws at most every 0.5 s on a terminal and every 10 s in a log file
    (DVC and Prefect capture stage output; a bar per batch would flood them)."""
    if _forward is not None and not kwargs.get("disable"):
        kwargs.update(mininterval=FORWARD_SECONDS, file=io.StringIO(), dynamic_ncols=False)
        return _Forwarding(iterable, **kwargs)
    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 10.0)
    kwargs.setdefault("dynamic_ncols", interactive)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, **kwargs)

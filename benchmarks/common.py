"""Shared timing helpers for the benchmark scripts (run them on an otherwise idle machine)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_it(step: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median seconds per call after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)

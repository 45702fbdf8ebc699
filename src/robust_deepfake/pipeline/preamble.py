"""What every computing stage body does before its work, in this order: the stage's own
params checks, the tracker's store check (both fail in one line, in seconds, instead of
after hours of work), pinned torch threads, the device."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from robust_deepfake.config import Params
from robust_deepfake.model.device import resolve_device, set_threads
from robust_deepfake.tracking.tracker import Tracker


def open_stage(params: Params, tracker: Tracker, threads: int,
               checks: Sequence[Callable[[Params], None]] = ()) -> torch.device:
    """Run the preamble, pinning torch to `threads` intra-op threads (the stage's own
    params key: train.num_threads, eval.num_threads); returns the device (`train.device`)
    the stage computes on."""
    for check in checks:
        check(params)
    tracker.require()
    set_threads(threads)
    return resolve_device(params.train.device)

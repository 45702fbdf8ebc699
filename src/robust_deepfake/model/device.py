"""Where and how tensors compute: device choice, mixed precision, seeding, thread count.

Kept apart from the detector and the loop because every stage (train, sweep, CAMs,
predict, re-evaluation) needs them and none of those should import the training loop.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from robust_deepfake.errors import StageError


class DeviceError(StageError, RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` -> cuda when available, else cpu; `key` names the setting in the error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{key} is {name!r} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs from one seed (numpy wants < 2**32)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(num_threads: int | None) -> None:
    """Pin torch's intra-op threads: float reductions split differently with another
    thread count, so the same params give the same bytes only at the same count."""
    if num_threads:
        torch.set_num_threads(num_threads)


@dataclass
class Amp:
    """Mixed precision on CUDA: bf16 where supported (no scaler), else fp16 + GradScaler."""

    enabled: bool
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    device_type: str = "cpu"

    @classmethod
    def for_device(cls, device: torch.device, wanted: bool) -> Amp:
        if not wanted or device.type != "cuda":
            return cls(False)
        if torch.cuda.is_bf16_supported():
            return cls(True, torch.bfloat16, device_type=device.type)
        return cls(True, torch.float16, torch.amp.GradScaler("cuda"), device_type=device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler else loss

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


NO_AMP = Amp(False)

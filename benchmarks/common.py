"""Shared helpers for the benchmark scripts (run them on an otherwise idle machine).

Nothing here imports pydantic, MLflow, DVC, Prefect or grad-cam: `benchmarks.gpu_check`
runs on a GPU image that has torch, timm and scikit-learn but not the pipeline's tools.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch

def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument("--device", default=default,
                        help="auto (cuda when available), cpu, cuda or cuda:N (default: %(default)s)")


def resolve_device(name: str) -> torch.device:
    """model.device.resolve_device for `--device`; a missing CUDA device ends the run."""
    from robust_deepfake.model.device import DeviceError
    from robust_deepfake.model.device import resolve_device as resolve

    try:
        return resolve(name, key="--device")
    except DeviceError as error:
        raise SystemExit(str(error)) from None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a timer around CUDA work must, or it times the launch)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return f"torch {torch.__version__} on {device} ({where})"


def time_it(step: Callable[[], object], warmup: int, repeats: int, device: torch.device | None = None,
            budget_s: float | None = None) -> float:
    """Median seconds per call after `warmup` untimed calls; stops early (after at least one
    timed call) once `budget_s` seconds of timed calls have passed."""
    device = device or torch.device("cpu")
    for _ in range(warmup):
        step()
    synchronize(device)
    samples: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        synchronize(device)
        samples.append(time.perf_counter() - started)
        if budget_s is not None and sum(samples) >= budget_s:
            break
    return statistics.median(samples)


def figure(name: str, value: float | None, unit: str, target: str | None = None, **extra) -> dict:
    """One measured figure; `target` is '>= x', '<= x' or None (for information), and
    `pass` is whether value meets it (None without a target or a value)."""
    passed = None
    if target is not None and value is not None and not (isinstance(value, float) and math.isnan(value)):
        op, bound = target.split()
        passed = value >= float(bound) if op == ">=" else value <= float(bound)
    if isinstance(value, float):
        value = round(value, 4)
    return {"name": name, "value": value, "unit": unit, "target": target, "pass": passed, **extra}


def emit(record: dict, stream=None) -> None:
    """One figure as one JSON line (stdout by default), flushed at once."""
    print(json.dumps(record, sort_keys=False), file=stream or sys.stdout, flush=True)


def synthetic_images(n: int, image_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, S, S) and balanced int64 labels, seeded."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 3, image_size, image_size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    return pixels, labels[torch.randperm(n, generator=generator)]


def in_memory_set(n: int, image_size: int, seed: int = 0):
    """An ImageSet whose pixels are already decoded in RAM: the stages' cached path
    (data.cache_max_mb) without files on disk."""
    from robust_deepfake.data.dataset import ImageSet, SplitRow

    pixels, labels = synthetic_images(n, image_size, seed)
    samples = [SplitRow("", int(label), "synthetic", f"g{i}", "") for i, label in enumerate(labels)]
    dataset = ImageSet(samples, image_size, cache=False)
    dataset.pixels = pixels
    return dataset

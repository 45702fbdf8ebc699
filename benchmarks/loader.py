"""Decode throughput of the streaming data path (splits over data.cache_max_mb, e.g.
DFFD): images/s of the training loop's `data.loader.BatchLoader` over a folder of JPEGs
with num_workers 0, 2, 4, 8, ... (up to the CPUs this process may use).

The loader is built as `fit` builds it (persistent workers, 2 batches ahead each; with
0 workers one background thread; pinned when CUDA is there) and makes uint8 batches,
decoded and resized by `data.images.load_rgb_array`. Each figure is its second pass (an
epoch after the first: the workers are up); the first pass, worker start-up included,
is printed beside it. Without --folder, --n-images 256 px JPEGs (smooth colour fields
with grain, quality 90) are generated into a temporary folder and removed afterwards.

    python -m benchmarks.loader [--n-images 1024] [--image-size 224] [--workers 0 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers(cpus: int | None = None) -> list[int]:
    """0, then powers of two up to the CPU count (0, 2, 4, 8, ...)."""
    cpus = cpus or available_cpus()
    workers, n = [0], 2
    while n <= cpus:
        workers.append(n)
        n *= 2
    return workers


def write_jpegs(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[Path]:
    """`n` seeded size x size JPEGs: low-frequency colour fields plus grain, so files and
    decode cost are close to real photos' (pure noise would decode slower, flat colour faster)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    grid = np.linspace(0, 1, size, dtype=np.float32)
    for i in range(n):
        coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.float32)
        field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC),
                           dtype=np.float32)
        shade = 40 * np.sin(6 * grid[:, None] + i)[..., None] * np.cos(4 * grid[None, :])[..., None]
        grain = rng.normal(0, 8, (size, size, 3)).astype(np.float32)
        pixels = np.clip(field + shade + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def decode_rate(paths: list[Path], image_size: int, batch_size: int, num_workers: int,
                pin_memory: bool | None = None) -> tuple[float, float]:
    """Images/s of the first and of the second pass of a `BatchLoader` over `paths`."""
    import torch

    from robust_deepfake.data.dataset import ImageSet, SplitRow
    from robust_deepfake.data.loader import BatchLoader

    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    samples = [SplitRow(str(p), i % 2, "synthetic", f"g{i}", "") for i, p in enumerate(paths)]
    dataset = ImageSet(samples, image_size, cache=False)
    rates = []
    with BatchLoader(dataset, batch_size, num_workers=num_workers, pin_memory=pin_memory) as loader:
        for epoch in range(2):
            started = time.perf_counter()
            seen = sum(len(batch.labels) for batch in loader.batches(shuffle=True, seed=epoch))
            rates.append(seen / (time.perf_counter() - started))
    return rates[0], rates[1]


def measure(n_images: int, image_size: int, batch_size: int, workers: list[int], folder: Path | None = None,
            jpeg_size: int = 256) -> dict[int, tuple[float, float]]:
    """{num_workers: (first-pass, second-pass images/s)}, on `folder`'s images or generated JPEGs."""
    made = folder is None
    if made:
        folder = Path(tempfile.mkdtemp(prefix="loader-bench-"))
        paths = write_jpegs(folder, n_images, jpeg_size)
    else:
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:n_images]
        if not paths:
            raise SystemExit(f"{folder}: no .jpg/.jpeg/.png files")
    try:
        return {w: decode_rate(paths, image_size, batch_size, w) for w in workers}
    finally:
        if made:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=None, help="JPEG/PNG folder to read (default: generate JPEGs)")
    parser.add_argument("--n-images", type=int, default=1024)
    parser.add_argument("--jpeg-size", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="decoded and resized to (data.image_size)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, nargs="+", default=None,
                        help="num_workers values (default: 0 and powers of two up to the CPU count)")
    args = parser.parse_args()
    workers = args.workers or default_workers()
    print(f"{available_cpus()} CPUs, {args.n_images} images, decoded to {args.image_size} px, batch {args.batch_size}")
    rates = measure(args.n_images, args.image_size, args.batch_size, workers,
                    Path(args.folder) if args.folder else None, args.jpeg_size)
    for w, (first, later) in rates.items():
        print(f"num_workers {w:2d}: {later:8.0f} img/s   (first pass, start-up included: {first:.0f} img/s)")
    best = max(rates, key=lambda w: rates[w][1])
    print(f"best: num_workers {best} ({rates[best][1]:.0f} img/s); data.num_workers sets it for streamed splits")


if __name__ == "__main__":
    main()

"""Batches on their way to the model: uint8 on the host, float only on the device.

A float32 batch is four times the bytes of its uint8 pixels; converting on the host and
copying from pageable memory stalls a GPU's training loop (measured: 21.9 ms per 128 x
224 px batch, against 4.3 ms for a pinned uint8 copy converted on the GPU). So:

- host side: uint8 batches, gathered from the in-RAM cache or decoded from disk (in
  `num_workers` DataLoader worker processes when the split streams), pinned when the
  device is CUDA so that `.to(device, non_blocking=True)` is an asynchronous copy;
- overlap: the next `prefetch` batches are made while the current one trains (a
  background thread, or the workers' own prefetching);
- device side: `data.images.unit_float` turns uint8 into float [0, 1] with the same bits
  on every device (`to_device` in model/training.py also applies the flips there).

The batch order is `batch_order`'s: a permutation drawn from a generator seeded with the
epoch's seed, whatever the worker count or device; the images are the same bytes
whichever way they travel (tests/test_input_path.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.utils.data import DataLoader, Sampler

from robust_deepfake.data.dataset import ImageSet
from robust_deepfake.data.images import unit_float

_Item = TypeVar("_Item")


@dataclass
class Batch:
    images: torch.Tensor  # float32 (N, 3, S, S) in [0, 1]; uint8 in [0, 255] where asked for
    labels: torch.Tensor  # int64 (N,)
    indices: torch.Tensor  # int64 (N,) positions in the split


def batch_order(n: int, shuffle: bool = False, seed: int = 0, indices: torch.Tensor | None = None) -> torch.Tensor:
    """Positions in the order they are batched: `indices` (default all n), permuted by a
    generator seeded with `seed` when `shuffle`."""
    order = indices if indices is not None else torch.arange(n)
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        order = order[torch.randperm(len(order), generator=generator)]
    return order


def split_batches(order: torch.Tensor, batch_size: int, drop_last: bool = False) -> list[torch.Tensor]:
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def prefetched(items: Iterator[_Item], depth: int) -> Iterator[_Item]:
    """`items` in the same order, made up to `depth` ahead in a background thread (torch
    and PIL release the GIL while they copy and decode). An error in the thread is
    raised here; leaving the loop early stops the thread."""
    if depth <= 0:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            offer(_Failure(error))

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def _pin(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.pin_memory()


class _PassBatches(Sampler):
    """The batches of the current pass: a persistent DataLoader keeps its workers and
    asks this for each pass's batches anew."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchLoader:
    """uint8 batches of one split, pass after pass (one per epoch).

    A split cached in RAM is gathered from there (workers would only copy it). A
    streamed split is decoded by `num_workers` DataLoader worker processes, kept alive
    across passes when `persistent` and making `prefetch` batches ahead each; with no
    workers it is decoded in one background thread. `prefetch` batches are made ahead
    in that thread (0: none, everything in the caller's thread). `pin_memory` (for CUDA)
    pins each batch where it is made. Close it (or use it as a context manager) to stop
    persistent workers.
    """

    def __init__(self, dataset: ImageSet, batch_size: int, *, num_workers: int = 0, pin_memory: bool = False,
                 prefetch: int = 2, drop_last: bool = False, persistent: bool = True) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.pin_memory = pin_memory
        self.prefetch = prefetch
        self.drop_last = drop_last
        self._pass = _PassBatches()
        self._loader: DataLoader | None = None
        if dataset.pixels is None and num_workers > 0:
            self._loader = DataLoader(
                dataset, batch_sampler=self._pass, num_workers=num_workers, pin_memory=pin_memory,
                prefetch_factor=max(prefetch, 1), persistent_workers=persistent,
                # DataLoader draws its workers' base seed from this generator, else from
                # the global one that dropout uses: results would change with num_workers
                generator=torch.Generator().manual_seed(0),
            )

    def batches(self, shuffle: bool = False, seed: int = 0, indices: torch.Tensor | None = None) -> Iterator[Batch]:
        """One pass in `batch_order(shuffle, seed, indices)`; images uint8 (N, 3, S, S)."""
        chunks = split_batches(batch_order(len(self.dataset), shuffle, seed, indices), self.batch_size,
                               self.drop_last)
        if self._loader is not None:
            self._pass.batches = [chunk.tolist() for chunk in chunks]
            for images, labels, positions in self._loader:
                yield Batch(images, labels, positions)
            return
        device = torch.cuda.current_device() if self.pin_memory else None
        yield from prefetched(self._host_batches(chunks, device), self.prefetch)

    def _host_batches(self, chunks: list[torch.Tensor], device: int | None) -> Iterator[Batch]:
        if device is not None:  # runs in the prefetch thread: pin for the caller's GPU
            torch.cuda.set_device(device)
        for chunk in chunks:
            images, labels = self.dataset.pixels_at(chunk), self.dataset.labels[chunk]
            if self.pin_memory:
                images, labels = _pin(images), _pin(labels)
            yield Batch(images, labels, chunk)

    def close(self) -> None:
        loader, self._loader = self._loader, None
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iterate(
    dataset: ImageSet,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    uint8: bool = False,
) -> Iterator[Batch]:
    """Batches in a seeded order; the same (seed, indices) always gives the same batches.
    Images are float [0, 1], or uint8 with `uint8` (make them float with `unit_float`).
    Made in the caller's thread (or by `num_workers` processes when streaming); the
    training loop's `BatchLoader` also makes them ahead, pinned for CUDA."""
    loader = BatchLoader(dataset, batch_size, num_workers=num_workers, prefetch=2 if num_workers else 0,
                         drop_last=drop_last, persistent=False)
    for batch in loader.batches(shuffle, seed, indices):
        yield batch if uint8 else Batch(unit_float(batch.images), batch.labels, batch.indices)

"""The input path (data/loader.py, data.images.unit_float, training.to_device): batches
come in a seeded permutation of the split, hold the dataset's images at those positions
whether cached, streamed, prefetched or decoded by worker processes, turn uint8 into the
correctly rounded float32 of k/255, and reach the training step flipped by the epoch
generator's draws; the trained weights do not depend on the loader.

Machine-independent: every comparison is between two computations on this machine (or an
exact rational oracle), never against stored hashes."""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

import pytest
import torch

from robust_deepfake.config import RegConfig, TrainConfig, validate
from robust_deepfake.data import loader as loader_module
from robust_deepfake.data.dataset import ImageSet, load_split
from robust_deepfake.data.images import by_table, unit_float
from robust_deepfake.data.loader import BatchLoader, batch_order, iterate, prefetched, split_batches
from robust_deepfake.model import training
from robust_deepfake.model.detector import build_detector
from robust_deepfake.model.device import seed_everything
from robust_deepfake.model.training import EPOCH_SEED_STRIDE, fit, to_device, train_subset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cached(splits: Path) -> ImageSet:
    return load_split(splits, "train", 32, 64)


@pytest.fixture(scope="module")
def streamed(splits: Path) -> ImageSet:
    dataset = load_split(splits, "train", 32, 0)
    assert dataset.pixels is None
    return dataset


def _expected_batches(dataset: ImageSet, batch_size: int, shuffle: bool, seed: int, indices=None, drop_last=False):
    """(float images, labels, positions) of each batch: the dataset's own images at
    batch_order's positions, cut by split_batches."""
    for chunk in split_batches(batch_order(len(dataset), shuffle, seed, indices), batch_size, drop_last):
        yield dataset.images(chunk), dataset.labels[chunk], chunk


def _nearest_float32(numerator: int, denominator: int) -> float:
    """The float32 nearest to numerator/denominator (ties to even), from exact rationals."""
    exact = Fraction(numerator, denominator)
    guess = np.float32(numerator / denominator)
    candidates = [np.nextafter(guess, np.float32(-1)), guess, np.nextafter(guess, np.float32(2))]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(c.view(np.uint32)) % 2))
    return float(best)


# --- uint8 -> float ------------------------------------------------------------------


def test_unit_float_is_the_correctly_rounded_k_over_255_for_every_value():
    every_value = torch.arange(256, dtype=torch.uint8)
    exact = torch.tensor([_nearest_float32(k, 255) for k in range(256)], dtype=torch.float32)
    for convert in (unit_float, by_table):  # by_table: the lookup every device but the CPU uses
        out = convert(every_value)
        assert out.dtype == torch.float32 and torch.equal(out, exact)
    images = torch.randint(0, 256, (5, 3, 7, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(unit_float(images), exact[images.long()])


def test_flipping_the_uint8_pixels_then_converting_is_exact(cached):
    chunk = torch.arange(12)
    flip = torch.rand(12, generator=torch.Generator().manual_seed(3)) < 0.5
    assert flip.any() and not flip.all()
    expected = cached.images(chunk)
    expected = torch.where(flip[:, None, None, None], expected.flip(3), expected)
    batch = next(BatchLoader(cached, 12, prefetch=0).batches())
    images, labels = to_device(batch, torch.device("cpu"), flip)
    assert torch.equal(images, expected) and torch.equal(labels, cached.labels[chunk])
    assert batch.images.dtype == torch.uint8 and torch.equal(batch.images, cached.pixels[chunk]), \
        "the cache is never flipped in place"


# --- order and batches ---------------------------------------------------------------


def test_batch_order_is_a_permutation_seeded_by_the_epoch_seed():
    indices = torch.tensor([3, 5, 8, 13, 21, 34, 55, 89, 144, 233])
    assert torch.equal(batch_order(100, False, 7, indices), indices)
    assert torch.equal(batch_order(6), torch.arange(6))
    orders = {seed: batch_order(100, True, seed, indices) for seed in (0, 1, 10007)}
    for seed, order in orders.items():
        assert sorted(order.tolist()) == indices.tolist()
        assert torch.equal(batch_order(100, True, seed, indices), order)  # the seed alone fixes it
    assert len({tuple(order.tolist()) for order in orders.values()}) == len(orders)


@pytest.mark.parametrize("drop_last", [False, True])
def test_split_batches_cuts_the_order_in_turn(drop_last):
    order = torch.tensor([9, 2, 7, 4, 1, 8, 3])
    chunks = split_batches(order, 3, drop_last)
    assert [c.tolist() for c in chunks] == [[9, 2, 7], [4, 1, 8]] + ([] if drop_last else [[3]])


@pytest.mark.parametrize("which", ["cached", "streamed"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_hold_the_images_at_the_batch_order_with_or_without_prefetching(request, which, prefetch):
    dataset = request.getfixturevalue(which)
    indices = train_subset(len(dataset), TrainConfig(max_train_samples=29), 0)
    expected = list(_expected_batches(dataset, 8, True, 5, indices))
    batches = list(BatchLoader(dataset, 8, prefetch=prefetch).batches(shuffle=True, seed=5, indices=indices))
    assert len(batches) == len(expected) == 4
    for batch, (images, labels, chunk) in zip(batches, expected, strict=True):
        assert batch.images.dtype == torch.uint8
        assert torch.equal(unit_float(batch.images), images)
        assert torch.equal(batch.labels, labels) and torch.equal(batch.indices, chunk)


def test_iterate_gives_float_batches_or_the_same_images_as_uint8(cached):
    expected = list(_expected_batches(cached, 10, True, 2))
    floats = list(iterate(cached, 10, shuffle=True, seed=2))
    raw = list(iterate(cached, 10, shuffle=True, seed=2, uint8=True))
    for batch, as_uint8, (images, labels, chunk) in zip(floats, raw, expected, strict=True):
        assert torch.equal(batch.images, images) and torch.equal(batch.indices, chunk)
        assert as_uint8.images.dtype == torch.uint8 and torch.equal(unit_float(as_uint8.images), images)


def _recording_data_loaders(monkeypatch) -> list[dict]:
    """Record the keyword arguments of every DataLoader the loader module makes."""
    made = []
    real = loader_module.DataLoader

    def recording(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(loader_module, "DataLoader", recording)
    return made


def test_worker_processes_decode_the_same_batches_pass_after_pass(streamed, monkeypatch):
    """data.num_workers > 0 on a streamed split: worker processes decode the batches of
    the batch order, on every pass of the persistent workers, and the global RNG
    (dropout's) is not touched by the DataLoader."""
    made = _recording_data_loaders(monkeypatch)
    with BatchLoader(streamed, 8, num_workers=2) as loader:
        assert [kwargs["num_workers"] for kwargs in made] == [2]
        for seed in (0, 1):
            torch.manual_seed(123)
            state = torch.get_rng_state()
            batches = list(loader.batches(shuffle=True, seed=seed))
            assert torch.equal(torch.get_rng_state(), state), "the DataLoader drew from the global RNG"
            expected = list(_expected_batches(streamed, 8, True, seed))
            assert len(batches) == len(expected)
            for batch, (images, labels, chunk) in zip(batches, expected, strict=True):
                assert torch.equal(unit_float(batch.images), images)
                assert torch.equal(batch.labels, labels) and torch.equal(batch.indices, chunk)


def test_a_cached_split_is_gathered_in_process_whatever_num_workers(cached, monkeypatch):
    made = _recording_data_loaders(monkeypatch)
    batches = list(BatchLoader(cached, 8, num_workers=2).batches())
    assert made == [] and len(batches) == -(-len(cached) // 8)


def test_pinning_is_applied_where_the_batch_is_made(cached, monkeypatch):
    """pin_memory (the CUDA case; this machine may have no GPU): images and labels of
    every batch are pinned in the prefetch thread, not in the training thread."""
    pinned = []

    def fake_pin(tensor):
        pinned.append((tensor.dtype, threading.current_thread().name))
        return tensor.clone()

    monkeypatch.setattr(loader_module, "_pin", fake_pin)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    batches = list(BatchLoader(cached, 16, pin_memory=True).batches())
    assert len(pinned) == 2 * len(batches)
    assert {dtype for dtype, _ in pinned} == {torch.uint8, torch.int64}
    assert {name for _, name in pinned} == {"batch-prefetch"}


# --- the prefetch thread -------------------------------------------------------------


def test_prefetched_keeps_order_and_raises_the_threads_error():
    assert list(prefetched(iter(range(50)), 3)) == list(range(50))
    assert list(prefetched(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield 1
        raise ValueError("bad image")

    seen = []
    with pytest.raises(ValueError, match="bad image"):
        for item in prefetched(failing(), 2):
            seen.append(item)
    assert seen == [1]


def test_leaving_a_prefetched_loop_early_stops_its_thread():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = {t.ident for t in threading.enumerate()}
    stream = prefetched(endless(), 2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
            t.name == "batch-prefetch" and t.ident not in before for t in threading.enumerate()):
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == "batch-prefetch" and t.ident not in before]


# --- the training loop ---------------------------------------------------------------


def _tiny_fit(splits: Path, reg: RegConfig | None, cache_mb: int = 64, num_workers: int = 0, **train):
    train_set = load_split(splits, "train", 32, cache_mb)
    val_set = load_split(splits, "val", 32, cache_mb)
    config = TrainConfig(**{"seeds": [0], "epochs": 1, "batch_size": 12, "max_train_samples": 37,
                            "num_threads": 1, "device": "cpu", **train})
    seed_everything(0)
    model = build_detector(validate({}).model, split_at=2)
    result = fit(model, train_set, val_set, config, reg, torch.device("cpu"), seed=0, show_progress=False,
                 num_workers=num_workers)
    return result, train_set, config


@pytest.mark.parametrize("reg", [None, RegConfig(epsilon=0.2, mode="random")], ids=["baseline", "reg"])
def test_each_step_gets_its_batch_flipped_by_the_epoch_generators_next_draw(splits, monkeypatch, reg):
    """37 images in batches of 12: three steps, and a batch of one that is skipped
    without a draw. Each step sees exactly the dataset's float images at the batch
    order's positions, flipped where the flip mask says, and each flip mask is the epoch
    generator's next draw after the previous step's own draws (on the CPU the
    perturbation shares the generator)."""
    real_step = training.training_step
    steps = []

    def recording_step(model, images, labels, criterion, reg, generator=None, amp=training.NO_AMP):
        before = generator.get_state()
        losses = real_step(model, images, labels, criterion, reg, generator=generator, amp=amp)
        steps.append((images.clone(), labels.clone(), before, generator.get_state()))
        return losses

    flips = []
    real_to_device = training.to_device

    def recording_to_device(batch, device, flip=None):
        flips.append(flip)
        return real_to_device(batch, device, flip)

    monkeypatch.setattr(training, "training_step", recording_step)
    monkeypatch.setattr(training, "to_device", recording_to_device)
    result, train_set, config = _tiny_fit(splits, reg)
    flips = flips[: len(steps)]  # then the validation pass (no flips)

    epoch_seed = 0 * EPOCH_SEED_STRIDE + 0
    expected = [b for b in _expected_batches(train_set, 12, True, epoch_seed,
                                             train_subset(len(train_set), config, 0))
                if len(b[1]) >= 2]
    assert len(steps) == len(expected) == 3
    generator = torch.Generator().manual_seed(epoch_seed)
    for (images, labels, state_before, state_after), flip, (batch_images, batch_labels, _) in zip(
            steps, flips, expected, strict=True):
        expected_flip = torch.rand(len(batch_labels), generator=generator) < 0.5
        assert torch.equal(flip, expected_flip)
        assert torch.equal(generator.get_state(), state_before), "the flip draw is the only draw before the step"
        flipped = torch.where(expected_flip[:, None, None, None], batch_images.flip(3), batch_images)
        assert torch.equal(images, flipped) and torch.equal(labels, batch_labels)
        generator.set_state(state_after)  # then the step's own draws (reg)
    assert len(result.history) == 1


def test_results_do_not_depend_on_the_loader(splits):
    """Cached, streamed in this process (prefetch thread) and streamed by two worker
    processes: the same weights and history to the last bit (2 epochs: persistent
    workers serve the second pass)."""
    runs = [_tiny_fit(splits, None, cache_mb=64, epochs=2, max_train_samples=24)[0],
            _tiny_fit(splits, None, cache_mb=0, epochs=2, max_train_samples=24)[0],
            _tiny_fit(splits, None, cache_mb=0, num_workers=2, epochs=2, max_train_samples=24)[0]]
    timing = ("seconds", "images_per_s")
    first = runs[0]
    for other in runs[1:]:
        assert [{k: v for k, v in r.items() if k not in timing} for r in other.history] == \
               [{k: v for k, v in r.items() if k not in timing} for r in first.history]
        assert all(torch.equal(other.best_state[k], v) for k, v in first.best_state.items())


def test_the_epoch_reads_the_device_once_whatever_the_step_count(splits, monkeypatch):
    """No host read per step: with the progress bar off, one read of all the running sums
    at the end of the epoch (the optimizer's step counters live on the host and are not
    counted: reading them is no device sync)."""
    reads = []
    counting = threading.local()
    originals = {}

    def counter(name):
        original = getattr(torch.Tensor, name)
        originals[name] = original

        def read(self, *args, **kwargs):
            if getattr(counting, "on", False):
                reads.append(name)
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counter(name))
    real_epoch, real_amp_step = training._train_one_epoch, training.Amp.step

    def counted_epoch(*args, **kwargs):
        counting.on = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            counting.on = False

    def uncounted_optimizer_step(self, optimizer):
        counting.on = False
        try:
            return real_amp_step(self, optimizer)
        finally:
            counting.on = True

    monkeypatch.setattr(training, "_train_one_epoch", counted_epoch)
    monkeypatch.setattr(training.Amp, "step", uncounted_optimizer_step)
    _tiny_fit(splits, RegConfig(epsilon=0.2, mode="random"), max_train_samples=48)  # 4 steps
    assert reads == ["tolist"]

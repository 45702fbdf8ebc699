"""The input path (data/loader.py, training.to_device): uint8 batches made ahead of the
step and made float and flipped on the device give the step the very tensors the old
host-side float path gave it, in the same order, from the same random draws.

Machine-independent: every comparison is between two computations on this machine (the
old path is written out here), never against stored hashes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from robust_deepfake.config import RegConfig, TrainConfig, validate
from robust_deepfake.data import loader as loader_module
from robust_deepfake.data.dataset import ImageSet, iterate, load_split
from robust_deepfake.data.loader import BatchLoader, batch_order, by_table, prefetched, split_batches, unit_float
from robust_deepfake.model import training
from robust_deepfake.model.detector import build_detector
from robust_deepfake.model.device import seed_everything
from robust_deepfake.model.training import EPOCH_SEED_STRIDE, fit, to_device, train_subset
from robust_deepfake.pipeline.split import split


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def splits(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("splits")
    params = validate({"data": {"raw_dir": str(tiny_raw), "splits_dir": str(root / "data" / "splits"),
                                "image_size": 32}})
    split(params, root)
    return root / "data" / "splits"


@pytest.fixture(scope="module")
def cached(splits: Path) -> ImageSet:
    return load_split(splits, "train", 32, 64)


@pytest.fixture(scope="module")
def streamed(splits: Path) -> ImageSet:
    dataset = load_split(splits, "train", 32, 0)
    assert dataset.pixels is None
    return dataset


def _old_batches(dataset: ImageSet, batch_size: int, shuffle: bool, seed: int, indices=None, drop_last=False):
    """The loader before uint8 batches, written out: float [0, 1] made on the host."""
    order = indices if indices is not None else torch.arange(len(dataset))
    if shuffle:
        order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        chunk = order[start : start + batch_size]
        pixels = dataset.pixels[chunk] if dataset.pixels is not None else torch.stack(
            [dataset[int(i)][0] for i in chunk])
        yield pixels.float().div_(255), dataset.labels[chunk], chunk


# --- uint8 -> float ------------------------------------------------------------------


def test_unit_float_equals_the_old_host_conversion_bit_for_bit():
    every_value = torch.arange(256, dtype=torch.uint8)
    old = every_value.float().div_(255)
    assert torch.equal(unit_float(every_value), old)
    assert torch.equal(by_table(every_value), old), "the table other devices look up holds the CPU's values"
    images = torch.randint(0, 256, (5, 3, 7, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for convert in (unit_float, by_table):
        out = convert(images)
        assert out.dtype == torch.float32 and out.shape == images.shape
        assert torch.equal(out, images.float() / 255)


def test_a_reciprocal_multiply_would_not_do():
    """Why a table: x * (1/255), what CUDA computes for `x / 255`, is off in the last bit
    for many values; the table keeps every device on the CPU's bits."""
    values = torch.arange(256).float()
    assert (values * (torch.tensor(1.0) / 255) != values / 255).any()


def test_flipping_the_uint8_pixels_then_converting_is_exact(cached):
    chunk = torch.arange(12)
    flip = torch.rand(12, generator=torch.Generator().manual_seed(3)) < 0.5
    assert flip.any() and not flip.all()
    old = cached.images(chunk)
    old = torch.where(flip[:, None, None, None], old.flip(3), old)
    batch = next(BatchLoader(cached, 12, prefetch=0).batches())
    images, labels = to_device(batch, torch.device("cpu"), flip)
    assert torch.equal(images, old) and torch.equal(labels, cached.labels[chunk])
    assert batch.images.dtype == torch.uint8 and torch.equal(batch.images, cached.pixels[chunk]), \
        "the cache is never flipped in place"


# --- order and batches ---------------------------------------------------------------


@pytest.mark.parametrize("shuffle, drop_last", [(False, False), (True, False), (True, True)])
def test_batch_order_is_the_old_order(shuffle, drop_last):
    indices = torch.tensor([3, 5, 8, 13, 21, 34, 55])
    for seed in (0, 1, 10007):
        order = indices
        if shuffle:
            order = order[torch.randperm(len(order), generator=torch.Generator().manual_seed(seed))]
        stop = len(order) - (len(order) % 3 if drop_last else 0)
        old = [order[s : s + 3] for s in range(0, stop, 3)]
        new = split_batches(batch_order(100, shuffle, seed, indices), 3, drop_last)
        assert [c.tolist() for c in new] == [c.tolist() for c in old]


@pytest.mark.parametrize("which", ["cached", "streamed"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_are_the_old_batches_with_or_without_prefetching(request, which, prefetch):
    dataset = request.getfixturevalue(which)
    indices = train_subset(len(dataset), TrainConfig(max_train_samples=29), 0)
    old = list(_old_batches(dataset, 8, True, 5, indices))
    new = list(BatchLoader(dataset, 8, prefetch=prefetch).batches(shuffle=True, seed=5, indices=indices))
    assert len(new) == len(old) == 4
    for batch, (images, labels, chunk) in zip(new, old, strict=True):
        assert batch.images.dtype == torch.uint8
        assert torch.equal(unit_float(batch.images), images)
        assert torch.equal(batch.labels, labels) and torch.equal(batch.indices, chunk)


def test_iterate_still_gives_the_old_float_batches(cached):
    old = list(_old_batches(cached, 10, True, 2))
    new = list(iterate(cached, 10, shuffle=True, seed=2))
    raw = list(iterate(cached, 10, shuffle=True, seed=2, uint8=True))
    for batch, as_uint8, (images, labels, chunk) in zip(new, raw, old, strict=True):
        assert torch.equal(batch.images, images) and torch.equal(batch.indices, chunk)
        assert as_uint8.images.dtype == torch.uint8 and torch.equal(unit_float(as_uint8.images), images)


def test_worker_processes_decode_the_same_batches_pass_after_pass(streamed):
    """data.num_workers > 0 on a streamed split: the same batches as decoding in this
    process, on every pass of the persistent workers, and the global RNG (dropout's) is
    not touched by the DataLoader."""
    with BatchLoader(streamed, 8, num_workers=2) as loader:
        assert loader.uses_workers
        for seed in (0, 1):
            torch.manual_seed(123)
            state = torch.get_rng_state()
            new = list(loader.batches(shuffle=True, seed=seed))
            assert torch.equal(torch.get_rng_state(), state), "the DataLoader drew from the global RNG"
            old = list(_old_batches(streamed, 8, True, seed))
            assert len(new) == len(old)
            for batch, (images, labels, chunk) in zip(new, old, strict=True):
                assert torch.equal(unit_float(batch.images), images)
                assert torch.equal(batch.labels, labels) and torch.equal(batch.indices, chunk)


def test_a_cached_split_is_gathered_in_process_whatever_num_workers(cached):
    assert not BatchLoader(cached, 8, num_workers=2).uses_workers


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
def test_the_step_gets_the_old_images_and_flips_from_the_old_draws(splits, monkeypatch, reg):
    """37 images in batches of 12: three steps, and a batch of one that is skipped
    without a draw. Each step sees exactly the float images the old host path made
    (same order, same flips), and each flip mask is the generator's next draw after the
    previous step's own draws (on the CPU the perturbation shares the generator)."""
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
    old = [b for b in _old_batches(train_set, 12, True, epoch_seed, train_subset(len(train_set), config, 0))
           if len(b[1]) >= 2]
    assert len(steps) == len(old) == 3
    generator = torch.Generator().manual_seed(epoch_seed)
    for (images, labels, state_before, state_after), flip, (old_images, old_labels, _) in zip(
            steps, flips, old, strict=True):
        expected_flip = torch.rand(len(old_labels), generator=generator) < 0.5
        assert torch.equal(flip, expected_flip)
        assert torch.equal(generator.get_state(), state_before), "the flip draw is the only draw before the step"
        expected = torch.where(expected_flip[:, None, None, None], old_images.flip(3), old_images)
        assert torch.equal(images, expected) and torch.equal(labels, old_labels)
        generator.set_state(state_after)  # the step's own draws (reg), as the old loop made them
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
